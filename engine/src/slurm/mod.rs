//! The Slurm executor (`forge apply --executor slurm`): every step that misses the cache runs as
//! an `sbatch` job on the cluster, against the same store.
//!
//! The driver (the `apply` process) keeps the deciding: the plan, the keys, the local cache, the
//! DAG order. For a step to build it writes a *job spec* (`runs/<run>/jobs/<step>.<n>.json`: the
//! pipeline, its `--var`s, the step, its expected key and its inputs' digests) and submits a
//! batch script that runs the hidden `forge run-step SPEC` on a compute node. That process loads
//! the same pipeline, checks it computes the same key, and runs the step exactly as a local apply
//! would (lock, remote cache, checkpoints, retries, recording the result); its events go to
//! `runs/<run>/jobs/<step>.<n>.jsonl`, which the driver follows and forwards to the console, the
//! run's own `events.jsonl` and `--log-format json`.
//!
//! The driver follows each job with `scontrol show job` (and `sacct` once the controller has
//! forgotten it), polling with backoff from 250 ms up to 5 s. A job that ends without its step
//! recorded failed: the driver reports Slurm's state (`OUT_OF_MEMORY`, `TIMEOUT`, …) and the tail
//! of the job's output. `NODE_FAIL`, `PREEMPTED` and `BOOT_FAIL` are the cluster's fault, not the
//! step's: the step is submitted again (up to [`TRANSIENT_RESUBMITS`] times) and resumes from its
//! checkpoint. Ctrl-C `scancel`s every job the driver submitted.
//!
//! What the cluster must provide: `sbatch`, `scontrol` and `scancel` on the driver's `PATH`; the
//! store, the pipeline and the `forge` binary at the same paths on every node (a shared
//! filesystem; see `cache/src/lock.rs` for what the store needs of it).

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use forge_cache::{ObjectDigest, StepKey};
use forge_ops::{OpError, Tier};
use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::executor::{Executor, Inputs, Shared, Status, StepResult, StepRun};
use crate::vars::VarOverride;

pub mod options;
pub use options::SlurmOptions;

/// How often a step whose node failed or was preempted is submitted again.
pub const TRANSIENT_RESUBMITS: u32 = 3;

/// What the driver needs to submit jobs: where the job's `forge`, store and pipeline are.
#[derive(Debug, Clone)]
pub struct Slurm {
    /// The `forge` binary the jobs run (this one, by default).
    pub exe: PathBuf,
    /// The store, as an absolute path every node sees.
    pub store: PathBuf,
    /// The pipeline file, absolute.
    pub pipeline: PathBuf,
    pub vars: Vec<VarOverride>,
    /// The jobs' working directory (the driver's).
    pub cwd: PathBuf,
    /// The longest wait between two looks at a job's state.
    pub poll_max: Duration,
}

impl Slurm {
    /// The driver's settings, checking that `sbatch` can be run here.
    pub fn new(
        store: &Path,
        pipeline: &Path,
        vars: Vec<VarOverride>,
    ) -> Result<Self, (String, String)> {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        if Command::new("sbatch").arg("--version").output().is_err() {
            return Err((
                "`--executor slurm` needs `sbatch`, which is not on PATH".into(),
                "run on a Slurm login node, or drop `--executor slurm` to run the steps here"
                    .into(),
            ));
        }
        let exe = std::env::current_exe()
            .map_err(|e| (format!("finding the forge binary: {e}"), String::new()))?;
        let poll_max = std::env::var("FORGE_SLURM_POLL_MAX_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(5), Duration::from_millis);
        Ok(Self {
            exe,
            store: absolute(store),
            pipeline: absolute(pipeline),
            vars,
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            poll_max,
        })
    }
}

impl Executor for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }
    fn local_resources(&self) -> bool {
        false
    }
    fn run(&self, sh: &Shared, i: usize, inputs: &Inputs) -> StepResult {
        run_step(sh, i, inputs, self)
    }
}

