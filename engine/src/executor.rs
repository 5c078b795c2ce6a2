//! The executor: runs a [`Plan`] against the store.
//!
//! # Overview
//! 1. Steps become ready when every dependency has finished; ready steps start in file order as
//!    long as CPU slots (`--jobs`) and GPUs allow. Each runs on a blocking thread (tokio's
//!    `spawn_blocking`), never on the async reactor.
//! 2. A starting step computes its key from its params and the *output digests* of its inputs
//!    (see [`crate::key`]). A recorded action with all outputs intact is a cache hit.
//! 3. Otherwise the step takes its lock (so concurrent `forge apply` processes run it once),
//!    checks the cache again, and runs the op in `work/<key>/`, where checkpoints from a killed
//!    earlier attempt are waiting. Transient failures retry with exponential backoff.
//! 4. Outputs are moved into the store as trees, the action and the step ref are written, the
//!    work dir is removed.
//!
//! Where a step that misses the cache runs is the [`Executor`]'s business: in this process
//! (`local`), or as a Slurm job whose `forge run-step` calls the same [`run_step`] on another
//! node ([`crate::slurm`]). Deciding — keys, cache, DAG order — stays here.
//!
//! Failure is fail-fast by default: running siblings are cancelled (they checkpoint and stop) and
//! nothing new starts. With `--keep-going`, everything not downstream of a failure still runs.
//! Ctrl-C cancels the same way; the next `apply` resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forge_cache::{
    Acquired, ActionRecord, LockOptions, ObjectDigest, RunStep, RunSummary, StepKey, StepRef, Store,
};
use forge_ops::{
    CancelToken, InputArtifact, KeyContext, OpError, StepContext, StepEvent, StepInputs,
    StepOutcome, Tier,
};
use serde::Serialize;

use crate::events::{Emitter, Event};
use crate::key::{KeyPreimage, explain};
use crate::plan::{Plan, StepInstance};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub jobs: usize,
    pub gpus: u32,
    pub keep_going: bool,
    /// Steps to re-run even when cached.
    pub force: BTreeSet<usize>,
    /// Only these steps (and nothing else) run; `None` means all.
    pub only: Option<Vec<bool>>,
    pub lock_timeout: Duration,
    /// First retry delay; doubled per attempt, capped at a minute.
    pub retry_base: Duration,
    /// Free disk (bytes) on the store's filesystem below which a starting step raises a
    /// warning (0: never).
    pub disk_warn: u64,
    /// Free disk (bytes) a step must leave, beyond 1.5 × what it will write, to start; a step
    /// that cannot fails as an infrastructure failure before writing anything (0: no check).
    pub disk_stop: u64,
    /// The remote cache: looked up on a local miss, and given every result built here.
    pub remote: Option<Arc<forge_cache::Remote>>,
    /// Where steps that miss the cache run.
    pub executor: Arc<dyn Executor>,
}

/// Where a step that missed the cache runs: the executor interface. Deciding (plan, keys,
/// cache, DAG order) stays in [`apply`]; an executor only runs one ready step and returns its
/// result. Two implementations: [`Local`] and the Slurm executor (`crate::slurm::Slurm`).
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// `local`, `slurm`.
    fn name(&self) -> &'static str;
    /// Whether this machine's CPUs and GPUs bound what runs at once (`--jobs`, `--gpus`); on a
    /// cluster the scheduler places the steps and `--jobs` only caps those in its queue.
    fn local_resources(&self) -> bool;
    /// Run step `i` with these inputs (or find it cached) and return its result. Blocking.
    fn run(&self, sh: &Shared, i: usize, inputs: &Inputs) -> StepResult;
}

/// Every step in this process, on a blocking thread (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Executor for Local {
    fn name(&self) -> &'static str {
        "local"
    }
    fn local_resources(&self) -> bool {
        true
    }
    fn run(&self, sh: &Shared, i: usize, inputs: &Inputs) -> StepResult {
        run_step_isolated(sh, i, inputs.clone())
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism()
                .map(std::num::NonZero::get)
                .unwrap_or(1),
            gpus: 1,
            keep_going: false,
            force: BTreeSet::new(),
            only: None,
            lock_timeout: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_secs(1),
            disk_warn: crate::hardware::SEED_DISK_WARN,
            disk_stop: crate::hardware::SEED_DISK_STOP,
            remote: None,
            executor: Arc::new(Local),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pending,
    Cached,
    Ran,
    Failed,
    Skipped,
    Cancelled,
}

