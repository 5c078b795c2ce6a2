//! `bake`: Phase 3's first step — give a model the twelve thinking tokens and teach it to use
//! them. The input `model` (e.g. the EvoMerge champion) gets a tokenizer with the tokens
//! registered as special tokens at their reserved ids 3–14 and embedding rows initialised as
//! Quiet-STaR does ([`crate::bake::tokens`]); then `method: sft` trains it on reasoning traces
//! (`data`, e.g. `builtin:reasoning`) with the `lm` objective on the trace and answer tokens only
//! (the question is context, not a target), with Muon × Grokfast's `phase3-baking` preset by
//! default. Checkpoints and resume are the training loop's ([`crate::train::trainer`]).
//!
//! The step reports the seed's `baking/*` metrics ([`crate::bake::eval`]): structure accuracy per
//! strategy by greedy decoding on test-split prompts, answer accuracy beside the input model's,
//! token usage, and the held-out loss. Outputs: a `model` artifact with the extended
//! `tokenizer.json` and `config.json` listing the thinking tokens.
//!
//! `method: prompt` is prompt baking (Bhargava et al., 2024): a frozen copy of the extended input
//! model reading `prompt:` and then a row of the data is the teacher; the model, reading the row
//! alone, learns the teacher's next-token distributions ([`crate::train::PromptBake`]). The step
//! reports the KL on held-out rows before and after (`baking/prompt_kl_before`, `…_after`).
//! Both methods report `baking/weight_change_rms`, how far the weights moved.

use burn::module::Module;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::artifact::{ArtifactKind, InputSignature, InputSpec, OutputSpec, StepInputs};
use crate::bake::{eval as bake_eval, model as bake_model, tokens};
use crate::context::StepContext;
use crate::data::{Corpus, Sampler, Stage};
use crate::device;
use crate::error::{OpError, ParamsError};
use crate::merge::tensors::StateDict;
use crate::model::files::{self, ModelFiles};
use crate::model::{Tables, weights};
use crate::op::{StepOutcome, TypedOp, expand_preset};
use crate::optim::OptimizerConfig;
use crate::train::{Lm, LoopConfig, Objective, PromptBake, Run, Targets, Trained};

/// How `bake` teaches the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BakeMethod {
    /// Supervised training on the traces (the seed's step 1).
    #[default]
    Sft,
    /// Prompt baking: the model without `prompt` learns to predict as it did with it.
    Prompt,
}

/// Parameters of `bake`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BakeParams {
    #[serde(default)]
    pub method: BakeMethod,
    /// The text baked in by `method: prompt` (the teacher reads it before every row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Muon × Grokfast settings (default: the seed's `phase3-baking` preset: lr 1e-4, λ 0.2,
    /// τ 30, KL 0).
    #[serde(default = "d::optimizer")]
    pub optimizer: OptimizerConfig,
    /// Optimizer steps.
    #[serde(default = "d::steps")]
    pub steps: u64,
    /// Rows per optimizer step (packed records).
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Tokens per row (records are packed into rows of this length).
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    /// Linear warm-up steps (default: 5% of `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// Cosine decay floor as a fraction of the peak learning rate.
    #[serde(default = "d::min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Save a resumable checkpoint every this many optimizer steps (and at the end).
    #[serde(default = "d::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Record a row of the training history (loss, learning rate, …) every this many steps.
    #[serde(default = "d::log_every")]
    pub log_every: u64,
    /// Test-split prompts per strategy answered by greedy decoding for the `baking/*` accuracies.
    #[serde(default = "d::eval_per_strategy")]
    pub eval_per_strategy: usize,
    /// Longest generated answer, in tokens.
    #[serde(default = "d::max_new_tokens")]
    pub max_new_tokens: usize,
    /// Held-out records scored for `baking/val_loss`.
    #[serde(default = "d::eval_records")]
    pub eval_records: usize,
}

