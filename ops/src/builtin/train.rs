//! `train` (objective `lm`): train a `trm-titans-mag` language model on a dataset with a tokenizer,
//! optionally starting from an `init` model (the shared Phase-1 initialisation that later serves
//! as the merge base). `steps: 0` only initialises and saves, which is how that base is made.
//!
//! Each batch is a pure function of (data seed, step), so a checkpoint (weights, optimizer state,
//! step, learning-rate factor) resumes bit-exactly after a kill. A non-finite loss rolls back to
//! the last checkpoint with the learning rate halved (an alert); the loss slope over the last 100
//! logged values and plateaus raise alerts. Outputs: `model.safetensors`, `config.json`,
//! `tokenizer.json`, `metrics.json` and `history.jsonl` in the `model` artifact.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::artifact::{
    ArtifactKind, InputArtifact, InputSignature, InputSpec, OutputSpec, StepInputs,
};
use crate::context::{AlertLevel, StepContext};
use crate::data::{Category, Record, Split};
use crate::model::{ModelConfig, Tables, TrmTitansMag, size_category};
use crate::op::{OpError, ParamsError, StepOutcome, TypedOp};
use crate::optim::{MuonGrokfast, OptimizerConfig};
use crate::train::{self, Stage, TokenPool};

/// Parameters of `train`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Training objective; `lm` (next-token prediction with deep supervision).
    #[serde(default = "d::objective")]
    pub objective: String,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Optimizer steps (0: initialise and save only).
    #[serde(default = "d::steps")]
    pub steps: u64,
    /// Rows per optimizer step (per micro-batch of `grad_accum`).
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Memory budget in MiB: the rows of a step are split into the largest micro-batches whose
    /// estimated memory fits (gradients accumulate, so the step learns from the same data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget_mib: Option<u64>,
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "d::one")]
    pub grad_accum: usize,
    /// Linear warm-up steps (default: 5% of `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// Cosine decay floor as a fraction of the peak learning rate.
    #[serde(default = "d::min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "d::checkpoint_every")]
    pub checkpoint_every: u64,
    #[serde(default = "d::log_every")]
    pub log_every: u64,
    /// Category sampling weights (default: equal over the categories in the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<BTreeMap<Category, f64>>,
    /// Curriculum stages (default: foundation → reasoning → advanced by difficulty).
    #[serde(default = "train::default_curriculum")]
    pub curriculum: Vec<Stage>,
    /// Seed of the data order (default: the pipeline seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
    /// Seed of the initial weights when there is no `init` input (default: the pipeline seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<u64>,
    /// Validation batches for `val/loss`.
    #[serde(default = "d::val_batches")]
    pub val_batches: usize,
    /// Math validation problems answered by greedy decoding for `val/math_accuracy`.
    #[serde(default = "d::math_eval")]
    pub math_eval: usize,
    /// Most ACT recursions at inference when measuring halting.
    #[serde(default = "d::act_max_steps")]
    pub act_max_steps: usize,
}

mod d {
    pub fn objective() -> String {
        "lm".into()
    }
    pub fn steps() -> u64 {
        200
    }
    pub fn batch_size() -> usize {
        16
    }
    pub fn seq_len() -> usize {
        128
    }
    pub fn one() -> usize {
        1
    }
    pub fn min_lr_ratio() -> f64 {
        0.1
    }
    pub fn checkpoint_every() -> u64 {
        25
    }
    pub fn log_every() -> u64 {
        10
    }
    pub fn val_batches() -> usize {
        4
    }
    pub fn math_eval() -> usize {
        24
    }
    pub fn act_max_steps() -> usize {
        4
    }
}

pub struct Train;