impl Status {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Cached => "cached",
            Self::Ran => "ran",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepResult {
    pub status: Status,
    pub key: Option<StepKey>,
    pub outputs: BTreeMap<String, ObjectDigest>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// Who can fix a failure (see [`forge_ops::Tier`]); set on failed steps.
    pub tier: Option<Tier>,
}

impl StepResult {
    pub(crate) fn pending() -> Self {
        Self {
            status: Status::Pending,
            key: None,
            outputs: BTreeMap::new(),
            duration_ms: 0,
            error: None,
            tier: None,
        }
    }
}

#[derive(Debug)]
pub struct ApplyReport {
    pub run_id: String,
    pub results: Vec<StepResult>,
    /// "succeeded", "failed" or "cancelled".
    pub status: String,
}

// ----- keys and dry runs -------------------------------------------------------------------------

/// The key pre-image of step `i` given its inputs' output digests.
pub fn preimage(
    plan: &Plan,
    store: &Store,
    i: usize,
    outputs: &[Option<BTreeMap<String, ObjectDigest>>],
) -> Result<Option<KeyPreimage>, OpError> {
    let s = &plan.steps[i];
    let mut inputs = BTreeMap::new();
    for (name, ups) in &s.inputs {
        let mut ds = Vec::new();
        for u in ups {
            match outputs[u.step].as_ref().and_then(|o| o.get(&u.output)) {
                Some(d) => ds.push(*d),
                None => return Ok(None),
            }
        }
        inputs.insert(name.clone(), ds);
    }
    own_preimage(plan, store, i, inputs).map(Some)
}

/// Step `i`'s key pre-image with these input digests (everything else is the step's own).
fn own_preimage(
    plan: &Plan,
    store: &Store,
    i: usize,
    inputs: BTreeMap<String, Vec<ObjectDigest>>,
) -> Result<KeyPreimage, OpError> {
    let s = &plan.steps[i];
    let cx = KeyContext {
        pipeline_dir: &plan.pipeline.dir,
        store,
    };
    let extras = s.op.key_extras(&s.params, &cx)?;
    Ok(KeyPreimage::new(
        s.op.name(),
        s.op.version(),
        s.params.value().clone(),
        inputs,
        extras,
        s.seed,
        s.op.backend_class(&s.params, &plan.pipeline.defaults.device),
    ))
}

/// What changed in step `i`'s own key fields (params, op version, seed, backend, extras) since
/// its last result, when its inputs are not known yet: the inputs are left out of both sides.
fn own_changes(plan: &Plan, store: &Store, i: usize) -> Result<Vec<String>, OpError> {
    let Some(prev) = store.step_ref(&plan.pipeline.name, &plan.steps[i].id)? else {
        return Ok(Vec::new());
    };
    let without_inputs = |mut v: serde_json::Value| {
        if let Some(m) = v.as_object_mut() {
            m.remove("inputs");
        }
        v
    };
    let now = own_preimage(plan, store, i, BTreeMap::new())?.to_json();
    let mut lines = crate::vars::changes(&prev.vars, &plan.steps[i].vars);
    lines.extend(explain(
        &without_inputs(prev.preimage),
        &without_inputs(now),
        8,
    ));
    Ok(lines)
}

/// One line of `forge plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub id: String,
    pub op: String,
    pub key: Option<String>,
    /// "cached", "remote" (the remote cache has it: downloaded, not built) or "run".
    pub status: &'static str,
    pub reason: String,
    #[serde(skip)]
    pub changes: Vec<String>,
}

/// The remote cache's record for `key`, when there is a remote and it has one. A remote that
/// cannot be reached is treated as a miss here; `apply` reports it per step.
fn remote_action(opts: &ApplyOptions, key: &StepKey) -> Option<forge_cache::ActionRecord> {
    opts.remote.as_ref()?.action(key).ok().flatten()
}