mod d {
    use crate::optim::OptimizerConfig;
    pub fn optimizer() -> OptimizerConfig {
        OptimizerConfig::preset("phase3-baking").expect("a preset")
    }
    pub fn steps() -> u64 {
        200
    }
    pub fn batch_size() -> usize {
        8
    }
    pub fn seq_len() -> usize {
        128
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
    pub fn eval_per_strategy() -> usize {
        20
    }
    pub fn max_new_tokens() -> usize {
        96
    }
    pub fn eval_records() -> usize {
        100
    }
}

pub struct Bake;

impl TypedOp for Bake {
    type Params = BakeParams;
    const NAME: &'static str = "bake";
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Add the twelve thinking tokens to a model and bake reasoning traces into it (Phase 3)";

    fn prepare_raw(&self, mut raw: Value) -> Result<Value, ParamsError> {
        expand_preset(
            &mut raw,
            "optimizer",
            |n| OptimizerConfig::preset(n).map(|c| serde_json::to_value(c).expect("config")),
            "phase1, phase3-baking, phase3-rl",
        )?;
        Ok(raw)
    }

    fn check(&self, p: &BakeParams) -> Result<(), ParamsError> {
        if let Some(problem) = p.optimizer.problems().into_iter().next() {
            return Err(ParamsError::at(&["optimizer"], problem));
        }
        if p.optimizer.kl_coef > 0.0 {
            return Err(ParamsError::at(
                &["optimizer", "kl_coef"],
                "`bake` has no reference model for a KL term (prompt baking's KL is its loss)",
            )
            .with_hint("set kl_coef: 0 (the phase3-baking preset does)"));
        }
        match (p.method, &p.prompt) {
            (BakeMethod::Prompt, None) => {
                return Err(ParamsError::at(
                    &["prompt"],
                    "`method: prompt` needs the `prompt:` text to bake in",
                )
                .with_hint(
                    "e.g. prompt: \"Think step by step.\" (an empty string bakes nothing)",
                ));
            }
            (BakeMethod::Sft, Some(_)) => {
                return Err(ParamsError::at(
                    &["prompt"],
                    "`prompt:` is baked only by `method: prompt`",
                )
                .with_hint("add `method: prompt`, or remove `prompt:`"));
            }
            _ => {}
        }
        let positive = [
            ("batch_size", p.batch_size as u64),
            ("seq_len", p.seq_len as u64),
            ("checkpoint_every", p.checkpoint_every),
            ("log_every", p.log_every),
            ("max_new_tokens", p.max_new_tokens as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ParamsError::at(&[name], format!("{name} must be positive")));
        }
        Ok(())
    }

    fn inputs(&self, _p: &BakeParams) -> InputSignature {
        InputSignature::Fixed(vec![
            InputSpec::one("model", &[ArtifactKind::Model]),
            InputSpec::many("data", &[ArtifactKind::Dataset]),
        ])
    }

