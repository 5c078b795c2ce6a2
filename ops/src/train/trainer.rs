//! The training loop every objective runs on: micro-batches with gradient accumulation (split
//! further by a memory budget, halved on out-of-memory), the warm-up + cosine schedule, the
//! optimizer step and QK-clip, metrics and history rows every `log_every` steps, loss alerts,
//! atomic checkpoints every `checkpoint_every` steps, rollback with a halved learning rate
//! when the loss stops being finite, and an optional [`Monitor`] (Quiet-STaR's anti-theater
//! checks) whose failures roll back to the last checkpoint that passed with tightened [`Knobs`].
//!
//! A run is a pure function of its start model, its batches (each a pure function of (step,
//! micro-batch)) and its settings, and a checkpoint holds everything else (weights, optimizer
//! state, step, learning-rate factor, the micro-batch split, the history logged so far), so a
//! killed run resumes to the same bytes — weights and history alike.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::memory;
use super::objective::{Knobs, Objective};
use super::schedule::lr_factor;
use crate::context::{AlertLevel, StepContext};
use crate::error::OpError;
use crate::model::weights::{load_exact, to_bytes};
use crate::model::{ModelConfig, TrmTitansMag, size_category};
use crate::optim::{MuonGrokfast, OptimizerConfig, qk_clip};

/// How a run steps: everything about the loop that is not the model, the data or the objective.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Rows per micro-batch of `grad_accum`.
    pub batch_size: usize,
    pub seq_len: usize,
    pub grad_accum: usize,
    pub warmup_steps: u64,
    /// Cosine floor as a fraction of the peak learning rate.
    pub min_lr_ratio: f64,
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub memory_budget_mib: Option<u64>,
}

/// Where a run's rows come from.
pub trait Batches {
    /// The rows (`seq + 1` ids each) of micro-batch `micro` of optimizer step `step`.
    fn rows(&self, step: u64, micro: u64) -> Vec<Vec<i64>>;
    /// The 1-based curriculum stage of `step`, for the logs.
    fn stage(&self, step: u64) -> usize;
}

impl Batches for crate::data::Sampler<'_> {
    fn rows(&self, step: u64, micro: u64) -> Vec<Vec<i64>> {
        crate::data::Sampler::rows(self, step, micro)
    }
    fn stage(&self, step: u64) -> usize {
        crate::data::Sampler::stage(self, step)
    }
}