/// What `apply` would do, and why, without running anything.
pub fn dry_run(
    plan: &Plan,
    store: &Store,
    opts: &ApplyOptions,
) -> Result<Vec<PlannedStep>, OpError> {
    let mut outputs: Vec<Option<BTreeMap<String, ObjectDigest>>> = vec![None; plan.steps.len()];
    let mut out = Vec::new();
    for &i in &plan.order {
        if opts.only.as_ref().is_some_and(|o| !o[i]) {
            continue;
        }
        let s = &plan.steps[i];
        let pre = preimage(plan, store, i, &outputs)?;
        let (key, status, reason, changes) = match pre {
            None => {
                let ups: BTreeSet<&str> = s
                    .inputs
                    .values()
                    .flatten()
                    .filter(|u| outputs[u.step].is_none())
                    .map(|u| plan.steps[u.step].id.as_str())
                    .collect();
                // The step's own changes too, so an edit is not hidden behind a rebuilt input.
                let mut changes = own_changes(plan, store, i)?;
                let rebuilt = format!("input from {} will be rebuilt", summarize_steps(ups));
                let reason = std::iter::once(rebuilt.clone())
                    .chain(changes.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; ");
                if !changes.is_empty() {
                    changes.insert(0, rebuilt);
                }
                (None, "run", reason, changes)
            }
            Some(pre) => {
                let key = pre.key();
                let hit = store.get_action(&key)?;
                if opts.force.contains(&i) {
                    (Some(key), "run", "forced with --force".to_string(), vec![])
                } else if let Some(rec) = hit {
                    outputs[i] = Some(rec.outputs);
                    (Some(key), "cached", "up to date".to_string(), vec![])
                } else if let Some(rec) = remote_action(opts, &key) {
                    // Its outputs' digests are in the record, so the steps after it have keys.
                    outputs[i] = Some(rec.outputs);
                    let url = opts.remote.as_ref().map_or("", |r| r.url());
                    (Some(key), "remote", format!("remote hit ({url})"), vec![])
                } else {
                    let prev = store.step_ref(&plan.pipeline.name, &s.id)?;
                    let (reason, changes) = match prev {
                        None => ("no previous result".to_string(), vec![]),
                        Some(r) if r.key == key => (
                            "previous result is missing from the store (rebuild)".to_string(),
                            vec![],
                        ),
                        Some(r) => {
                            // The vars behind the changed values first: what the user edited.
                            let mut changes = crate::vars::changes(&r.vars, &s.vars);
                            changes.extend(explain(&r.preimage, &pre.to_json(), 8));
                            let reason = if changes.is_empty() {
                                "key changed".into()
                            } else {
                                changes.join("; ")
                            };
                            (reason, changes)
                        }
                    };
                    (Some(key), "run", reason, changes)
                }
            }
        };
        out.push(PlannedStep {
            id: s.id.clone(),
            op: s.op.name().into(),
            key: key.map(|k| k.to_hex()),
            status,
            reason,
            changes,
        });
    }
    Ok(out)
}

// ----- apply -------------------------------------------------------------------------------------

/// What every step of one apply shares.
pub struct Shared {
    pub(crate) plan: Arc<Plan>,
    pub(crate) store: Store,
    pub(crate) opts: ApplyOptions,
    pub(crate) emitter: Emitter,
    pub(crate) cancel: CancelToken,
    pub(crate) run_id: String,
    /// Whether a starting step already warned that free disk falls below `--disk-warn` (once
    /// per apply is enough).
    disk_warned: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        plan: Arc<Plan>,
        store: Store,
        opts: ApplyOptions,
        emitter: Emitter,
        cancel: CancelToken,
        run_id: String,
    ) -> Self {
        Self {
            plan,
            store,
            opts,
            emitter,
            cancel,
            run_id,
            disk_warned: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

fn summary(
    shared: &Shared,
    results: &[StepResult],
    status: &str,
    started: u64,
    finished: Option<u64>,
) -> RunSummary {
    RunSummary {
        id: shared.run_id.clone(),
        pipeline: shared.plan.pipeline.name.clone(),
        pipeline_path: shared.plan.pipeline.path.display().to_string(),
        started_unix_ms: started,
        finished_unix_ms: finished,
        status: status.into(),
        steps: shared
            .plan
            .steps
            .iter()
            .zip(results)
            .map(|(s, r)| RunStep {
                id: s.id.clone(),
                op: s.op.name().into(),
                key: r.key,
                status: r.status.as_str().into(),
                outputs: r.outputs.clone(),
                duration_ms: r.duration_ms,
                error: r.error.clone(),
            })
            .collect(),
    }
}

/// How often the in-progress run summary is rewritten.
const SUMMARY_INTERVAL: Duration = Duration::from_millis(250);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Run the plan. `cancel` is triggered by Ctrl-C (the caller wires it) or by a failure.
pub async fn apply(
    plan: Arc<Plan>,
    store: Store,
    opts: ApplyOptions,
    emitter: Emitter,
    cancel: CancelToken,
    run: &mut forge_cache::RunWriter,
) -> ApplyReport {
    let n = plan.steps.len();
    let started = now_ms();
    let t0 = Instant::now();
    let shared = Arc::new(Shared::new(
        plan.clone(),
        store,
        opts,
        emitter,
        cancel,
        run.id.clone(),
    ));
    let selected: Vec<bool> = shared.opts.only.clone().unwrap_or_else(|| vec![true; n]);
    let mut results: Vec<StepResult> = (0..n).map(|_| StepResult::pending()).collect();
    let mut outputs: Vec<Option<BTreeMap<String, ObjectDigest>>> = vec![None; n];
    let mut waiting: Vec<usize> = plan.deps.iter().map(Vec::len).collect();
    write_summary(
        &shared,
        run,
        &summary(&shared, &results, "running", started, None),
    );
    shared.emitter.emit(Event::RunStarted {
        run_id: run.id.clone(),
        pipeline: plan.pipeline.name.clone(),
        steps: selected.iter().filter(|s| **s).count(),
    });
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| selected[i] && waiting[i] == 0).collect();
    for &i in plan.order.iter().filter(|&&i| selected[i]) {
        shared.emitter.emit(Event::Queued {
            step: plan.steps[i].id.clone(),
        });
    }
    let mut running: tokio::task::JoinSet<(usize, StepResult)> = tokio::task::JoinSet::new();
    let jobs = shared.opts.jobs.max(1) as u32;
    // Locally a step holds its CPUs and GPUs of this machine; on a cluster a step is one job in
    // the queue (of at most `--jobs`) and the scheduler places it.
    let local = shared.opts.executor.local_resources();
    let slots = |r: forge_ops::Resources| if local { r.cpus.clamp(1, jobs) } else { 1 };
    let gpus_of = |r: forge_ops::Resources| if local { r.gpus } else { 0 };
    let (mut cpu_free, mut gpu_free) = (jobs, shared.opts.gpus);
    let mut stopping = false;
    let mut last_summary = Instant::now();

    loop {
        if !stopping && !shared.cancel.is_cancelled() {
            for i in ready.clone() {
                let r = plan.steps[i].resources;
                let (cpus, gpus) = (slots(r), gpus_of(r));
                if gpus > shared.opts.gpus {
                    ready.remove(&i);
                    let msg = format!(
                        "needs {} GPU(s) but only {} are available (--gpus)",
                        r.gpus, shared.opts.gpus
                    );
                    shared.emitter.emit(Event::Failed {
                        step: plan.steps[i].id.clone(),
                        error: msg.clone(),
                        detail: None,
                        tier: Tier::User,
                        hint: Some("raise `--gpus` or lower the step's `resources.gpus`".into()),
                    });
                    results[i] = StepResult {
                        status: Status::Failed,
                        error: Some(msg),
                        tier: Some(Tier::User),
                        ..StepResult::pending()
                    };
                    if !shared.opts.keep_going {
                        stopping = true;
                        shared.cancel.cancel(format!("{} failed", plan.steps[i].id));
                    }
                    continue;
                }
                if cpus <= cpu_free && gpus <= gpu_free {
                    cpu_free -= cpus;
                    gpu_free -= gpus;
                    ready.remove(&i);
                    let inputs = input_artifacts(&plan, i, &outputs);
                    let sh = shared.clone();
                    running.spawn_blocking(move || (i, sh.opts.executor.run(&sh, i, &inputs)));
                }
            }
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, res) = match joined {
            Ok(x) => x,
            Err(e) => panic!("step task panicked: {e}"),
        };
        let r = plan.steps[i].resources;
        cpu_free += slots(r);
        gpu_free += gpus_of(r);
        match res.status {
            Status::Cached | Status::Ran => {
                outputs[i] = Some(res.outputs.clone());
                for &j in &plan.dependents[i] {
                    waiting[j] -= 1;
                    if waiting[j] == 0 && selected[j] {
                        ready.insert(j);
                    }
                }
            }
            Status::Failed if !shared.opts.keep_going => {
                stopping = true;
                shared.cancel.cancel(format!("{} failed", plan.steps[i].id));
            }
            _ => {}
        }
        results[i] = res;
        // Keep run.json current for `gc` and crash forensics, without an fsync per step.
        if last_summary.elapsed() >= SUMMARY_INTERVAL {
            write_summary(
                &shared,
                run,
                &summary(&shared, &results, "running", started, None),
            );
            last_summary = Instant::now();
        }
    }

    // Whatever never ran: say why.
    for &i in &plan.order {
        if !selected[i] || results[i].status != Status::Pending {
            continue;
        }
        let blocked_by = plan.deps[i].iter().find(|&&d| {
            matches!(
                results[d].status,
                Status::Failed | Status::Cancelled | Status::Skipped
            )
        });
        let reason = match (blocked_by, shared.cancel.reason()) {
            (Some(&d), _) => format!("depends on {} which did not finish", plan.steps[d].id),
            (None, Some(r)) => format!("not started: {r}"),
            (None, None) => "not started".into(),
        };
        shared.emitter.emit(Event::Skipped {
            step: plan.steps[i].id.clone(),
            reason: reason.clone(),
        });
        results[i] = StepResult {
            status: Status::Skipped,
            error: Some(reason),
            ..StepResult::pending()
        };
    }
    let count = |s: Status| {
        results
            .iter()
            .zip(&selected)
            .filter(|(r, sel)| **sel && r.status == s)
            .count()
    };
    let failed = count(Status::Failed);
    let cancelled = count(Status::Cancelled);
    let status = if failed > 0 {
        "failed"
    } else if cancelled > 0 || count(Status::Skipped) > 0 {
        "cancelled"
    } else {
        "succeeded"
    };
    shared.emitter.emit(Event::RunFinished {
        status: status.into(),
        ran: count(Status::Ran),
        cached: count(Status::Cached),
        failed,
        skipped: count(Status::Skipped) + cancelled,
        duration_ms: t0.elapsed().as_millis() as u64,
    });
    write_summary(
        &shared,
        run,
        &summary(&shared, &results, status, started, Some(now_ms())),
    );
    ApplyReport {
        run_id: run.id.clone(),
        results,
        status: status.into(),
    }
}

/// Write the run summary. A failure to is reported in the events and on the console (`gc` and
/// `status` read the summary) but does not stop the run.
fn write_summary(shared: &Shared, run: &mut forge_cache::RunWriter, s: &RunSummary) {
    if let Err(e) = run.write_summary(s) {
        shared.emitter.emit(Event::Warning {
            message: format!("could not write the run summary: {e}"),
        });
    }
}

/// A step's inputs: per input name, each wired artifact's digest, kind and producing step.
pub type Inputs = BTreeMap<String, Vec<(ObjectDigest, forge_ops::ArtifactKind, String)>>;

/// Step `i`'s key with these inputs.
pub(crate) fn key_of(
    plan: &Plan,
    store: &Store,
    i: usize,
    inputs: &Inputs,
) -> Result<StepKey, OpError> {
    let digests = inputs
        .iter()
        .map(|(name, v)| (name.clone(), v.iter().map(|(d, _, _)| *d).collect()))
        .collect();
    Ok(own_preimage(plan, store, i, digests)?.key())
}

fn input_artifacts(
    plan: &Plan,
    i: usize,
    outputs: &[Option<BTreeMap<String, ObjectDigest>>],
) -> Inputs {
    plan.steps[i]
        .inputs
        .iter()
        .map(|(name, ups)| {
            let v = ups
                .iter()
                .map(|u| {
                    (
                        outputs[u.step].as_ref().expect("dependency finished")[&u.output],
                        u.kind,
                        plan.steps[u.step].id.clone(),
                    )
                })
                .collect();
            (name.clone(), v)
        })
        .collect()
}

/// [`run_step`], turning a panic in an op into that step's failure instead of the run's crash.
pub(crate) fn run_step_isolated(sh: &Shared, i: usize, inputs: Inputs) -> StepResult {
    let t = Instant::now();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_step(sh, i, &inputs)))
        .unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<&str>()
                .map(std::string::ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let step = StepRun { sh, i, t0: t };
            step.failed(
                OpError::internal(format!(
                    "op `{}` panicked: {msg} (a bug in the op)",
                    sh.plan.steps[i].op.name()
                )),
                None,
            )
        })
}