/// One step as a job: what `forge run-step` is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub pipeline: PathBuf,
    pub vars: Vec<VarOverride>,
    /// The step instance's id.
    pub step: String,
    /// The key the driver computed; the job refuses to run under any other.
    pub key: StepKey,
    /// Input name → the digests of the artifacts wired into it, in order.
    pub inputs: BTreeMap<String, Vec<ObjectDigest>>,
    pub run_id: String,
    /// Where the job writes its events (JSON lines).
    pub events: PathBuf,
    /// `--force` for this step.
    pub force: bool,
    pub remote: Option<String>,
    pub lock_timeout_ms: u64,
    pub retry_base_ms: u64,
    pub disk_warn: u64,
    pub disk_stop: u64,
}

/// A step id as a file name: `p.s[x=1]` → `p.s_x_1_`.
fn file_stem(step: &str) -> String {
    step.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `'…'` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A job's state as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub state: String,
    pub reason: Option<String>,
}

impl JobInfo {
    /// Whether the job has ended (any state but the pending and running ones).
    #[must_use]
    pub fn ended(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "SUSPENDED"
                | "STOPPED"
                | "RESV_DEL_HOLD"
                | "SPECIAL_EXIT"
        )
    }

    /// Whether the job ended because of the cluster rather than the step: run it again.
    #[must_use]
    pub fn transient(&self) -> bool {
        matches!(self.state.as_str(), "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL")
    }
}

/// `JobState=… Reason=…` from one line of `scontrol show job -o`.
#[must_use]
pub fn parse_scontrol(line: &str) -> Option<JobInfo> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    let state = field("JobState")?;
    let reason = field("Reason").filter(|r| r != "None");
    Some(JobInfo { state, reason })
}

/// The job's state: `scontrol show job` while the controller remembers it, then `sacct` (where
/// accounting is configured). `None`: neither knows the job.
fn job_info(job: &str) -> Option<JobInfo> {
    if let Ok(out) = Command::new("scontrol")
        .args(["show", "job", "-o", job])
        .output()
        && out.status.success()
        && let Some(info) = parse_scontrol(&String::from_utf8_lossy(&out.stdout))
    {
        return Some(info);
    }
    let out = Command::new("sacct")
        .args(["-n", "-X", "-P", "-o", "State", "-j", job])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `CANCELLED by 0` → `CANCELLED`.
    let state = text.lines().next()?.split_whitespace().next()?.to_owned();
    Some(JobInfo {
        state,
        reason: None,
    })
}

/// The last `n` lines of a file, for a failed job's report.
fn tail(path: &Path, n: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return format!("(no output at {})", path.display());
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How a job's events ended the step, if they did.
enum Ending {
    Recorded(Status),
    /// The job's `failed` event, held back until the job's state says what it means.
    Failed {
        event: Event,
        error: String,
        tier: Tier,
    },
    /// The job's `cancelled` event (its reason), held back likewise.
    Cancelled(String),
}

/// Follows a job's event file: new complete lines only, forwarded as they come — except a
/// `failed` or `cancelled` ending, which means something else when the node failed (resubmit)
/// or this run cancelled the job.
struct EventFollower {
    path: PathBuf,
    offset: u64,
    ending: Option<Ending>,
}

impl EventFollower {
    fn read(&mut self, sh: &Shared) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        let mut reader = &buf[..];
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.last() != Some(&b'\n') => break, // not finished being written
                Ok(n) => {
                    self.offset += n as u64;
                    let Ok(ev) = serde_json::from_slice::<Event>(&line) else {
                        continue;
                    };
                    match &ev {
                        Event::Finished { .. } => self.ending = Some(Ending::Recorded(Status::Ran)),
                        Event::CacheHit { .. } => {
                            self.ending = Some(Ending::Recorded(Status::Cached));
                        }
                        Event::Failed { error, tier, .. } => {
                            self.ending = Some(Ending::Failed {
                                error: error.clone(),
                                tier: *tier,
                                event: ev.clone(),
                            });
                            continue;
                        }
                        Event::Cancelled { reason, .. } => {
                            self.ending = Some(Ending::Cancelled(reason.clone()));
                            continue;
                        }
                        _ => {}
                    }
                    sh.emitter.emit(ev);
                }
            }
        }
    }
}