/// A check of the model every `every()` steps and at the end (Quiet-STaR's anti-theater checks).
/// On a failure the loop applies the seed's intervention: roll back to the last state that
/// passed (or the start), tighten the [`Knobs`] (KL × 2, reward threshold × 1.5), raise an alert
/// and go on; after `max_interventions()` it fails the step with the check's numbers, or, when
/// `fail_when_exhausted()` is false, only alerts and trains on.
pub trait Monitor {
    fn every(&self) -> u64;
    fn max_interventions(&self) -> u32;
    fn fail_when_exhausted(&self) -> bool;
    /// Measure `model` (no autodiff) after optimizer step `step`.
    fn check(&self, model: &TrmTitansMag, step: u64) -> Result<Checked, OpError>;
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checked {
    pub passed: bool,
    /// The measured numbers, in a fixed order, logged at the step.
    pub metrics: Vec<(String, f64)>,
    /// One line for alerts and errors: which checks failed, with their numbers.
    pub summary: String,
}

/// What a finished run hands back.
pub struct Trained {
    pub model: TrmTitansMag,
    /// One row per logged step (wall-clock numbers left out: artifacts are byte-stable).
    pub history: Vec<Value>,
    pub steps: u64,
    pub rollbacks: u32,
    pub micro_batch: usize,
    pub final_loss: Option<f64>,
    pub tokens_per_second: f64,
    /// The monitor's last check (of the final model) and the interventions made.
    pub last_check: Option<Checked>,
    pub interventions: u32,
    pub knobs: Knobs,
}

/// Every metric [`Trained::metrics`] writes.
pub const TRAINED_METRICS: &[&str] = &[
    "train/loss",
    "train/steps",
    "train/rollbacks",
    "train/micro_batch_size",
];

impl Trained {
    /// The run's own metrics under the seed's names: the start of a step's `metrics.json`.
    pub fn metrics(&self) -> serde_json::Map<String, Value> {
        [
            ("train/loss", json!(self.final_loss)),
            ("train/steps", json!(self.steps)),
            ("train/rollbacks", json!(self.rollbacks)),
            ("train/micro_batch_size", json!(self.micro_batch)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The logged rows as the artifact's `history.jsonl`.
    pub fn history_jsonl(&self) -> Vec<u8> {
        let text: String = self.history.iter().map(|h| format!("{h}\n")).collect();
        text.into_bytes()
    }

    /// The trained weights as canonical safetensors bytes.
    pub fn weights(&self) -> Result<Vec<u8>, OpError> {
        to_bytes(&self.model).map_err(|e| OpError::internal(e.to_string()))
    }

    /// The trained weights for evaluation (no autodiff).
    pub fn eval_model(&self) -> TrmTitansMag {
        self.model.valid()
    }
}

/// The checkpointed state of the loop besides weights and optimizer.
#[derive(Serialize, Deserialize)]
struct Progress {
    step: u64,
    lr_factor: f64,
    rollbacks: u32,
    losses: Vec<f64>,
    /// Rows per micro-batch once chosen (budget, halvings), so a resumed run splits the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    micro_batch: Option<usize>,
    /// The rows logged up to this step (they go into the artifact's `history.jsonl`).
    #[serde(default)]
    history: Vec<Value>,
    /// The monitor's interventions so far, what they changed, and its last check.
    #[serde(default)]
    interventions: u32,
    #[serde(default)]
    knobs: Knobs,
    #[serde(default)]
    last_check: Option<Checked>,
    /// Interventions ran out and the monitor only alerts from here on.
    #[serde(default)]
    exhausted: bool,
}

impl Progress {
    fn start() -> Self {
        Self {
            step: 0,
            lr_factor: 1.0,
            rollbacks: 0,
            losses: Vec::new(),
            micro_batch: None,
            history: Vec::new(),
            interventions: 0,
            knobs: Knobs::default(),
            last_check: None,
            exhausted: false,
        }
    }
}

/// The model, optimizer and loop state of a run, checkpointed together.
struct State {
    model: TrmTitansMag,
    opt: MuonGrokfast,
    prog: Progress,
    /// The state after the monitor's last passed check (serialised), what a failure rolls back to.
    passed: Option<Snapshot>,
}

/// A serialised [`State`] without its own snapshot.
#[derive(Clone)]
struct Snapshot {
    model: Vec<u8>,
    opt: Vec<u8>,
    prog: Vec<u8>,
}

const PASSED: [&str; 3] = [
    "passed.model.safetensors",
    "passed.optim.safetensors",
    "passed.progress.json",
];

/// A run's fixed parts.
pub struct Run<'a> {
    pub ctx: &'a StepContext,
    pub model: &'a ModelConfig,
    pub optimizer: &'a OptimizerConfig,
    pub settings: &'a LoopConfig,
    /// The autodiff device.
    pub device: &'a Device,
    /// Checks with interventions (Quiet-STaR's anti-theater checks), if any.
    pub monitor: Option<&'a dyn Monitor>,
}

impl Run<'_> {
    /// Train from `start()` (fresh or given weights) on `batches` for `objective`, resuming from
    /// the step's checkpoint when there is one.
    pub fn train(
        &self,
        start: &dyn Fn() -> Result<TrmTitansMag, OpError>,
        batches: &dyn Batches,
        objective: &dyn Objective,
    ) -> Result<Trained, OpError> {
        let (ctx, s) = (self.ctx, self.settings);
        let mut st = State {
            model: start()?,
            opt: MuonGrokfast::new(self.optimizer.clone()),
            prog: Progress::start(),
            passed: None,
        };
        if self.resume(&mut st)? {
            ctx.log(format!(
                "resuming from the checkpoint at step {}",
                st.prog.step
            ));
        }
        let params = st.model.num_params();
        ctx.log(format!(
            "{params} parameters ({}), objective {}",
            size_category(params),
            objective.name()
        ));
        let first_micro = self.first_micro_batch(params)?;
        let mut watch = super::alerts::LossWatch::default();
        let mut tokens_seen = 0u64;
        let t0 = Instant::now();
        while st.prog.step < s.steps {
            let step = st.prog.step;
            let lr_scale =
                lr_factor(step, s.warmup_steps, s.steps, s.min_lr_ratio) * st.prog.lr_factor;
            let micro = st.prog.micro_batch.unwrap_or(first_micro);
            let ((mut acc, sums, last), used) = memory::with_halving(
                micro,
                |from, to| {
                    ctx.alert(
                        AlertLevel::Warn,
                        format!("out of memory at step {step} with micro-batches of {from} rows: retrying with {to}"),
                    );
                },
                |mb| self.accumulate(&st.model, batches, objective, (step, st.prog.knobs), mb),
            )
            .map_err(|e| OpError::infra(format!("step {step}: {e}")))?;
            st.prog.micro_batch = Some(used);
            tokens_seen += (s.batch_size * s.seq_len * s.grad_accum) as u64;
            let loss = sums.loss;
            if !loss.is_finite() {
                self.roll_back(&mut st, start, step, loss)?;
                continue;
            }
            let (m, stats) = st.opt.step(st.model, acc.grads(), lr_scale);
            st.model = m;
            // An objective that records no attention logits (Quiet-STaR's incremental reads) is
            // not clipped.
            if self.optimizer.qk_clip > 0.0 && !last.max_logits.is_empty() {
                let logits: Vec<Vec<f32>> = last
                    .max_logits
                    .iter()
                    .map(|t| t.to_data().try_to_vec().unwrap_or_default())
                    .collect();
                let (m, clipped) = qk_clip(st.model, &logits, self.optimizer.qk_clip);
                st.model = m;
                if clipped > 0 {
                    ctx.metric("optimizer/qk_clipped_heads", clipped as f64, Some(step));
                }
            }
            st.prog.step += 1;
            st.prog.losses.push(loss);
            if st.prog.losses.len() > 200 {
                st.prog.losses.remove(0);
            }
            let done = st.prog.step;
            if done.is_multiple_of(s.log_every) || done == s.steps {
                let mut rec = json!({
                    "step": done,
                    "train/loss": loss,
                    "train/perplexity": loss.exp(),
                    "train/learning_rate": self.optimizer.lr * lr_scale,
                    "train/gradient_norm": stats.grad_norm,
                    "system/tokens_per_second": tokens_seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                    "curriculum/stage": batches.stage(step),
                    "optimizer/grokfast_lambda": self.optimizer.grokfast_lambda,
                });
                for (k, v) in &sums.extra {
                    rec[*k] = json!(v);
                }
                if let Some(u) = &last.memory_usage {
                    rec["ltm/memory_usage"] = json!(u.clone().into_scalar::<f32>());
                }
                if let Some(x) = &last.memory_surprise {
                    rec["ltm/avg_surprise_score"] = json!(x.clone().into_scalar::<f32>());
                }
                st.prog.history.push(log_row(ctx, rec, done));
                ctx.progress(done, Some(s.steps), "steps");
                for (level, message) in watch.observe(&st.prog.losses, done, s.steps) {
                    ctx.alert(level, message);
                }
            }
            let checks = self
                .monitor
                .filter(|m| done.is_multiple_of(m.every()) || done == s.steps);
            if let Some(m) = checks
                && self.check(m, &mut st, start, done)?
            {
                // Rolled back: the restored state is the next checkpoint.
                self.save(&st)?;
                ctx.check_cancelled()?;
                continue;
            }
            if done.is_multiple_of(s.checkpoint_every) || done == s.steps || ctx.is_cancelled() {
                self.save(&st)?;
            }
            ctx.check_cancelled()?;
        }
        Ok(Trained {
            micro_batch: st.prog.micro_batch.unwrap_or(first_micro),
            final_loss: st.prog.losses.last().copied(),
            steps: st.prog.step,
            rollbacks: st.prog.rollbacks,
            model: st.model,
            history: st.prog.history,
            tokens_per_second: tokens_seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            last_check: st.prog.last_check,
            interventions: st.prog.interventions,
            knobs: st.prog.knobs,
        })
    }

    /// Run the monitor's check after step `done`; on a failure, intervene (roll back and tighten
    /// the knobs), fail the step, or only alert once interventions ran out. True when it rolled
    /// back.
    fn check(
        &self,
        m: &dyn Monitor,
        st: &mut State,
        start: &dyn Fn() -> Result<TrmTitansMag, OpError>,
        done: u64,
    ) -> Result<bool, OpError> {
        let ctx = self.ctx;
        ctx.log(format!("step {done}: anti-theater checks"));
        let c = m.check(&st.model.valid(), done)?;
        let mut row = serde_json::Map::new();
        row.insert("step".into(), json!(done));
        for (k, v) in &c.metrics {
            row.insert(k.clone(), json!(v));
        }
        st.prog.history.push(log_row(ctx, Value::Object(row), done));
        st.prog.last_check = Some(c.clone());
        if c.passed {
            ctx.log(format!("step {done}: {}", c.summary));
            st.passed = Some(snapshot(st)?);
            return Ok(false);
        }
        if st.prog.exhausted {
            ctx.alert(
                AlertLevel::Warn,
                format!("theater at step {done}: {}", c.summary),
            );
            return Ok(false);
        }
        if st.prog.interventions >= m.max_interventions() {
            if m.fail_when_exhausted() {
                return Err(OpError::user(format!(
                    "theater at step {done} after {} interventions: {}",
                    st.prog.interventions, c.summary
                ))
                .with_hint("the thoughts do not change the model's predictions; raise `max_interventions`, train longer, or set `on_failure: warn` to keep the model anyway"));
            }
            st.prog.exhausted = true;
            ctx.alert(
                AlertLevel::Warn,
                format!(
                    "theater at step {done} after {} interventions: {}; interventions exhausted, training goes on (`on_failure: warn`)",
                    st.prog.interventions, c.summary
                ),
            );
            return Ok(false);
        }
        // The seed's intervention: back to the last state that passed, KL × 2, threshold × 1.5.
        let history = std::mem::take(&mut st.prog.history);
        let (knobs, interventions) = (st.prog.knobs.tightened(), st.prog.interventions + 1);
        let (rollbacks, micro_batch) = (st.prog.rollbacks, st.prog.micro_batch);
        if let Some(snap) = st.passed.clone() {
            restore(st, &snap, self.device)?;
        } else {
            st.model = start()?;
            st.opt = MuonGrokfast::new(self.optimizer.clone());
            st.prog = Progress::start();
        }
        let back = st.prog.step;
        st.prog.knobs = knobs;
        st.prog.interventions = interventions;
        // What the run learnt about itself stays: its loss rollbacks and its micro-batch split.
        st.prog.rollbacks = st.prog.rollbacks.max(rollbacks);
        st.prog.micro_batch = st.prog.micro_batch.or(micro_batch);
        st.prog.last_check = Some(c.clone());
        st.prog.history = history;
        st.prog.history.push(json!({
            "step": done,
            "intervention": interventions,
            "rolled_back_to": back,
            "kl_scale": knobs.kl_scale,
            "reward_threshold_scale": knobs.reward_threshold_scale,
        }));
        ctx.alert(
            AlertLevel::Warn,
            format!(
                "theater at step {done}: {}; intervention {interventions}: rolled back to step {back}, KL coefficient × {}, reward threshold × {}",
                c.summary, knobs.kl_scale, knobs.reward_threshold_scale
            ),
        );
        Ok(true)
    }

    /// Gradients of one optimizer step over its micro-batches, split into chunks of `mb` rows.
    fn accumulate(
        &self,
        model: &TrmTitansMag,
        batches: &dyn Batches,
        objective: &dyn Objective,
        (step, knobs): (u64, Knobs),
        mb: usize,
    ) -> (
        GradientsAccumulator<TrmTitansMag>,
        Sums,
        super::ObjectiveStep,
    ) {
        let s = self.settings;
        let mut acc = GradientsAccumulator::new();
        let mut sums = Sums::default();
        let mut last = None;
        for micro in 0..s.grad_accum {
            let rows = batches.rows(step, micro as u64);
            for (c, chunk) in rows.chunks(mb).enumerate() {
                // Each chunk's share of the step's mean loss.
                let share = chunk.len() as f64 / (rows.len() * s.grad_accum) as f64;
                let at = super::objective::Draw {
                    step,
                    micro: micro as u64,
                    chunk: c as u64,
                    knobs,
                };
                let out = objective.step(model, chunk, at);
                sums.add(&out, share);
                let loss = if share == 1.0 {
                    out.loss.clone()
                } else {
                    out.loss.clone().mul_scalar(share)
                };
                acc.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
                last = Some(out);
            }
        }
        (acc, sums, last.expect("at least one micro-batch"))
    }

    /// Roll back to the last checkpoint (or the start) with half the learning rate.
    fn roll_back(
        &self,
        st: &mut State,
        start: &dyn Fn() -> Result<TrmTitansMag, OpError>,
        step: u64,
        loss: f64,
    ) -> Result<(), OpError> {
        let rollbacks = st.prog.rollbacks + 1;
        if rollbacks > 3 {
            return Err(OpError::user(format!(
                "loss is {loss} at step {step} after 3 rollbacks with halved learning rates"
            ))
            .with_hint("lower `optimizer.lr`, or check the data for degenerate rows"));
        }
        let factor = st.prog.lr_factor * 0.5;
        st.model = start()?;
        st.opt = MuonGrokfast::new(self.optimizer.clone());
        if !self.resume(st)? {
            st.prog = Progress::start();
        }
        st.prog.lr_factor = factor;
        st.prog.rollbacks = rollbacks;
        self.ctx.alert(
            AlertLevel::Warn,
            format!(
                "non-finite loss at step {step}: rolled back to step {} with learning rate × {factor}",
                st.prog.step
            ),
        );
        Ok(())
    }

    /// Micro-batch rows from the memory budget (all rows without one).
    fn first_micro_batch(&self, params: usize) -> Result<usize, OpError> {
        let s = self.settings;
        let Some(mib) = s.memory_budget_mib else {
            return Ok(s.batch_size);
        };
        let mb = memory::micro_batch_for(self.model, params, s.batch_size, s.seq_len, mib << 20)
            .map_err(|e| {
                OpError::user(e).with_hint("raise `memory_budget_mib` or lower `seq_len`")
            })?;
        self.ctx.log(format!(
            "memory budget {mib} MiB: micro-batches of {mb} of the {} rows per step (estimated {} MiB)",
            s.batch_size,
            memory::estimate_step_bytes(self.model, params, mb, s.seq_len) >> 20
        ));
        Ok(mb)
    }

    fn save(&self, st: &State) -> Result<(), OpError> {
        let now = snapshot(st)?;
        let mut files: Vec<(&str, &[u8])> = vec![
            ("model.safetensors", &now.model),
            ("optim.safetensors", &now.opt),
            ("progress.json", &now.prog),
        ];
        if let Some(p) = &st.passed {
            files.extend(PASSED.into_iter().zip([&p.model[..], &p.opt, &p.prog]));
        }
        self.ctx.save_checkpoint(&files)
    }

    /// Load the step's checkpoint into `st`; false when there is none.
    fn resume(&self, st: &mut State) -> Result<bool, OpError> {
        let ctx = self.ctx;
        let (Some(m), Some(o), Some(p)) = (
            ctx.load_checkpoint("model.safetensors")?,
            ctx.load_checkpoint("optim.safetensors")?,
            ctx.load_checkpoint_json::<Progress>("progress.json")?,
        ) else {
            return Ok(false);
        };
        load_exact(&mut st.model, m, "the checkpoint")
            .map_err(|e| OpError::infra(e.to_string()))?;
        st.opt = MuonGrokfast::from_state_bytes(&o, self.device)
            .map_err(|e| OpError::infra(format!("optimizer checkpoint: {e}")))?;
        st.prog = p;
        let passed: Vec<Option<Vec<u8>>> = PASSED
            .iter()
            .map(|n| ctx.load_checkpoint(n))
            .collect::<Result<_, _>>()?;
        st.passed = match &passed[..] {
            [Some(m), Some(o), Some(p)] => Some(Snapshot {
                model: m.clone(),
                opt: o.clone(),
                prog: p.clone(),
            }),
            _ => None,
        };
        Ok(true)
    }
}

fn snapshot(st: &State) -> Result<Snapshot, OpError> {
    Ok(Snapshot {
        model: to_bytes(&st.model).map_err(|e| OpError::internal(e.to_string()))?,
        opt: st.opt.state_bytes(),
        prog: serde_json::to_vec(&st.prog).expect("progress serializes"),
    })
}

/// Put `snap` back into `st` (its own snapshot stays).
fn restore(st: &mut State, snap: &Snapshot, device: &Device) -> Result<(), OpError> {
    load_exact(&mut st.model, snap.model.clone(), "the last passed state")
        .map_err(|e| OpError::infra(e.to_string()))?;
    st.opt = MuonGrokfast::from_state_bytes(&snap.opt, device)
        .map_err(|e| OpError::infra(format!("optimizer snapshot: {e}")))?;
    st.prog = serde_json::from_slice(&snap.prog)
        .map_err(|e| OpError::infra(format!("progress snapshot: {e}")))?;
    Ok(())
}

/// Loss sums of one optimizer step, each weighted by its chunk's share.
#[derive(Default)]
struct Sums {
    loss: f64,
    extra: Vec<(&'static str, f64)>,
}

impl Sums {
    fn add(&mut self, out: &super::ObjectiveStep, share: f64) {
        self.loss += out.reported * share;
        for (k, v) in &out.extra {
            match self.extra.iter_mut().find(|(n, _)| n == k) {
                Some((_, sum)) => *sum += v * share,
                None => self.extra.push((k, v * share)),
            }
        }
    }
}

/// Emit a logged row's numbers as metric events and return it for the history, without its
/// wall-clock numbers (artifacts must be the same bytes every run).
fn log_row(ctx: &StepContext, mut rec: Value, step: u64) -> Value {
    for (k, v) in rec.as_object().expect("object") {
        if let Some(x) = v.as_f64()
            && k != "step"
        {
            ctx.metric(k, x, Some(step));
        }
    }
    if let Some(o) = rec.as_object_mut() {
        o.remove("system/tokens_per_second");
    }
    rec
}