/// Run (or find in the cache) one step, phase by phase. Blocking.
fn run_step(sh: &Shared, i: usize, inputs: &Inputs) -> StepResult {
    let step = StepRun::new(sh, i);
    let phases = || -> Result<StepResult, StepResult> {
        let (key, forced) = step.resolve_unless_cached(inputs)?;
        let lock = step.lock(&key)?;
        if (!forced || matches!(lock.acquired, Acquired::AfterWait { .. }))
            && let Some(hit) = step.check_cache(&key)?
        {
            return Ok(hit);
        }
        if !forced && let Some(hit) = step.check_remote(&key)? {
            return Ok(hit);
        }
        step.preflight(inputs, &key)?;
        let checked_out = step.checkout(inputs, &key)?;
        let outcome = step.execute(&key, &checked_out)?;
        if lock.lost() {
            // This process was silent for a whole lease and another took the step over: that
            // one records it; this run's outputs are not trusted.
            return Err(step.failed(
                OpError::infra(
                    "lost the step's lock while running (its lease was not renewed in time and \
                     another process took the step over)",
                ),
                Some(key.key),
            ));
        }
        let result = step.record(&key, outcome)?;
        step.upload(&key);
        drop(lock);
        Ok(result)
    };
    phases().unwrap_or_else(|early| early)
}