/// Overlay `raw[key]` on the named preset of that block.
fn expand_preset(
    raw: &mut Value,
    key: &str,
    preset: impl Fn(&str) -> Option<Value>,
    names: &str,
) -> Result<(), ParamsError> {
    let Some(block) = raw.get_mut(key).and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let Some(name) = block
        .get("preset")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(());
    };
    let Some(Value::Object(mut base)) = preset(&name) else {
        return Err(
            ParamsError::at(&[key, "preset"], format!("unknown preset `{name}`"))
                .with_hint(format!("presets: {names}")),
        );
    };
    for (k, v) in block.iter() {
        base.insert(k.clone(), v.clone());
    }
    *block = base;
    Ok(())
}

/// The records of `split` of every dataset in `data`, in input order.
pub(crate) fn load_all_records(
    data: &[InputArtifact],
    split: Split,
) -> Result<Vec<Record>, OpError> {
    let mut out = Vec::new();
    for d in data {
        out.extend(load_records(&d.path, split)?);
    }
    Ok(out)
}

pub(crate) fn load_records(dir: &std::path::Path, split: Split) -> Result<Vec<Record>, OpError> {
    let path = dir.join(format!("{}.jsonl", split.name()));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OpError::io(&path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l).map_err(|e| {
                OpError::Failed(format!(
                    "{}:{}: not a dataset record: {e}",
                    path.display(),
                    n + 1
                ))
            })
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Progress {
    step: u64,
    lr_factor: f64,
    rollbacks: u32,
    losses: Vec<f64>,
    /// Rows per micro-batch once chosen (budget, halvings), so a resumed run splits the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    micro_batch: Option<usize>,
}

impl Progress {
    fn start() -> Self {
        Self {
            step: 0,
            lr_factor: 1.0,
            rollbacks: 0,
            losses: Vec::new(),
            micro_batch: None,
        }
    }
}

pub(crate) fn model_bytes(model: &TrmTitansMag) -> Result<Vec<u8>, OpError> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| OpError::Failed(format!("serialising the model: {e}")))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| OpError::Failed(format!("serialising the model: {e}")))?;
    crate::model::canonical_safetensors(&bytes)
        .map_err(|e| OpError::Failed(format!("serialising the model: {e}")))
}

/// Load `input`'s `model.safetensors` (the `role` model of this step, for messages) into `model`.
fn load_input_model(
    model: &mut TrmTitansMag,
    input: &InputArtifact,
    role: &str,
) -> Result<(), OpError> {
    let path = input.path.join("model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| OpError::io(&path, e))?;
    load_model(
        model,
        bytes,
        &format!("the {role} model from {}", input.from_step),
    )
}

pub(crate) fn load_model(
    model: &mut TrmTitansMag,
    bytes: Vec<u8>,
    what: &str,
) -> Result<(), OpError> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let r = model
        .load_from(&mut store)
        .map_err(|e| OpError::Failed(format!("loading {what}: {e}")))?;
    if !r.missing.is_empty() || !r.errors.is_empty() || !r.unused.is_empty() {
        return Err(OpError::Failed(format!(
            "{what} does not fit this model config (missing {:?}, unused {:?}, errors {:?})",
            r.missing, r.unused, r.errors
        )));
    }
    Ok(())
}

impl TypedOp for Train {
    type Params = TrainParams;
    const NAME: &'static str = "train";
    /// 2: fused softmax, log-softmax and SiLU (different float rounding in the backward pass).
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Train a trm-titans-mag language model (Muon × Grokfast, deep supervision, ACT)";

    fn prepare_raw(&self, mut raw: Value) -> Result<Value, ParamsError> {
        expand_preset(
            &mut raw,
            "model",
            |n| ModelConfig::preset(n).map(|c| serde_json::to_value(c).expect("config")),
            "tiny, 25m",
        )?;
        expand_preset(
            &mut raw,
            "optimizer",
            |n| OptimizerConfig::preset(n).map(|c| serde_json::to_value(c).expect("config")),
            "phase1, phase3-baking, phase3-rl",
        )?;
        Ok(raw)
    }