/// Run step `i` as Slurm jobs until it is recorded, fails, or the run is cancelled. Blocking.
pub(crate) fn run_step(sh: &Shared, i: usize, inputs: &Inputs, slurm: &Slurm) -> StepResult {
    let step = StepRun::new(sh, i);
    let phases = || -> Result<StepResult, StepResult> {
        let (key, forced) = step.resolve_unless_cached(inputs)?;
        let dir = sh.store.root().join("runs").join(&sh.run_id).join("jobs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| step.failed(OpError::io(&dir, e), Some(key.key)))?;
        let mut attempt = 0u32;
        loop {
            let (job, events, output) =
                submit(sh, i, inputs, slurm, &dir, &key.key, attempt, forced)
                    .map_err(|e| step.failed(e, Some(key.key)))?;
            let (info, ending) = follow(sh, i, &job, events, slurm.poll_max);
            let info = info.unwrap_or(JobInfo {
                state: "UNKNOWN".into(),
                reason: Some("the cluster no longer knows the job".into()),
            });
            if let Some(Ending::Recorded(status)) = ending {
                return step.recorded(&key, status);
            }
            // This run cancelled the job: Slurm's SIGTERM reached the step's own processes too,
            // and whatever they reported is the cancel.
            if sh.cancel.is_cancelled() {
                let reason = sh.cancel.reason().unwrap_or_default();
                return Err(step.cancelled(reason, Some(key.key)));
            }
            let why = info
                .reason
                .as_deref()
                .map_or(String::new(), |r| format!(", {r}"));
            // The node failed or the job was preempted: not the step's fault, whatever it
            // reported as it was stopped. Again, from its checkpoint.
            if info.transient() && attempt < TRANSIENT_RESUBMITS {
                sh.emitter.emit(Event::Retrying {
                    step: step.id(),
                    attempt,
                    delay_ms: 0,
                    error: format!("Slurm job {job} ended {}{why}", info.state),
                });
                attempt += 1;
                continue;
            }
            match ending {
                Some(Ending::Failed { event, error, tier }) => {
                    sh.emitter.emit(event);
                    return Err(StepResult {
                        status: Status::Failed,
                        key: Some(key.key),
                        duration_ms: step.elapsed_ms(),
                        error: Some(error),
                        tier: Some(tier),
                        ..StepResult::pending()
                    });
                }
                // Cancelled on the cluster (scancel, an administrator), not by this run. (A
                // step stopped by its time limit also reports a cancel: TIMEOUT is said below.)
                Some(Ending::Cancelled(reason)) if info.state == "CANCELLED" => {
                    let e = OpError::infra(format!(
                        "Slurm job {job} was cancelled on the cluster before the step finished"
                    ))
                    .with_detail(format!(
                        "the step stopped cleanly ({reason}); apply again: it resumes from its checkpoint"
                    ));
                    return Err(step.failed(e, Some(key.key)));
                }
                Some(Ending::Recorded(_) | Ending::Cancelled(_)) | None => {}
            }
            let message = format!(
                "Slurm job {job} ended {}{why} without recording the step",
                info.state
            );
            let detail = format!("{}:\n{}", output.display(), tail(&output, 20));
            let e = match info.state.as_str() {
                "OUT_OF_MEMORY" => OpError::user(message)
                    .with_hint("raise the step's `slurm.mem` and apply again")
                    .with_detail(detail),
                "TIMEOUT" => OpError::user(message)
                    .with_hint(
                        "raise the step's `slurm.time` and apply again: the step resumes from its checkpoint",
                    )
                    .with_detail(detail),
                _ => OpError::infra(message).with_detail(format!(
                    "{detail}\napply again: the step resumes from its checkpoint"
                )),
            };
            return Err(step.failed(e, Some(key.key)));
        }
    };
    phases().unwrap_or_else(|early| early)
}

/// Write the spec and the batch script, and `sbatch` it. Returns the job id, its event file and
/// its output file.
#[allow(clippy::too_many_arguments)]
fn submit(
    sh: &Shared,
    i: usize,
    inputs: &Inputs,
    slurm: &Slurm,
    dir: &Path,
    key: &StepKey,
    attempt: u32,
    force: bool,
) -> Result<(String, PathBuf, PathBuf), OpError> {
    let s = &sh.plan.steps[i];
    let stem = format!("{}.{attempt}", file_stem(&s.id));
    let events = dir.join(format!("{stem}.jsonl"));
    let spec = JobSpec {
        pipeline: slurm.pipeline.clone(),
        vars: slurm.vars.clone(),
        step: s.id.clone(),
        key: *key,
        inputs: inputs
            .iter()
            .map(|(n, v)| (n.clone(), v.iter().map(|(d, _, _)| *d).collect()))
            .collect(),
        run_id: sh.run_id.clone(),
        events: events.clone(),
        force,
        remote: sh.opts.remote.as_ref().map(|r| r.url().to_owned()),
        lock_timeout_ms: sh.opts.lock_timeout.as_millis() as u64,
        retry_base_ms: sh.opts.retry_base.as_millis() as u64,
        disk_warn: sh.opts.disk_warn,
        disk_stop: sh.opts.disk_stop,
    };
    let spec_path = dir.join(format!("{stem}.json"));
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| OpError::internal(e.to_string()))?;
    std::fs::write(&spec_path, json).map_err(|e| OpError::io(&spec_path, e))?;
    let script = dir.join(format!("{stem}.sh"));
    let body = format!(
        "#!/bin/sh\n# forge step {} (key {}), attempt {}\nexec {} --store {} run-step {}\n",
        s.id,
        key.to_hex(),
        attempt + 1,
        sh_quote(&slurm.exe.to_string_lossy()),
        sh_quote(&slurm.store.to_string_lossy()),
        sh_quote(&spec_path.to_string_lossy()),
    );
    std::fs::write(&script, body).map_err(|e| OpError::io(&script, e))?;
    let output = dir.join(format!("{stem}.out"));
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable")
        .arg(format!(
            "--job-name=forge:{}:{}",
            sh.plan.pipeline.name, s.id
        ))
        .arg(format!("--output={}", output.display()))
        .arg(format!("--chdir={}", slurm.cwd.display()))
        .args(s.slurm.sbatch_args(s.resources.cpus, s.resources.gpus))
        .arg(&script);
    let out = cmd
        .output()
        .map_err(|e| OpError::infra(format!("running sbatch: {e}")))?;
    if !out.status.success() {
        return Err(OpError::infra(format!(
            "sbatch refused the job: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .with_hint("check the step's `slurm:` options (partition, account, time, mem, extra)"));
    }
    // `--parsable`: `JOBID` or `JOBID;CLUSTER`.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job = stdout
        .trim()
        .split(';')
        .next()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| OpError::infra(format!("sbatch printed no job id: {stdout:?}")))?
        .to_owned();
    sh.emitter.emit(Event::Submitted {
        step: s.id.clone(),
        executor: slurm.name().into(),
        job_id: job.clone(),
        attempt,
    });
    Ok((job, events, output))
}

/// Follow job `job` until it ends: its events forwarded as they come, its state changes
/// reported, `scancel` when the run is cancelled. Returns its last state and how its events
/// ended the step.
fn follow(
    sh: &Shared,
    i: usize,
    job: &str,
    events: PathBuf,
    poll_max: Duration,
) -> (Option<JobInfo>, Option<Ending>) {
    let step = &sh.plan.steps[i].id;
    let mut follower = EventFollower {
        path: events,
        offset: 0,
        ending: None,
    };
    let mut poll = Duration::from_millis(250);
    let mut next_poll = Instant::now();
    let mut last: Option<JobInfo> = None;
    let mut scancelled = false;
    let mut unknown_since: Option<Instant> = None;
    loop {
        let had_ending = follower.ending.is_some();
        follower.read(sh);
        if !had_ending && follower.ending.is_some() {
            // The step is recorded (or failed): the job is about to end; look soon.
            next_poll = Instant::now();
            poll = Duration::from_millis(250);
        }
        if sh.cancel.is_cancelled() && !scancelled {
            scancelled = true;
            let _ = Command::new("scancel").arg(job).status();
            next_poll = Instant::now();
        }
        if Instant::now() >= next_poll {
            if let Some(info) = job_info(job) {
                unknown_since = None;
                if last.as_ref() != Some(&info) {
                    sh.emitter.emit(Event::JobState {
                        step: step.clone(),
                        job_id: job.to_owned(),
                        state: info.state.clone(),
                        reason: info.reason.clone(),
                    });
                    // A change: look again soon.
                    poll = Duration::from_millis(250);
                }
                if info.ended() {
                    follower.read(sh);
                    return (Some(info), follower.ending);
                }
                last = Some(info);
            } else {
                // Just submitted and not yet visible, or forgotten (no accounting): give the
                // controller a minute before deciding the job is gone.
                let since = *unknown_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(60) {
                    follower.read(sh);
                    return (None, follower.ending);
                }
            }
            next_poll = Instant::now() + poll;
            poll = (poll * 2).min(poll_max);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `forge run-step SPEC`: run one step of a job spec here, as a local apply would, writing its
/// events to the spec's event file. Returns the exit code: 0 recorded, 1 failed, 130 cancelled,
/// 2 when the spec no longer matches the pipeline.
pub fn run_job(
    store_root: &Path,
    spec_path: &Path,
    registry: &forge_ops::OpRegistry,
) -> Result<u8, String> {
    use std::sync::Arc;

    let text = std::fs::read(spec_path)
        .map_err(|e| format!("reading the job spec {}: {e}", spec_path.display()))?;
    let spec: JobSpec = serde_json::from_slice(&text)
        .map_err(|e| format!("the job spec {} is not valid: {e}", spec_path.display()))?;
    let plan = crate::load::load_plan(&spec.pipeline, &spec.vars, registry)
        .map_err(|_| format!("the pipeline {} does not load", spec.pipeline.display()))?;
    let i = plan
        .steps
        .iter()
        .position(|s| s.id == spec.step)
        .ok_or_else(|| {
            format!(
                "the pipeline {} has no step `{}` any more",
                spec.pipeline.display(),
                spec.step
            )
        })?;
    let mut inputs: Inputs = BTreeMap::new();
    for (name, ups) in &plan.steps[i].inputs {
        let digests = spec.inputs.get(name).cloned().unwrap_or_default();
        if digests.len() != ups.len() {
            return Err(format!(
                "the job spec gives {} artifact(s) for input `{name}`; the step now takes {}",
                digests.len(),
                ups.len()
            ));
        }
        let mut v = Vec::new();
        for (u, d) in ups.iter().zip(digests) {
            v.push((d, u.kind, plan.steps[u.step].id.clone()));
        }
        inputs.insert(name.clone(), v);
    }
    let store = forge_cache::Store::open(store_root).map_err(|e| e.to_string())?;
    let _store_lock = store.lock_store(false).map_err(|e| e.to_string())?;
    let remote = match &spec.remote {
        Some(url) => Some(Arc::new(
            forge_cache::Remote::open(url).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let mut events = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.events)
        .map_err(|e| format!("opening {}: {e}", spec.events.display()))?;
    let (tx, rx) = std::sync::mpsc::channel::<crate::events::Stamped>();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for ev in rx {
            // With the job's own time: the driver re-stamps what it forwards, and
            // bench/slurm.sh reads when each step started and finished on its node.
            if let Ok(mut line) = serde_json::to_vec(&ev) {
                line.push(b'\n');
                let _ = events.write_all(&line);
                let _ = events.flush();
            }
        }
    });
    let emitter = crate::events::Emitter::new(tx);
    let cancel = forge_ops::CancelToken::new();
    // scancel sends SIGTERM (then SIGKILL after the cluster's KillWait): stop cleanly, keeping
    // the checkpoint.
    {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => cancel.cancel("stopped by Slurm (SIGTERM)"),
                    _ = int.recv() => cancel.cancel("interrupted (SIGINT)"),
                }
            });
        });
    }
    let mut force = std::collections::BTreeSet::new();
    if spec.force {
        force.insert(i);
    }
    let opts = crate::executor::ApplyOptions {
        jobs: plan.steps[i].resources.cpus.max(1) as usize,
        gpus: plan.steps[i].resources.gpus,
        force,
        lock_timeout: Duration::from_millis(spec.lock_timeout_ms),
        retry_base: Duration::from_millis(spec.retry_base_ms),
        disk_warn: spec.disk_warn,
        disk_stop: spec.disk_stop,
        remote,
        ..crate::executor::ApplyOptions::default()
    };
    let key = crate::executor::key_of(&plan, &store, i, &inputs).map_err(|e| e.to_string())?;
    let code = if key == spec.key {
        let sh = Shared::new(Arc::new(plan), store, opts, emitter, cancel, spec.run_id);
        let result = crate::executor::run_step_isolated(&sh, i, inputs);
        match result.status {
            Status::Ran | Status::Cached => 0,
            Status::Cancelled => crate::exit::INTERRUPTED,
            _ => 1,
        }
    } else {
        emitter.emit(Event::Failed {
            step: spec.step.clone(),
            error: format!(
                "the pipeline changed after the job was submitted: the step's key is now {} (submitted as {})",
                key.short(),
                spec.key.short()
            ),
            detail: None,
            tier: Tier::User,
            hint: Some("apply again: the new plan submits the step under its new key".into()),
        });
        drop(emitter);
        2
    };
    let _ = writer.join();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_lines_give_the_state_and_reason() {
        let line = "JobId=7 JobName=forge:p.s UserId=root(0) JobState=PENDING Reason=Resources \
                    Dependency=(null) ExitCode=0:0";
        let info = parse_scontrol(line).unwrap();
        assert_eq!(info.state, "PENDING");
        assert_eq!(info.reason.as_deref(), Some("Resources"));
        assert!(!info.ended());
        let done = parse_scontrol("JobId=7 JobState=NODE_FAIL Reason=None ExitCode=0:0").unwrap();
        assert_eq!(done.reason, None);
        assert!(done.ended() && done.transient());
        let oom = parse_scontrol("JobId=7 JobState=OUT_OF_MEMORY Reason=OutOfMemory").unwrap();
        assert!(oom.ended() && !oom.transient());
        assert_eq!(
            parse_scontrol("slurm_load_jobs error: Invalid job id"),
            None
        );
    }

    #[test]
    fn a_jobs_stamped_event_lines_read_back_as_events() {
        let (tx, rx) = std::sync::mpsc::channel();
        crate::events::Emitter::new(tx).emit(Event::Started {
            step: "p.s".into(),
            key: "ab".into(),
            attempt: 1,
        });
        let line = serde_json::to_string(&rx.recv().unwrap()).unwrap();
        assert!(line.contains("\"ts_unix_ms\""), "{line}");
        let ev: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(
            ev,
            Event::Started {
                step: "p.s".into(),
                key: "ab".into(),
                attempt: 1
            }
        );
    }

    #[test]
    fn step_ids_become_file_names_and_paths_are_quoted() {
        assert_eq!(file_stem("p.s[x=1,y=a b]"), "p.s_x_1_y_a_b_");
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