/// A step's key, with the pre-image that explains it.
pub(crate) struct ResolvedKey {
    pub(crate) key: StepKey,
    preimage: serde_json::Value,
}

/// One step being run: the phases of [`run_step`], each ending the step early with its result
/// when it must.
pub(crate) struct StepRun<'a> {
    sh: &'a Shared,
    i: usize,
    t0: Instant,
}

impl<'a> StepRun<'a> {
    pub(crate) fn new(sh: &'a Shared, i: usize) -> Self {
        Self {
            sh,
            i,
            t0: Instant::now(),
        }
    }
    fn s(&self) -> &StepInstance {
        &self.sh.plan.steps[self.i]
    }
    pub(crate) fn id(&self) -> String {
        self.s().id.clone()
    }
    pub(crate) fn elapsed_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// The step's result as another process recorded it (a cluster job): `status` says whether
    /// that process ran it or found it cached. Its events were already forwarded.
    pub(crate) fn recorded(
        &self,
        k: &ResolvedKey,
        status: Status,
    ) -> Result<StepResult, StepResult> {
        match self.sh.store.get_action(&k.key) {
            Ok(Some(rec)) => Ok(StepResult {
                status,
                key: Some(k.key),
                outputs: rec.outputs,
                duration_ms: self.elapsed_ms(),
                ..StepResult::pending()
            }),
            Ok(None) => Err(self.failed(
                OpError::infra(
                    "the step's job reported it finished, but its result is not in the store \
                     (is the store on a filesystem every node shares?)",
                ),
                Some(k.key),
            )),
            Err(e) => Err(self.failed(e.into(), Some(k.key))),
        }
    }

    pub(crate) fn failed(&self, e: OpError, key: Option<StepKey>) -> StepResult {
        let error = e.to_string();
        self.sh.emitter.emit(Event::Failed {
            step: self.id(),
            error: error.clone(),
            detail: e.detail().map(str::to_owned),
            tier: e.tier(),
            hint: e.hint(),
        });
        StepResult {
            status: Status::Failed,
            key,
            duration_ms: self.t0.elapsed().as_millis() as u64,
            error: Some(error),
            tier: Some(e.tier()),
            ..StepResult::pending()
        }
    }

    pub(crate) fn cancelled(&self, reason: String, key: Option<StepKey>) -> StepResult {
        self.sh.emitter.emit(Event::Cancelled {
            step: self.id(),
            reason: reason.clone(),
        });
        StepResult {
            status: Status::Cancelled,
            key,
            error: Some(reason),
            ..StepResult::pending()
        }
    }

    pub(crate) fn not_cancelled(&self, key: Option<StepKey>) -> Result<(), StepResult> {
        if self.sh.cancel.is_cancelled() {
            return Err(self.cancelled(self.sh.cancel.reason().unwrap_or_default(), key));
        }
        Ok(())
    }

    /// Phase 1: the key, from the params and the inputs' output digests.
    fn resolve(&self, inputs: &Inputs) -> Result<ResolvedKey, StepResult> {
        let s = self.s();
        // The digest view `preimage` expects, from the resolved inputs.
        let mut digests = vec![None; self.sh.plan.steps.len()];
        for (name, ups) in &s.inputs {
            for (u, (d, _, _)) in ups.iter().zip(&inputs[name]) {
                digests[u.step]
                    .get_or_insert_with(BTreeMap::new)
                    .insert(u.output.clone(), *d);
            }
        }
        match preimage(&self.sh.plan, &self.sh.store, self.i, &digests) {
            Ok(Some(p)) => Ok(ResolvedKey {
                key: p.key(),
                preimage: p.to_json(),
            }),
            Ok(None) => unreachable!("all inputs of a started step are finished"),
            Err(e) => Err(self.failed(e, None)),
        }
    }