    fn check(&self, p: &TrainParams) -> Result<(), ParamsError> {
        if p.objective != "lm" {
            return Err(ParamsError::at(
                &["objective"],
                format!("unknown objective `{}`", p.objective),
            )
            .with_hint("available: lm"));
        }
        if let Some(problem) = p.model.problems().into_iter().next() {
            return Err(ParamsError::at(&["model"], problem));
        }
        if let Some(problem) = p.optimizer.problems().into_iter().next() {
            return Err(ParamsError::at(&["optimizer"], problem));
        }
        if p.seq_len == 0 || p.seq_len > p.model.max_seq {
            return Err(ParamsError::at(
                &["seq_len"],
                format!(
                    "seq_len must be in 1..={} (the model's max_seq)",
                    p.model.max_seq
                ),
            ));
        }
        if p.batch_size == 0 || p.grad_accum == 0 || p.checkpoint_every == 0 || p.log_every == 0 {
            return Err(ParamsError::at(
                &["batch_size"],
                "batch_size, grad_accum, checkpoint_every and log_every must be positive",
            ));
        }
        if p.memory_budget_mib == Some(0) {
            return Err(ParamsError::at(
                &["memory_budget_mib"],
                "the memory budget must be at least 1 MiB",
            ));
        }
        let mut last = 0.0;
        for (i, s) in p.curriculum.iter().enumerate() {
            if !(s.until > last && s.until <= 1.0) {
                return Err(ParamsError::at(
                    &["curriculum", &i.to_string(), "until"],
                    "stage ends must increase and stay within (0, 1]",
                ));
            }
            last = s.until;
        }
        if !p.curriculum.is_empty() && last < 1.0 {
            return Err(ParamsError::at(
                &["curriculum"],
                "the last stage must end at `until: 1.0`",
            ));
        }
        Ok(())
    }

    fn inputs(&self, p: &TrainParams) -> InputSignature {
        InputSignature::Fixed(vec![
            InputSpec::many("data", &[ArtifactKind::Dataset]),
            InputSpec::one("tokenizer", &[ArtifactKind::Tokenizer]),
            InputSpec::one("init", &[ArtifactKind::Model]).required(false),
            // The frozen model of the KL term: required exactly when the term is on.
            InputSpec::one("reference", &[ArtifactKind::Model]).required(p.optimizer.kl_coef > 0.0),
        ])
    }