    fn outputs(&self, _p: &BakeParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "model".into(),
            kind: ArtifactKind::Model,
        }]
    }

    fn metrics(&self, _p: &BakeParams) -> Option<Vec<String>> {
        let own = [
            "baking/loss",
            "baking/weight_change_rms",
            "baking/prompt_kl_before",
            "baking/prompt_kl_after",
            "baking/tokens_added",
            "baking/params_added",
            "baking/params_initialised",
            "final/total_params",
        ];
        Some(
            own.iter()
                .chain(crate::train::trainer::TRAINED_METRICS)
                .chain(bake_eval::METRICS)
                .map(|m| (*m).to_string())
                .collect(),
        )
    }

    fn backend_class(&self, _p: &BakeParams, device: &str) -> Option<String> {
        Some(device::key_class(device))
    }

    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        p: &BakeParams,
    ) -> Result<StepOutcome, OpError> {
        let backend = device::resolve(ctx.device()).map_err(|e| OpError::user(e.to_string()))?;
        let dev = &backend.device;
        let input = &inputs["model"][0];
        let x = bake_model::extend(&input.path, &input.from_step)?;
        let (cfg, codec) = (&x.cfg, &x.codec);
        if p.seq_len > cfg.max_seq {
            return Err(OpError::user(format!(
                "seq_len {} exceeds the model's max_seq {}",
                p.seq_len, cfg.max_seq
            )));
        }
        ctx.log(format!(
            "12 thinking tokens at ids 3–14; {} parameters initialised from `{}` (ids {:?}) and the mean embedding",
            x.rows.params_initialised,
            tokens::PAUSE_TEXT,
            x.rows.pause_ids
        ));
        let corpus = Corpus::load(&inputs["data"], |t| codec.encode(t))?;
        let stages = [Stage {
            until: 1.0,
            max_difficulty: 3,
            mix: None,
        }];
        let curriculum = corpus.curriculum(&stages, None, p.steps)?;
        let seed = ctx.seed();
        let sampler = Sampler {
            pool: &corpus.pool,
            curriculum: &curriculum,
            seed,
            rows: p.batch_size,
            seq: p.seq_len,
        };
        let tables = Tables::new(cfg, dev);
        let load = |bytes: &[u8], what: &str, dev: &burn::tensor::Device| {
            weights::model_from(cfg, bytes.to_vec(), what, dev)
                .map_err(|e| OpError::user(e.to_string()))
        };
        let lm = Lm {
            targets: Targets::FromToken {
                bos: codec.bos,
                start: tokens::FIRST_ID as i64,
            },
            sup_steps: cfg.sup_steps,
            act_weight: cfg.act_weight,
            tables: &tables,
            device: dev,
            reference: None,
        };
        let prompt = prompt_ids(codec, p.prompt.as_deref().unwrap_or_default());
        if p.method == BakeMethod::Prompt && prompt.len() + p.seq_len > cfg.max_seq {
            return Err(OpError::user(format!(
                "the prompt ({} tokens) and seq_len {} exceed the model's max_seq {}",
                prompt.len(),
                p.seq_len,
                cfg.max_seq
            )));
        }
        let teacher = match p.method {
            BakeMethod::Prompt => Some(load(&x.start, "the teacher", dev)?.valid()),
            BakeMethod::Sft => None,
        };
        let baking = teacher.as_ref().map(|teacher| PromptBake {
            teacher,
            prompt: &prompt,
            sup_steps: cfg.sup_steps,
            tables: &tables,
            device: dev,
        });
        let objective: &dyn Objective = match &baking {
            Some(b) => b,
            None => &lm,
        };
        let start = || {
            load(
                &x.start,
                &format!("the model from {}", input.from_step),
                dev,
            )
        };
        let run = Run {
            ctx,
            model: cfg,
            optimizer: &p.optimizer,
            settings: &p.loop_config(),
            device: dev,
            monitor: None,
        };
        let trained = run.train(&start, &sampler, objective)?;
        let baked = trained.eval_model();
        let weights = trained.weights()?;
        let mut measured = vec![(
            "baking/weight_change_rms".to_string(),
            json!(weight_change_rms(&x.start, &weights)?),
        )];
        if let Some(b) = &baking {
            let held_out = prompt_rows(&corpus, codec, p);
            // The teacher is the model as baking started, so it is also the "before".
            let before = b.kl(b.teacher, &held_out);
            let after = b.kl(&baked, &held_out);
            ctx.log(format!(
                "prompt baked: KL(teacher with prompt ‖ model without) on {} held-out rows {before:.4} → {after:.4} nats/token",
                held_out.len()
            ));
            measured.extend([
                ("baking/prompt_kl_before".to_string(), json!(before)),
                ("baking/prompt_kl_after".to_string(), json!(after)),
            ]);
        }

        // Measured on held-out traces: the baked model, and the input model as it came.
        let eval_dev = dev.clone().inner();
        let unbaked = load(&x.original, "the input model", &eval_dev)?;
        let settings = bake_eval::Settings {
            per_strategy: p.eval_per_strategy,
            max_new_tokens: p.max_new_tokens,
            batch: p.batch_size.max(16),
            val_records: p.eval_records,
            seq_len: p.seq_len,
        };
        measured.extend(bake_eval::report(
            ctx, &baked, &unbaked, cfg, codec, &corpus, &settings, &eval_dev,
        )?);
        write_model(ctx, &x, &trained, weights, measured, backend.class)
    }
}

/// The prompt's ids as the teacher reads them: `<s>` and the text (no end token); none for an
/// empty prompt, so that baking it compares the model with itself.
fn prompt_ids(codec: &crate::text::TextCodec, prompt: &str) -> Vec<i64> {
    if prompt.is_empty() {
        return Vec::new();
    }
    let mut ids = codec.encode(prompt);
    ids.pop();
    ids
}