    /// Phases 1 and 2, which every executor runs where the plan is: the key, and whether the
    /// step is forced; a cached (and not forced) step ends here with its hit.
    pub(crate) fn resolve_unless_cached(
        &self,
        inputs: &Inputs,
    ) -> Result<(ResolvedKey, bool), StepResult> {
        self.not_cancelled(None)?;
        let key = self.resolve(inputs)?;
        let forced = self.sh.opts.force.contains(&self.i);
        if !forced && let Some(hit) = self.check_cache(&key)? {
            return Err(hit);
        }
        Ok((key, forced))
    }

    /// Point the step's ref at the key when it moved (a no-op run writes nothing per step). The
    /// ref only explains future re-runs, so failing to write it warns instead of failing.
    fn set_ref(&self, k: &ResolvedKey) {
        let (store, pipeline, id) = (&self.sh.store, &self.sh.plan.pipeline.name, self.id());
        let current = store.step_ref(pipeline, &id).ok().flatten();
        let vars = &self.s().vars;
        if current.is_some_and(|r| r.key == k.key && r.preimage == k.preimage && r.vars == *vars) {
            return;
        }
        let r = StepRef {
            pipeline: pipeline.clone(),
            step: id.clone(),
            key: k.key,
            preimage: k.preimage.clone(),
            updated_unix_ms: now_ms(),
            vars: vars.clone(),
        };
        if let Err(e) = store.set_step_ref(&r) {
            self.sh.emitter.emit(Event::Alert {
                step: id,
                level: forge_ops::AlertLevel::Warn,
                message: format!(
                    "could not record this step's key ({e}); `forge plan` may give stale reasons for its next re-run"
                ),
            });
        }
    }

