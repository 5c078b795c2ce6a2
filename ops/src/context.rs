//! `StepContext`: what a running op may touch — its outputs, a scratch dir and checkpoints that
//! survive a crash, event emission (progress, metrics, alerts), and cancellation.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::OpError;

/// Severity of an alert event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertLevel {
    Info,
    Warn,
    Error,
}

/// What an op reports while running. The engine stamps each with the step id and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum StepEvent {
    Progress {
        done: u64,
        total: Option<u64>,
        unit: String,
    },
    Metric {
        name: String,
        value: f64,
        step: Option<u64>,
    },
    Alert {
        level: AlertLevel,
        message: String,
    },
    Log {
        message: String,
    },
}

/// Receives a step's events; cheap to clone.
pub type EventSink = Arc<dyn Fn(StepEvent) + Send + Sync>;

/// A cancellation flag with an optional parent: cancelling the run cancels every step, a step's
/// own timeout cancels only that step.
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<CancelInner>,
}

#[derive(Default)]
struct CancelInner {
    flag: AtomicBool,
    reason: Mutex<Option<String>>,
    parent: Option<CancelToken>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelToken({})", self.is_cancelled())
    }
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn child(&self) -> Self {
        Self {
            inner: Arc::new(CancelInner {
                parent: Some(self.clone()),
                ..Default::default()
            }),
        }
    }
    pub fn cancel(&self, reason: impl Into<String>) {
        let mut r = self
            .inner
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.is_none() {
            *r = Some(reason.into());
        }
        self.inner.flag.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
            || self
                .inner
                .parent
                .as_ref()
                .is_some_and(CancelToken::is_cancelled)
    }
    pub fn reason(&self) -> Option<String> {
        if self.inner.flag.load(Ordering::SeqCst) {
            return self
                .inner
                .reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
        }
        self.inner.parent.as_ref().and_then(CancelToken::reason)
    }
}

/// Everything a running op gets from the engine.
pub struct StepContext {
    step_id: String,
    seed: u64,
    device: String,
    pipeline_dir: PathBuf,
    attempt: u32,
    work_dir: PathBuf,
    events: EventSink,
    cancel: CancelToken,
    memos: Option<forge_cache::MemoRoot>,
    cpus: u32,
}