/// Held-out rows the prompt's KL is measured on: validation records packed end to end into
/// `eval_records` rows of `seq_len + 1` ids, as training packs its rows.
fn prompt_rows(corpus: &Corpus, codec: &crate::text::TextCodec, p: &BakeParams) -> Vec<Vec<i64>> {
    let width = p.seq_len + 1;
    let mut ids = Vec::new();
    for r in &corpus.val {
        if ids.len() >= width * p.eval_records {
            break;
        }
        ids.extend(codec.encode(&r.text));
    }
    ids.chunks_exact(width)
        .take(p.eval_records)
        .map(<[i64]>::to_vec)
        .collect()
}

/// The root-mean-square change of every weight from `start` to `after` (safetensors bytes).
fn weight_change_rms(start: &[u8], after: &[u8]) -> Result<f64, OpError> {
    let read = |b: &[u8]| StateDict::from_bytes(b).map_err(|e| OpError::internal(e.to_string()));
    let (a, b) = (read(start)?, read(after)?);
    if !a.same_layout(&b) {
        return Err(OpError::internal("baking changed the model's tensors"));
    }
    // Summed tensor by tensor, in name order.
    let sum: f64 = a
        .tensors
        .values()
        .zip(b.tensors.values())
        .map(|(x, y)| {
            x.data
                .iter()
                .zip(&y.data)
                .map(|(x, y)| f64::from(y - x).powi(2))
                .sum::<f64>()
        })
        .sum();
    Ok((sum / a.numel().max(1) as f64).sqrt())
}

/// The `model` artifact: weights, the extended tokenizer, config, metrics, history.
fn write_model(
    ctx: &StepContext,
    x: &bake_model::Extended,
    trained: &Trained,
    weights: Vec<u8>,
    measured: Vec<(String, Value)>,
    backend: &str,
) -> Result<StepOutcome, OpError> {
    let params = trained.model.num_params();
    let mut metrics = trained.metrics();
    metrics.extend([
        ("baking/loss".to_string(), json!(trained.final_loss)),
        ("baking/tokens_added".to_string(), json!(x.tokens_added)),
        // The ids were reserved when the tokenizer was trained, so this is 0 for forge models.
        (
            "baking/params_added".to_string(),
            json!(params as i64 - x.input_params as i64),
        ),
        (
            "baking/params_initialised".to_string(),
            json!(x.rows.params_initialised),
        ),
        ("final/total_params".to_string(), json!(params)),
    ]);
    metrics.extend(measured);
    let config = bake_model::config(&x.cfg, params, backend, &x.codec);
    let tokenizer = x
        .codec
        .tokenizer
        .to_string(true)
        .map_err(|e| OpError::internal(e.to_string()))?;
    files::write(
        &ctx.output_dir("model")?,
        &ModelFiles {
            weights: Some(&weights),
            config: &config,
            tokenizer: None,
            metrics: &metrics,
            extra: &[
                ("tokenizer.json", tokenizer.into_bytes()),
                ("history.jsonl", trained.history_jsonl()),
            ],
        },
    )?;
    Ok(StepOutcome { metrics })
}

impl BakeParams {
    fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            grad_accum: 1,
            warmup_steps: self.warmup_steps.unwrap_or(self.steps / 20),
            min_lr_ratio: self.min_lr_ratio,
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            memory_budget_mib: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

    #[test]
    fn the_baking_preset_is_the_default_and_a_kl_term_is_refused() {
        let p = Bake.parse_params(&json!({})).unwrap();
        let typed = p.typed::<BakeParams>().unwrap();
        assert_eq!(
            typed.optimizer,
            OptimizerConfig::preset("phase3-baking").unwrap()
        );
        let e = Bake
            .parse_params(&json!({ "optimizer": { "preset": "phase3-rl" } }))
            .unwrap_err();
        assert_eq!(e.path, ["optimizer", "kl_coef"]);
        let e = Bake
            .parse_params(&json!({ "method": "prompt" }))
            .unwrap_err();
        assert_eq!(e.path, ["prompt"]);
        let e = Bake.parse_params(&json!({ "prompt": "x" })).unwrap_err();
        assert_eq!(e.path, ["prompt"]);
        assert!(
            Bake.parse_params(&json!({ "method": "prompt", "prompt": "" }))
                .is_ok()
        );
    }
}
