//! Run events. Every step emits them; one reporter thread fans them out to the run record
//! (`runs/<id>/events.jsonl`), and to the console as progress bars, plain lines, or JSON lines
//! (`--log-format json`). Ops' own events ([`forge_ops::StepEvent`]) are wrapped with the step id.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;

use forge_ops::{AlertLevel, Tier};
use serde::{Deserialize, Serialize};

/// Everything a run reports. Serialized to `runs/<id>/events.jsonl` and `--log-format json`;
/// read back from the event files of steps that ran as cluster jobs ([`crate::slurm`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        run_id: String,
        pipeline: String,
        steps: usize,
    },
    Queued {
        step: String,
    },
    CacheHit {
        step: String,
        key: String,
    },
    /// The step's result was downloaded from the remote cache (`--remote`) instead of built;
    /// a `cache-hit` follows.
    RemoteHit {
        step: String,
        key: String,
        objects: u64,
        bytes: u64,
        duration_ms: u64,
    },
    /// The step's result was uploaded to the remote cache after it ran (objects the remote
    /// already had are not counted).
    RemoteUpload {
        step: String,
        key: String,
        objects: u64,
        bytes: u64,
        duration_ms: u64,
    },
    /// The remote cache could not be used for this step (unreachable, or an object failed its
    /// digest check); the step is built here, or its upload skipped.
    RemoteError {
        step: String,
        error: String,
    },
    Started {
        step: String,
        key: String,
        attempt: u32,
    },
    Progress {
        step: String,
        done: u64,
        total: Option<u64>,
        unit: String,
    },
    Metric {
        step: String,
        name: String,
        value: f64,
        at: Option<u64>,
    },
    Alert {
        step: String,
        level: AlertLevel,
        message: String,
    },
    Log {
        step: String,
        message: String,
    },
    Retrying {
        step: String,
        attempt: u32,
        delay_ms: u64,
        error: String,
    },
    /// Another process (`holder` pid on `host`) runs this step; waiting for it.
    LockWait {
        step: String,
        holder: u32,
        host: String,
    },
    /// The step's lock was taken over from a holder that died on this host (`reason: dead`) or
    /// did not renew its lease in time (`lease-expired`).
    LockReclaimed {
        step: String,
        dead_pid: u32,
        host: String,
        reason: String,
    },
    /// The step was submitted to the cluster as a batch job (`--executor slurm`); its own
    /// events follow as the job runs.
    Submitted {
        step: String,
        executor: String,
        job_id: String,
        attempt: u32,
    },
    /// The step's cluster job changed state (`PENDING`, `RUNNING`, `COMPLETED`, `NODE_FAIL`…),
    /// with Slurm's reason when it gives one.
    JobState {
        step: String,
        job_id: String,
        state: String,
        reason: Option<String>,
    },
    Finished {
        step: String,
        key: String,
        duration_ms: u64,
        outputs: BTreeMap<String, String>,
    },
    Failed {
        step: String,
        error: String,
        detail: Option<String>,
        /// Who can fix it: `user`, `infra` or `internal`.
        tier: Tier,
        /// What to do about it.
        hint: Option<String>,
    },
    Skipped {
        step: String,
        reason: String,
    },
    Cancelled {
        step: String,
        reason: String,
    },
    /// The machine, sampled every 10 s during a run: CPU, memory, free disk on the store's
    /// filesystem.
    Hardware(crate::hardware::Sample),
    /// Something went wrong outside any step that the run survives (e.g. writing its summary).
    Warning {
        message: String,
    },
    RunFinished {
        status: String,
        ran: usize,
        cached: usize,
        failed: usize,
        skipped: usize,
        duration_ms: u64,
    },
}

/// An event with its time.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    pub ts_unix_ms: u64,
    pub elapsed_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// Cheap handle for sending events from any thread.
#[derive(Clone)]
pub struct Emitter {
    tx: mpsc::Sender<Stamped>,
    start: Instant,
}

impl Emitter {
    pub fn new(tx: mpsc::Sender<Stamped>) -> Self {
        Self {
            tx,
            start: Instant::now(),
        }
    }
    pub fn emit(&self, event: Event) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let _ = self.tx.send(Stamped {
            ts_unix_ms: ts,
            elapsed_ms: self.start.elapsed().as_millis() as u64,
            event,
        });
    }
}