/// Layout of a step's work dir (`<store>/work/<key>/`):
/// `out/<output>/` outputs being written (wiped before each attempt), `scratch/` free use,
/// `checkpoint/` the last committed checkpoint. Scratch and checkpoints survive kills, so the
/// next `apply` of the same key resumes.
impl StepContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        step_id: impl Into<String>,
        work_dir: PathBuf,
        pipeline_dir: PathBuf,
        seed: u64,
        device: impl Into<String>,
        attempt: u32,
        events: EventSink,
        cancel: CancelToken,
    ) -> Self {
        Self {
            step_id: step_id.into(),
            seed,
            device: device.into(),
            pipeline_dir,
            attempt,
            work_dir,
            events,
            cancel,
            memos: None,
            cpus: 1,
        }
    }

    /// The store's memo tables, shared by all steps and runs: results that are a pure function
    /// of a typed key, such as a candidate model's fitness by weight digest.
    pub fn with_memos(mut self, memos: forge_cache::MemoRoot) -> Self {
        self.memos = Some(memos);
        self
    }
    /// CPU slots the step holds (its `resources.cpus`).
    pub fn with_cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }
    pub fn cpus(&self) -> u32 {
        self.cpus
    }
    /// Memo bucket `bucket` at `version`: the store's when the engine gave its memo tables, else
    /// one in this step's scratch dir.
    pub fn memo(&self, bucket: &str, version: u32) -> Result<forge_cache::Memo, OpError> {
        let root = self.memos.clone().unwrap_or_else(|| {
            forge_cache::MemoRoot::at(self.work_dir.join("scratch").join("memo"))
        });
        Ok(root.bucket(bucket, version)?)
    }

    pub fn step_id(&self) -> &str {
        &self.step_id
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The device requested by the pipeline (`cpu`, `cuda:N`, `auto`).
    pub fn device(&self) -> &str {
        &self.device
    }
    /// Directory of the pipeline file; relative paths in params resolve against it.
    pub fn pipeline_dir(&self) -> &Path {
        &self.pipeline_dir
    }
    /// 0 on the first attempt, incremented on each retry of a transient failure.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }
    pub fn outputs_root(&self) -> PathBuf {
        self.work_dir.join("out")
    }

    /// The directory to write output `name` into (created).
    pub fn output_dir(&self, name: &str) -> Result<PathBuf, OpError> {
        let p = self.outputs_root().join(name);
        fs::create_dir_all(&p).map_err(|e| OpError::io(&p, e))?;
        Ok(p)
    }

    /// A scratch directory that persists across attempts and crashes of this same step key.
    pub fn scratch_dir(&self) -> Result<PathBuf, OpError> {
        let p = self.work_dir.join("scratch");
        fs::create_dir_all(&p).map_err(|e| OpError::io(&p, e))?;
        Ok(p)
    }

    fn checkpoint_dir(&self) -> PathBuf {
        self.work_dir.join("checkpoint")
    }

    /// Atomically replace the step's checkpoint with these files. Either the whole new set is
    /// visible afterwards or (after a crash) the whole previous one.
    pub fn save_checkpoint(&self, files: &[(&str, &[u8])]) -> Result<(), OpError> {
        let dir = self.checkpoint_dir();
        let staging = self.work_dir.join("checkpoint.new");
        let old = self.work_dir.join("checkpoint.old");
        let io = |p: &Path| {
            let p = p.to_owned();
            move |e| OpError::io(&p, e)
        };
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(io(&staging))?;
        for (name, bytes) in files {
            let p = staging.join(name);
            let mut f = fs::File::create(&p).map_err(io(&p))?;
            io::Write::write_all(&mut f, bytes).map_err(io(&p))?;
            f.sync_all().map_err(io(&p))?;
        }
        forge_cache::atomic::sync_dir(&staging).map_err(io(&staging))?;
        let _ = fs::remove_dir_all(&old);
        if dir.exists() {
            fs::rename(&dir, &old).map_err(io(&dir))?;
        }
        fs::rename(&staging, &dir).map_err(io(&dir))?;
        forge_cache::atomic::sync_dir(&self.work_dir).map_err(io(&self.work_dir))?;
        let _ = fs::remove_dir_all(&old);
        Ok(())
    }

    /// A file of the last committed checkpoint, if any.
    pub fn load_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, OpError> {
        // A crash between the two renames of `save_checkpoint` leaves only `checkpoint.old`.
        let dir = self.checkpoint_dir();
        let dir = if dir.exists() {
            dir
        } else {
            self.work_dir.join("checkpoint.old")
        };
        let p = dir.join(name);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OpError::io(&p, e)),
        }
    }

    pub fn save_checkpoint_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), OpError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| OpError::internal(format!("checkpoint: {e}")))?;
        self.save_checkpoint(&[(name, &bytes)])
    }

    pub fn load_checkpoint_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, OpError> {
        match self.load_checkpoint(name)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| OpError::infra(format!("checkpoint `{name}` is unreadable: {e}"))),
        }
    }

    pub fn emit(&self, e: StepEvent) {
        (self.events)(e);
    }
    pub fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        self.emit(StepEvent::Progress {
            done,
            total,
            unit: unit.into(),
        });
    }
    pub fn metric(&self, name: &str, value: f64, step: Option<u64>) {
        self.emit(StepEvent::Metric {
            name: name.into(),
            value,
            step,
        });
    }
    pub fn alert(&self, level: AlertLevel, message: impl Into<String>) {
        self.emit(StepEvent::Alert {
            level,
            message: message.into(),
        });
    }
    pub fn log(&self, message: impl Into<String>) {
        self.emit(StepEvent::Log {
            message: message.into(),
        });
    }

    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// `Err(OpError::Cancelled)` once cancelled; call between units of work, after checkpointing.
    pub fn check_cancelled(&self) -> Result<(), OpError> {
        if self.is_cancelled() {
            Err(self.cancellation())
        } else {
            Ok(())
        }
    }
    /// What a step stopped by its cancellation returns: `OpError::Cancelled` with the reason
    /// (Ctrl-C, a timeout, a failing sibling), for work that learned of it some other way.
    pub fn cancellation(&self) -> OpError {
        OpError::Cancelled(self.cancel.reason().unwrap_or_else(|| "cancelled".into()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ctx_in(dir: &Path) -> (StepContext, Arc<Mutex<Vec<StepEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let ctx = StepContext::new(
            "phase.step",
            dir.join("work"),
            dir.to_owned(),
            7,
            "cpu",
            0,
            Arc::new(move |e| s2.lock().unwrap().push(e)),
            CancelToken::new(),
        );
        (ctx, seen)
    }

    #[test]
    fn checkpoint_replaces_whole_set_and_survives_interrupted_swap() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx_in(d.path());
        assert_eq!(ctx.load_checkpoint("a").unwrap(), None);
        ctx.save_checkpoint(&[("a", b"1"), ("b", b"1")]).unwrap();
        ctx.save_checkpoint(&[("a", b"2")]).unwrap();
        assert_eq!(
            ctx.load_checkpoint("a").unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(
            ctx.load_checkpoint("b").unwrap(),
            None,
            "old set fully replaced"
        );
        // Leave the directory as a crash would after `checkpoint` was renamed away but before the new one landed.
        fs::rename(
            ctx.work_dir().join("checkpoint"),
            ctx.work_dir().join("checkpoint.old"),
        )
        .unwrap();
        assert_eq!(
            ctx.load_checkpoint("a").unwrap().as_deref(),
            Some(&b"2"[..])
        );
    }

    #[test]
    fn child_token_sees_parent_cancel_but_not_vice_versa() {
        let parent = CancelToken::new();
        let child = parent.child();
        child.cancel("timeout");
        assert!(!parent.is_cancelled());
        let c2 = parent.child();
        parent.cancel("ctrl-c");
        assert!(c2.is_cancelled());
        assert_eq!(c2.reason().as_deref(), Some("ctrl-c"));
        assert_eq!(child.reason().as_deref(), Some("timeout"));
    }
}