    fn outputs(&self, _p: &TrainParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "model".into(),
            kind: ArtifactKind::Model,
        }]
    }

    fn backend_class(&self, _p: &TrainParams, device: &str) -> Option<String> {
        Some(crate::device::key_class(device))
    }

    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        p: &TrainParams,
    ) -> Result<StepOutcome, OpError> {
        let crate::device::Backend {
            device,
            class: backend,
        } = crate::device::resolve(ctx.device()).map_err(|e| OpError::Failed(e.to_string()))?;
        let cfg = &p.model;
        // Tokenizer and data.
        let tk_path = inputs["tokenizer"][0].path.join("tokenizer.json");
        let codec = super::tokenizer::TextCodec::load(&tk_path)?;
        let tokenizer = &codec.tokenizer;
        if tokenizer.get_vocab_size(true) != cfg.vocab_size {
            return Err(OpError::Failed(format!(
                "the tokenizer has {} tokens but model.vocab_size is {}; set `model: {{ vocab_size: {} }}`",
                tokenizer.get_vocab_size(true),
                cfg.vocab_size,
                tokenizer.get_vocab_size(true)
            )));
        }
        let (bos, eos) = (codec.bos, codec.eos);
        let encode = |text: &str| codec.encode(text);
        let train_recs = load_all_records(&inputs["data"], Split::Train)?;
        let val_recs = load_all_records(&inputs["data"], Split::Val)?;
        if train_recs.is_empty() {
            return Err(OpError::Failed(
                "the dataset has no train.jsonl records".into(),
            ));
        }
        let pool = TokenPool::new(&train_recs, encode);
        let val_pool = TokenPool::new(
            if val_recs.is_empty() {
                &train_recs
            } else {
                &val_recs
            },
            encode,
        );
        let categories = pool.categories();
        let base_mix: BTreeMap<String, f64> = match &p.mix {
            Some(m) => m.iter().map(|(c, w)| (c.name().to_string(), *w)).collect(),
            None => categories.iter().map(|c| (c.clone(), 1.0)).collect(),
        };
        if !base_mix.keys().any(|c| categories.contains(c)) {
            return Err(OpError::Failed(format!(
                "no category of `mix` occurs in the data (it has: {})",
                categories.join(", ")
            )));
        }
        let stages = if p.curriculum.is_empty() {
            vec![Stage {
                until: 1.0,
                max_difficulty: 3,
                mix: None,
            }]
        } else {
            p.curriculum.clone()
        };
        let stage_at = |step: u64| -> (&Stage, BTreeMap<String, f64>) {
            let frac = (step as f64 + 0.5) / p.steps.max(1) as f64;
            let s = stages
                .iter()
                .find(|s| frac <= s.until)
                .unwrap_or(stages.last().expect("stages"));
            let mix = s
                .mix
                .as_ref()
                .map(|m| m.iter().map(|(c, w)| (c.name().to_string(), *w)).collect())
                .unwrap_or_else(|| base_mix.clone());
            (s, mix)
        };
        // Every stage must have something to train on.
        for s in &stages {
            let mix = s
                .mix
                .as_ref()
                .map(|m| m.keys().map(|c| c.name().to_string()).collect::<Vec<_>>())
                .unwrap_or_else(|| base_mix.keys().cloned().collect());
            if !train_recs
                .iter()
                .any(|r| r.difficulty <= s.max_difficulty && mix.contains(&r.category))
            {
                return Err(OpError::Failed(format!(
                    "curriculum stage ending at {} has no records (max_difficulty {}, categories {mix:?})",
                    s.until, s.max_difficulty
                )));
            }
        }
        let data_seed = p.data_seed.unwrap_or(ctx.seed());

        // Model and optimizer: fresh, from `init`, or from the checkpoint.
        let tables = Tables::new(cfg, &device);
        // The starting weights: `init` when given, else fresh from the init seed.
        let initial_model = || -> Result<TrmTitansMag, OpError> {
            let mut model = TrmTitansMag::new(cfg, p.init_seed.unwrap_or(ctx.seed()), &device);
            if let Some(init) = inputs.get("init").and_then(|v| v.first()) {
                load_input_model(&mut model, init, "init")?;
            }
            Ok(model)
        };
        let mut model = initial_model()?;
        let reference = match inputs.get("reference").and_then(|v| v.first()) {
            Some(r) if p.optimizer.kl_coef > 0.0 => {
                let mut m = TrmTitansMag::new(cfg, 0, &device);
                load_input_model(&mut m, r, "reference")?;
                Some(m)
            }
            _ => None,
        };
        let mut opt = MuonGrokfast::new(p.optimizer.clone());
        let mut prog = Progress::start();
        let resume = |model: &mut TrmTitansMag,
                      opt: &mut MuonGrokfast,
                      prog: &mut Progress|
         -> Result<bool, OpError> {
            let (Some(m), Some(o), Some(s)) = (
                ctx.load_checkpoint("model.safetensors")?,
                ctx.load_checkpoint("optim.safetensors")?,
                ctx.load_checkpoint_json::<Progress>("progress.json")?,
            ) else {
                return Ok(false);
            };
            load_model(model, m, "the checkpoint")?;
            *opt = MuonGrokfast::from_state_bytes(&o, &device)
                .map_err(|e| OpError::Failed(format!("optimizer checkpoint: {e}")))?;
            *prog = s;
            Ok(true)
        };
        if resume(&mut model, &mut opt, &mut prog)? {
            ctx.log(format!(
                "resuming from the checkpoint at step {}",
                prog.step
            ));
        }
        let params = model.num_params();
        ctx.log(format!(
            "{params} parameters ({}), backend {backend}",
            size_category(params)
        ));
        let save =
            |model: &TrmTitansMag, opt: &MuonGrokfast, prog: &Progress| -> Result<(), OpError> {
                let m = model_bytes(model)?;
                let o = opt.state_bytes();
                let s = serde_json::to_vec(prog).expect("progress serializes");
                ctx.save_checkpoint(&[
                    ("model.safetensors", &m),
                    ("optim.safetensors", &o),
                    ("progress.json", &s),
                ])
            };
        let first_micro = match p.memory_budget_mib {
            None => p.batch_size,
            Some(mib) => {
                let mb =
                    train::memory::micro_batch_for(cfg, params, p.batch_size, p.seq_len, mib << 20)
                        .map_err(OpError::Failed)?;
                ctx.log(format!(
                    "memory budget {mib} MiB: micro-batches of {mb} of the {} rows per step (estimated {} MiB)",
                    p.batch_size,
                    train::memory::estimate_step_bytes(cfg, params, mb, p.seq_len) >> 20
                ));
                mb
            }
        };
        let warmup = p.warmup_steps.unwrap_or(p.steps / 20);
        let mut history = Vec::new();
        let mut tokens_seen = 0u64;
        let t0 = Instant::now();
        let mut alerted_slope = false;
        let mut alerted_plateau = false;
        while prog.step < p.steps {
            let step = prog.step;
            let (stage, mix) = stage_at(step);
            let lr_scale = train::lr_factor(step, warmup, p.steps, p.min_lr_ratio) * prog.lr_factor;
            let micro_batch = prog.micro_batch.unwrap_or(first_micro);
            // Rows of one optimizer step, split into micro-batches of `mb` rows whose gradients
            // accumulate; an out-of-memory panic retries the step with half as many rows.
            let attempt = |mb: usize| {
                let mut acc = GradientsAccumulator::new();
                let (mut loss_sum, mut kl_sum, mut out_last) = (0.0, 0.0, None);
                for micro in 0..p.grad_accum {
                    let rows = pool.batch(
                        &mut train::rng_for(data_seed, "train", step, micro as u64),
                        p.batch_size,
                        p.seq_len,
                        &mix,
                        stage.max_difficulty,
                    );
                    for chunk in rows.chunks(mb) {
                        // Each chunk's share of the step's mean loss.
                        let share = chunk.len() as f64 / (rows.len() * p.grad_accum) as f64;
                        let (x, y) = train::to_tensors(chunk, &device);
                        let out = model.forward_train(
                            x.clone(),
                            y,
                            cfg.sup_steps,
                            cfg.act_weight,
                            &tables,
                        );
                        loss_sum += out.ce.clone().into_scalar::<f32>() as f64 * share;
                        let mut loss = out.loss.clone();
                        if let Some(r) = &reference {
                            let ref_logp = crate::model::fused::log_softmax(
                                r.forward_logits(x, cfg.sup_steps, &tables),
                                2,
                            );
                            let kl = crate::model::kl_divergence(
                                ref_logp,
                                out.logp.clone(),
                                out.mask.clone(),
                            );
                            kl_sum += kl.clone().into_scalar::<f32>() as f64 * share;
                            loss = loss.add(kl.mul_scalar(p.optimizer.kl_coef));
                        }
                        let loss = if share == 1.0 {
                            loss
                        } else {
                            loss.mul_scalar(share)
                        };
                        acc.accumulate(
                            &model,
                            GradientsParams::from_grads(loss.backward(), &model),
                        );
                        out_last = Some(out);
                    }
                }
                (acc, loss_sum, kl_sum, out_last)
            };
            let ((mut acc, loss_sum, kl_sum, out_last), used) = train::memory::with_halving(
                micro_batch,
                |from, to| {
                    ctx.alert(
                        AlertLevel::Warn,
                        format!("out of memory at step {step} with micro-batches of {from} rows: retrying with {to}"),
                    )
                },
                attempt,
            )
            .map_err(|e| OpError::Failed(format!("step {step}: {e}")))?;
            prog.micro_batch = Some(used);
            tokens_seen += (p.batch_size * p.seq_len * p.grad_accum) as u64;
            let loss = loss_sum;
            let out = out_last.expect("at least one micro-batch");
            if !loss.is_finite() {
                // Roll back to the last checkpoint with half the learning rate.
                prog.rollbacks += 1;
                if prog.rollbacks > 3 {
                    return Err(OpError::Failed(format!(
                        "loss is {loss} at step {step} after 3 rollbacks with halved learning rates"
                    )));
                }
                let factor = prog.lr_factor * 0.5;
                model = initial_model()?;
                opt = MuonGrokfast::new(p.optimizer.clone());
                let rollbacks = prog.rollbacks;
                if !resume(&mut model, &mut opt, &mut prog)? {
                    prog = Progress::start();
                }
                prog.lr_factor = factor;
                prog.rollbacks = rollbacks;
                ctx.alert(AlertLevel::Warn, format!("non-finite loss at step {step}: rolled back to step {} with learning rate × {factor}", prog.step));
                continue;
            }
            let grads = acc.grads();
            let (m, stats) = opt.step(model, grads, lr_scale);
            model = m;
            if p.optimizer.qk_clip > 0.0 {
                let logits: Vec<Vec<f32>> = out
                    .max_logits
                    .iter()
                    .map(|t| t.to_data().try_to_vec().unwrap_or_default())
                    .collect();
                let (m, clipped) = train::qk_clip(model, &logits, p.optimizer.qk_clip);
                model = m;
                if clipped > 0 {
                    ctx.metric("optimizer/qk_clipped_heads", clipped as f64, Some(step));
                }
            }
            prog.step += 1;
            prog.losses.push(loss);
            if prog.losses.len() > 200 {
                prog.losses.remove(0);
            }
            if prog.step.is_multiple_of(p.log_every) || prog.step == p.steps {
                let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
                let mut rec = json!({
                    "step": prog.step,
                    "train/loss": loss,
                    "train/perplexity": loss.exp(),
                    "train/learning_rate": p.optimizer.lr * lr_scale,
                    "train/gradient_norm": stats.grad_norm,
                    "system/tokens_per_second": tokens_seen as f64 / elapsed,
                    "curriculum/stage": stages.iter().position(|s| std::ptr::eq(s, stage)).map(|i| i + 1).unwrap_or(1),
                    "optimizer/grokfast_lambda": p.optimizer.grokfast_lambda,
                });
                if reference.is_some() {
                    rec["train/kl_divergence"] = json!(kl_sum);
                }
                if let Some(u) = &out.memory_usage {
                    rec["ltm/memory_usage"] = json!(u.clone().into_scalar::<f32>());
                }
                if let Some(s) = &out.memory_surprise {
                    rec["ltm/avg_surprise_score"] = json!(s.clone().into_scalar::<f32>());
                }
                for (k, v) in rec.as_object().expect("object") {
                    if let Some(x) = v.as_f64()
                        && k != "step"
                    {
                        ctx.metric(k, x, Some(prog.step));
                    }
                }
                // Wall-clock numbers are events only: artifacts must be the same bytes every run.
                if let Some(o) = rec.as_object_mut() {
                    o.remove("system/tokens_per_second");
                }
                history.push(rec);
                ctx.progress(prog.step, Some(p.steps), "steps");
                // Failure signals from the seed's pre-mortem.
                let l = &prog.losses;
                if l.len() >= 100 && !alerted_slope {
                    let n = l.len().min(100);
                    let w = &l[l.len() - n..];
                    let mean_x = (n - 1) as f64 / 2.0;
                    let mean_y = w.iter().sum::<f64>() / n as f64;
                    let cov: f64 = w
                        .iter()
                        .enumerate()
                        .map(|(i, y)| (i as f64 - mean_x) * (y - mean_y))
                        .sum();
                    let var: f64 = (0..n).map(|i| (i as f64 - mean_x).powi(2)).sum();
                    if cov / var > 0.01 {
                        alerted_slope = true;
                        ctx.alert(AlertLevel::Warn, format!("loss is rising (slope {:.4}/step over the last {n} steps): diverging", cov / var));
                    }
                }
                if l.len() >= 50 && !alerted_plateau {
                    let w = &l[l.len() - 50..];
                    let mean = w.iter().sum::<f64>() / 50.0;
                    let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 50.0;
                    if var < 1e-3 && prog.step < p.steps {
                        alerted_plateau = true;
                        ctx.alert(
                            AlertLevel::Info,
                            format!(
                                "loss plateaued at {mean:.4} (variance {var:.2e} over 50 steps)"
                            ),
                        );
                    }
                }
            }
            if prog.step.is_multiple_of(p.checkpoint_every)
                || prog.step == p.steps
                || ctx.is_cancelled()
            {
                save(&model, &opt, &prog)?;
            }
            ctx.check_cancelled()?;
        }

        // Evaluation.
        let eval_model = model.valid();
        let eval_device = device.clone().inner();
        let eval_tables = Tables::new(cfg, &eval_device);
        let val_mix: BTreeMap<String, f64> = val_pool
            .categories()
            .into_iter()
            .map(|c| (c, 1.0))
            .collect();
        let val_batches: Vec<Vec<Vec<i64>>> = (0..p.val_batches.max(1))
            .map(|i| {
                val_pool.batch(
                    &mut train::rng_for(data_seed, "val", i as u64, 0),
                    p.batch_size,
                    p.seq_len,
                    &val_mix,
                    3,
                )
            })
            .collect();
        let val_loss = train::eval_loss(
            &eval_model,
            &val_batches,
            cfg.sup_steps,
            &eval_tables,
            &eval_device,
        );
        let (vx, _) = train::to_tensors(&val_batches[0], &eval_device);
        let t_inf = Instant::now();
        let infer = eval_model.infer(vx, cfg.act_threshold, p.act_max_steps, &eval_tables);
        let inference_ms = t_inf.elapsed().as_secs_f64() * 1000.0 / p.batch_size as f64;
        let halting: Vec<f64> = infer
            .halting_steps
            .iter()
            .flatten()
            .map(|s| *s as f64)
            .collect();
        let avg_halt = halting.iter().sum::<f64>() / halting.len().max(1) as f64;
        let var_halt = halting.iter().map(|h| (h - avg_halt).powi(2)).sum::<f64>()
            / halting.len().max(1) as f64;
        let (vx, vy) = train::to_tensors(&val_batches[0], &eval_device);
        let val_out = eval_model.forward_train(vx, vy, cfg.sup_steps, 0.0, &eval_tables);
        let memory_usage = val_out
            .memory_usage
            .map(|u| u.into_scalar::<f32>() as f64)
            .unwrap_or(0.0);
        // Math accuracy by greedy decoding, against always answering the most common answer.
        // Only problems as hard as the curriculum got: a foundation-only run is not marked down
        // for problems it never saw the like of.
        let max_difficulty = stages.iter().map(|s| s.max_difficulty).max().unwrap_or(3);
        let math: Vec<&Record> = val_recs
            .iter()
            .filter(|r| r.category == "math" && r.difficulty <= max_difficulty)
            .collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &math {
            *counts.entry(r.answer.as_str()).or_default() += 1;
        }
        let majority = counts
            .iter()
            .max_by_key(|(a, n)| (**n, std::cmp::Reverse(*a)))
            .map(|(a, _)| a.to_string());
        let evaluated: Vec<&&Record> = math.iter().take(p.math_eval).collect();
        let decode = |ids: &[i64]| {
            tokenizer
                .decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), true)
                .unwrap_or_default()
        };
        let decoding = train::Decoding {
            eos,
            sup_steps: cfg.sup_steps,
            max_seq: cfg.max_seq,
            tables: &eval_tables,
            device: &eval_device,
            decode: &decode,
        };
        let mut correct = 0usize;
        for (i, r) in evaluated.iter().enumerate() {
            let prompt = encode(&format!("Question: {}\nAnswer:", r.prompt));
            let prompt = prompt[..prompt.len() - 1].to_vec(); // drop eos: the answer follows
            let text = train::greedy_answer(&eval_model, prompt, 48, &decoding);
            if train::parse_answer(&text).as_deref() == Some(r.answer.as_str()) {
                correct += 1;
            }
            ctx.progress(i as u64 + 1, Some(evaluated.len() as u64), "math problems");
            ctx.check_cancelled()?;
        }
        let n_math = evaluated.len().max(1) as f64;
        let majority_hits = evaluated
            .iter()
            .filter(|r| Some(r.answer.as_str()) == majority.as_deref())
            .count();

        // Outputs.
        let out = ctx.output_dir("model")?;
        let path = out.join("model.safetensors");
        std::fs::write(&path, model_bytes(&model)?).map_err(|e| OpError::io(&path, e))?;
        let config = json!({
            "architecture": "trm-titans-mag",
            "model": cfg,
            "num_parameters": params,
            "size_category": size_category(params),
            "backend": backend,
            "special_tokens": { "pad": 0, "bos": bos, "eos": eos },
            "weights_layout": "burn: dense weights are [in, out]",
        });
        let path = out.join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json"))
            .map_err(|e| OpError::io(&path, e))?;
        std::fs::copy(&tk_path, out.join("tokenizer.json"))
            .map_err(|e| OpError::io(&tk_path, e))?;
        let hist: String = history.iter().map(|h| format!("{h}\n")).collect();
        let path = out.join("history.jsonl");
        std::fs::write(&path, hist).map_err(|e| OpError::io(&path, e))?;
        let final_loss = prog.losses.last().copied();
        let mut metrics = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            metrics.insert(k.to_string(), v);
        };
        put("train/loss", json!(final_loss));
        put("train/steps", json!(prog.step));
        put("train/rollbacks", json!(prog.rollbacks));
        put(
            "train/micro_batch_size",
            json!(prog.micro_batch.unwrap_or(first_micro)),
        );
        put("val/loss", json!(val_loss));
        put("val/perplexity", json!(val_loss.exp()));
        put("val/math_accuracy", json!(correct as f64 / n_math));
        put(
            "val/math_majority_baseline",
            json!(majority_hits as f64 / n_math),
        );
        put("val/math_evaluated", json!(evaluated.len()));
        put("val/math_max_difficulty", json!(max_difficulty));
        put("act/avg_halting_steps", json!(avg_halt));
        put(
            "act/min_halting_steps",
            json!(halting.iter().cloned().fold(f64::INFINITY, f64::min)),
        );
        put(
            "act/max_halting_steps",
            json!(halting.iter().cloned().fold(0.0, f64::max)),
        );
        put("act/halting_variance", json!(var_halt));
        put("ltm/memory_usage", json!(memory_usage));
        put("diversity/avg_halting_steps", json!(avg_halt));
        put("diversity/ltm_usage", json!(memory_usage));
        // Deterministic stand-in for inference time: block passes per token under ACT.
        let passes = avg_halt * (cfg.cycles * (cfg.n_inner + 1) * cfg.layers) as f64;
        put("diversity/inference_passes", json!(passes));
        put("final/total_params", json!(params));
        put(
            "final/model_size_mb",
            json!(params as f64 * 4.0 / (1u64 << 20) as f64),
        );
        let path = out.join("metrics.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&metrics).expect("json"))
            .map_err(|e| OpError::io(&path, e))?;
        // Timings go to the step's recorded metrics (forge show), not into the artifact.
        metrics.insert("diversity/inference_time_ms".into(), json!(inference_ms));
        metrics.insert(
            "system/tokens_per_second".into(),
            json!(tokens_seen as f64 / t0.elapsed().as_secs_f64().max(1e-9)),
        );
        Ok(StepOutcome { metrics })
    }
}