    /// Phases 2 and 4: a recorded result with all its outputs intact.
    fn check_cache(&self, k: &ResolvedKey) -> Result<Option<StepResult>, StepResult> {
        let rec = match self.sh.store.get_action(&k.key) {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.failed(e.into(), Some(k.key))),
        };
        self.set_ref(k);
        self.sh.emitter.emit(Event::CacheHit {
            step: self.id(),
            key: k.key.to_hex(),
        });
        Ok(Some(StepResult {
            status: Status::Cached,
            key: Some(k.key),
            outputs: rec.outputs,
            ..StepResult::pending()
        }))
    }

    /// Phase 3b (under the lock): the remote cache, when there is one. Every object is checked
    /// against its digest on the way in; a corrupt or unreachable remote is reported and the
    /// step built here.
    fn check_remote(&self, k: &ResolvedKey) -> Result<Option<StepResult>, StepResult> {
        let Some(remote) = &self.sh.opts.remote else {
            return Ok(None);
        };
        match remote.fetch(&self.sh.store, &k.key) {
            Ok(Some((_, moved))) => {
                self.sh.emitter.emit(Event::RemoteHit {
                    step: self.id(),
                    key: k.key.to_hex(),
                    objects: moved.objects,
                    bytes: moved.bytes,
                    duration_ms: moved.millis,
                });
                self.check_cache(k)
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.sh.emitter.emit(Event::RemoteError {
                    step: self.id(),
                    error: format!("{e}; building it here"),
                });
                Ok(None)
            }
        }
    }

    /// After a step ran: give its result to the remote cache. A failed upload is a warning; the
    /// local result stands.
    fn upload(&self, k: &ResolvedKey) {
        let Some(remote) = &self.sh.opts.remote else {
            return;
        };
        let event = match remote.push(&self.sh.store, &k.key) {
            Ok(moved) => Event::RemoteUpload {
                step: self.id(),
                key: k.key.to_hex(),
                objects: moved.objects,
                bytes: moved.bytes,
                duration_ms: moved.millis,
            },
            Err(e) => Event::RemoteError {
                step: self.id(),
                error: format!("{e}; not uploaded"),
            },
        };
        self.sh.emitter.emit(event);
    }

    /// Phase 3: the step's lock, so concurrent applies run it once.
    fn lock(&self, k: &ResolvedKey) -> Result<forge_cache::FileLock, StepResult> {
        let sh = self.sh;
        let opts = LockOptions {
            timeout: sh.opts.lock_timeout,
            poll: Duration::from_millis(50),
            lease: LockOptions::default_lease(),
        };
        let on_wait = |holder: Option<&forge_cache::Holder>| {
            sh.emitter.emit(Event::LockWait {
                step: self.id(),
                holder: holder.map_or(0, |h| h.pid),
                host: holder.map_or_else(|| "?".into(), |h| h.host.clone()),
            });
        };
        // While waiting for another process's lock, stop as soon as its result is recorded:
        // every waiter then takes the cache hit at once instead of queueing for the lock.
        let finished = || sh.store.read_action(&k.key).is_ok_and(|r| r.is_some());
        let stop = || sh.cancel.is_cancelled() || finished();
        let lock = match sh.store.lock_step(&k.key, opts, &stop, &on_wait) {
            Ok(lock) => lock,
            Err(e) => {
                self.not_cancelled(Some(k.key))?;
                let stopped = matches!(
                    e,
                    forge_cache::StoreError::Lock(forge_cache::LockError::Cancelled { .. })
                );
                if !stopped {
                    return Err(self.failed(OpError::infra(e.to_string()), Some(k.key)));
                }
                if let Some(hit) = self.check_cache(k)? {
                    return Err(hit);
                }
                // Recorded, but its outputs are damaged: wait for the lock itself and rebuild.
                sh.store
                    .lock_step(&k.key, opts, &|| sh.cancel.is_cancelled(), &on_wait)
                    .map_err(|e| match self.not_cancelled(Some(k.key)) {
                        Err(cancelled) => cancelled,
                        Ok(()) => self.failed(OpError::infra(e.to_string()), Some(k.key)),
                    })?
            }
        };
        // A wait was reported when it began (`on_wait`); a reclaim is reported now.
        if let Acquired::Reclaimed { holder, why } = &lock.acquired {
            sh.emitter.emit(Event::LockReclaimed {
                step: self.id(),
                dead_pid: holder.pid,
                host: holder.host.clone(),
                reason: why.as_str().into(),
            });
        }
        Ok(lock)
    }

    /// Phase 5: the inputs as read-only checkouts.
    /// What the step will write, roughly: its last result's outputs when it has one, else the
    /// size of its inputs (a model step writes about the model it reads), with where that came
    /// from.
    fn output_estimate(&self, inputs: &Inputs) -> (u64, &'static str) {
        let store = &self.sh.store;
        let size = |d: &ObjectDigest| store.read_tree(d).map_or(0, |t| t.total_size());
        let previous = store
            .step_ref(&self.sh.plan.pipeline.name, &self.s().id)
            .ok()
            .flatten()
            .and_then(|r| store.read_action(&r.key).ok().flatten());
        if let Some(rec) = previous {
            return (
                rec.outputs.values().map(size).sum(),
                "its last result's size",
            );
        }
        let sum = inputs.values().flatten().map(|(d, _, _)| size(d)).sum();
        (sum, "the size of its inputs")
    }

    /// The seed's storage pre-flight: free space on the store's filesystem must hold 1.5 × what
    /// the step will write and still leave `--disk-stop`; otherwise the step fails before it
    /// writes anything (an infrastructure failure: exit 3; the steps before it stay cached).
    fn preflight(&self, inputs: &Inputs, k: &ResolvedKey) -> Result<(), StepResult> {
        use crate::hardware::{PREFLIGHT_MARGIN, disk_space, human_bytes};
        let opts = &self.sh.opts;
        if opts.disk_stop == 0 && opts.disk_warn == 0 {
            return Ok(());
        }
        let Some((free, _)) = disk_space(self.sh.store.root()) else {
            return Ok(());
        };
        let (estimate, from) = self.output_estimate(inputs);
        let need = (estimate as f64 * PREFLIGHT_MARGIN) as u64;
        if free < need.saturating_add(opts.disk_stop) {
            let e = OpError::infra(format!(
                "not enough free disk to start: {} free on the store's filesystem",
                human_bytes(free)
            ))
            .with_detail(format!(
                "the step will write about {} ({from}); with the 1.5× margin that is {}, and --disk-stop keeps {} free. Free some space (`forge gc` drops old results) and apply again: the steps that finished stay cached.",
                human_bytes(estimate),
                human_bytes(need),
                human_bytes(opts.disk_stop)
            ));
            return Err(self.failed(e, Some(k.key)));
        }
        if free.saturating_sub(need) < opts.disk_warn
            && !self
                .sh
                .disk_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.sh.emitter.emit(Event::Alert {
                step: self.id(),
                level: forge_ops::AlertLevel::Warn,
                message: format!(
                    "disk: {} free on the store's filesystem, {} after this step (below --disk-warn {})",
                    human_bytes(free),
                    human_bytes(free - need),
                    human_bytes(opts.disk_warn)
                ),
            });
        }
        Ok(())
    }

    fn checkout(&self, inputs: &Inputs, k: &ResolvedKey) -> Result<StepInputs, StepResult> {
        let mut out = StepInputs::new();
        for (name, arts) in inputs {
            let mut v = Vec::new();
            for (d, kind, from) in arts {
                let path = self.sh.store.checkout(d).map_err(|e| {
                    self.failed(
                        OpError::infra(format!("input `{name}` from {from}: {e}")),
                        Some(k.key),
                    )
                })?;
                v.push(InputArtifact {
                    path,
                    digest: *d,
                    kind: *kind,
                    from_step: from.clone(),
                });
            }
            out.insert(name.clone(), v);
        }
        Ok(out)
    }

    /// Phase 6: run the op in `work/<key>/`, retrying transient failures with backoff.
    fn execute(&self, k: &ResolvedKey, inputs: &StepInputs) -> Result<StepOutcome, StepResult> {
        let (sh, s) = (self.sh, self.s());
        let work = sh.store.work_dir(&k.key);
        let step_cancel = sh.cancel.child();
        let _watchdog = s
            .timeout
            .map(|limit| Watchdog::start(limit, step_cancel.clone()));
        let mut attempt = 0u32;
        loop {
            let out_root = work.join("out");
            if let Err(e) = std::fs::remove_dir_all(&out_root)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(self.failed(OpError::io(&out_root, e), Some(k.key)));
            }
            sh.emitter.emit(Event::Started {
                step: self.id(),
                key: k.key.to_hex(),
                attempt,
            });
            let em = sh.emitter.clone();
            let sid = self.id();
            let sink: forge_ops::EventSink = Arc::new(move |e| em.emit(wrap(&sid, e)));
            let ctx = StepContext::new(
                self.id(),
                work.clone(),
                sh.plan.pipeline.dir.clone(),
                s.seed,
                sh.plan.pipeline.defaults.device.clone(),
                attempt,
                sink,
                step_cancel.clone(),
            )
            .with_memos(sh.store.memos())
            .with_cpus(s.resources.cpus);
            let e = match s.op.run(&ctx, inputs, &s.params) {
                Ok(o) => return Ok(o),
                Err(e) => e,
            };
            if let OpError::Cancelled(reason) = e {
                let reason = step_cancel.reason().unwrap_or(reason);
                // Cancelled by its own timeout rather than by the run: the step failed.
                return Err(if sh.cancel.is_cancelled() {
                    self.cancelled(reason, Some(k.key))
                } else {
                    let e = OpError::user(reason).with_hint("raise the step's `timeout:`");
                    self.failed(e, Some(k.key))
                });
            }
            if !e.is_transient() || attempt >= s.retries || step_cancel.is_cancelled() {
                return Err(self.failed(e, Some(k.key)));
            }
            let delay = sh
                .opts
                .retry_base
                .saturating_mul(1 << attempt.min(16))
                .min(Duration::from_secs(60));
            sh.emitter.emit(Event::Retrying {
                step: self.id(),
                attempt,
                delay_ms: delay.as_millis() as u64,
                error: e.to_string(),
            });
            let until = Instant::now() + delay;
            while Instant::now() < until && !step_cancel.is_cancelled() {
                std::thread::sleep(
                    Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
                );
            }
            attempt += 1;
        }
    }

    /// Phase 7: outputs into the store, then the action record and the step ref.
    fn record(&self, k: &ResolvedKey, outcome: StepOutcome) -> Result<StepResult, StepResult> {
        let (sh, s) = (self.sh, self.s());
        let work = sh.store.work_dir(&k.key);
        let mut outs = BTreeMap::new();
        for spec in &s.outputs {
            let dir: PathBuf = work.join("out").join(&spec.name);
            if !dir.is_dir() {
                let e = OpError::internal(format!(
                    "op `{}` did not write its output `{}`",
                    s.op.name(),
                    spec.name
                ));
                return Err(self.failed(e, Some(k.key)));
            }
            let d = sh.store.put_tree_move(&dir).map_err(|e| {
                let e = OpError::infra(format!("storing output `{}`: {e}", spec.name));
                self.failed(e, Some(k.key))
            })?;
            outs.insert(spec.name.clone(), d);
        }
        let duration_ms = self.t0.elapsed().as_millis() as u64;
        let rec = ActionRecord {
            key: k.key,
            step: self.id(),
            op: s.op.name().into(),
            outputs: outs.clone(),
            metrics: outcome.metrics,
            preimage: k.preimage.clone(),
            created_unix_ms: now_ms(),
            duration_ms,
            run_id: sh.run_id.clone(),
        };
        sh.store.put_action(&rec).map_err(|e| {
            let e = OpError::infra(format!("recording the result: {e}"));
            self.failed(e, Some(k.key))
        })?;
        self.set_ref(k);
        // The result is recorded; a leftover work dir only costs disk until `gc`.
        if let Err(e) = std::fs::remove_dir_all(&work) {
            sh.emitter.emit(Event::Alert {
                step: self.id(),
                level: forge_ops::AlertLevel::Warn,
                message: format!("could not remove the work dir {}: {e}", work.display()),
            });
        }
        sh.emitter.emit(Event::Finished {
            step: self.id(),
            key: k.key.to_hex(),
            duration_ms,
            outputs: outs.iter().map(|(k, v)| (k.clone(), v.to_hex())).collect(),
        });
        Ok(StepResult {
            status: Status::Ran,
            key: Some(k.key),
            outputs: outs,
            duration_ms,
            ..StepResult::pending()
        })
    }
}

fn wrap(step: &str, e: StepEvent) -> Event {
    let step = step.to_owned();
    match e {
        StepEvent::Progress { done, total, unit } => Event::Progress {
            step,
            done,
            total,
            unit,
        },
        StepEvent::Metric {
            name,
            value,
            step: at,
        } => Event::Metric {
            step,
            name,
            value,
            at,
        },
        StepEvent::Alert { level, message } => Event::Alert {
            step,
            level,
            message,
        },
        StepEvent::Log { message } => Event::Log { step, message },
    }
}

/// Cancels a step's token when its `timeout:` passes; stops when dropped.
struct Watchdog {
    _done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start(limit: Duration, token: CancelToken) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                token.cancel(format!(
                    "timed out after {}",
                    humantime::format_duration(limit)
                ));
            }
        });
        Self { _done: tx }
    }
}

/// Step ids for a message, with the instances of one matrix step folded together:
/// `a.b[x=1], a.b[x=2], a.c` → `a.b (2 instances), a.c`.
fn summarize_steps<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for id in ids {
        let base = id.split_once('[').map_or(id, |(b, _)| b);
        match groups.iter_mut().find(|(b, _)| *b == base) {
            Some((_, members)) => members.push(id),
            None => groups.push((base, vec![id])),
        }
    }
    groups
        .into_iter()
        .map(|(base, members)| match members.as_slice() {
            [one] => (*one).to_owned(),
            many => format!("{base} ({} instances)", many.len()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn matrix_instances_fold_in_messages() {
        assert_eq!(
            super::summarize_steps(["p.d[ds=a]", "p.d[ds=b]", "p.t", "p.m[v=x]"]),
            "p.d (2 instances), p.t, p.m[v=x]"
        );
    }
}
