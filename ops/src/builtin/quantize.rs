//! `quantize`: Phase 4 — BitNet b1.58 ternary weights ([`crate::quant`]). The input `model` is
//! quantized layer by layer on calibration data (validation split of `data`), reverting a layer
//! whose perplexity increase passes `max_layer_drop`; when the whole model's calibration
//! perplexity increase still passes `max_perplexity_increase`, the seed's conservative fallback
//! reverts the accepted layers that cost most, one at a time, until it does not. The output is a
//! `quantized-model` artifact (packed weights, `config.json` with a `quantization` block, the
//! input's tokenizer) and the seed's `evaluation/*` and `compression/*` metrics, measured on the
//! test split for the input and the quantized model alike.
//!
//! Calibration runs W1.58A8 in burn on the dequantized weights ([`ternary::in_burn`]); the
//! test-split numbers and the decoding time run the quantized model as `forge eval` and
//! `forge generate` do, its ternary layers through the packed kernel
//! ([`ternary::load_quantized`]). With `fine_tune_steps`, STE fine-tuning distilled from the
//! input comes first ([`FineTune`]) and the rollback starts from the all-ternary state it trained
//! ([`staged_tuned`]); the input quantized as it is, scored beside it, is its control.

use std::collections::BTreeSet;
use std::time::Instant;

use burn::module::Module;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::artifact::{ArtifactKind, InputSignature, InputSpec, OutputSpec, StepInputs};
use crate::context::StepContext;
use crate::data::{Corpus, Sampler, Stage};
use crate::device;
use crate::error::{OpError, ParamsError};
use crate::eval::fitness::EvalData;
use crate::eval::{Decoding, eval_batches, greedy_ids, score, score_until};
use crate::merge::tensors::StateDict;
use crate::model::files::{self, ModelFiles};
use crate::model::{ModelConfig, Tables, TrmTitansMag, ternary, weights};
use crate::op::{StepOutcome, TypedOp};
use crate::optim::OptimizerConfig;
use crate::quant::model::{
    Precision, Preserve, QuantizedModel, Stored, becomes_ternary, default_preserve, pattern_problem,
};
use crate::quant::staged::{Tuned, fall_back, staged, staged_tuned};
use crate::text::TextCodec;
use crate::train::{Lm, LoopConfig, Reference, Run, Targets, Trained, ste};

/// The quantization method (only BitNet b1.58's absmean ternary weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum QuantMethod {
    #[default]
    #[serde(rename = "bitnet-b1.58")]
    BitnetB158,
}

/// Parameters of `quantize`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    #[serde(default)]
    pub method: QuantMethod,
    /// Tensors that keep a higher precision, by name pattern (first match wins; default: the
    /// seed's tiny-model choice — the embedding and an untied head in f16, the norms in f32).
    #[serde(default = "default_preserve")]
    pub preserve: Vec<Preserve>,
    /// The precision of a layer the layer-by-layer pass reverts.
    #[serde(default = "d::revert_precision")]
    pub revert_precision: Precision,
    /// Validation records scored after each layer.
    #[serde(default = "d::calibration_samples")]
    pub calibration_samples: usize,
    /// Largest relative perplexity increase one layer may cause (0.1: +10%) before it is reverted.
    #[serde(default = "d::max_layer_drop")]
    pub max_layer_drop: f64,
    /// Largest relative calibration perplexity increase of the whole model before the
    /// conservative fallback reverts more layers.
    #[serde(default = "d::max_perplexity_increase")]
    pub max_perplexity_increase: f64,
    /// Test records scored for the `evaluation/*` numbers (perplexity and answers).
    #[serde(default = "d::eval_records")]
    pub eval_records: usize,
    /// Tokens per scored row.
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    /// Rows scored per forward pass.
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Tokens greedily decoded per prompt to time inference.
    #[serde(default = "d::timing_tokens")]
    pub timing_tokens: usize,
    /// Steps of STE fine-tuning (quantization-aware training) before the layer-by-layer pass;
    /// 0 quantizes the input as it is (post-training quantization).
    #[serde(default)]
    pub fine_tune_steps: u64,
    /// How the fine-tuning trains (used when `fine_tune_steps` > 0).
    #[serde(default)]
    pub fine_tune: FineTune,
}

/// STE fine-tuning: the model trains through its W1.58A8 forward pass ([`ste`]) on the training
/// split of `data`, the latent full-precision weights taking the gradient, minimising
/// `distill` × KL(input model ‖ ternary model) — distillation from the unquantized input, the
/// usual way to convert a trained model to ternary — plus `cross_entropy` × the data's loss.
/// The seed's learning rate (1e-5) moves a weight too little to cross a rounding threshold
/// (γ/2 ≈ half the mean |w|) in a few hundred steps; the default takes the Phase-1 optimizer
/// with Grokfast off (a short run has no slow gradient to amplify).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FineTune {
    /// Rows per optimizer step.
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Tokens per row.
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    /// Weight of KL(input ‖ ternary model) (0: cross-entropy alone).
    #[serde(default = "d::distill")]
    pub distill: f64,
    /// Weight of the cross-entropy on the data (with the ACT halting loss) beside the KL. The
    /// default 0 is distillation alone: the ternary model learns to predict what the input
    /// predicts, so what it gains is recovered quality, not extra training on the data's labels
    /// (with 1 it also trains on them, and a better score would mix both).
    #[serde(default)]
    pub cross_entropy: f64,
    /// Optimizer settings (default: the Phase-1 preset with Grokfast off).
    #[serde(default = "d::optimizer")]
    pub optimizer: OptimizerConfig,
    /// Linear warm-up steps (default: 5% of the steps).
    #[serde(default)]
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
}

impl Default for FineTune {
    fn default() -> Self {
        serde_json::from_value(json!({})).expect("defaults")
    }
}

mod d {
    use crate::quant::model::Precision;
    pub fn revert_precision() -> Precision {
        Precision::F16
    }
    pub fn calibration_samples() -> usize {
        64
    }
    pub fn max_layer_drop() -> f64 {
        0.10
    }
    pub fn max_perplexity_increase() -> f64 {
        0.25
    }
    pub fn eval_records() -> usize {
        200
    }
    pub fn seq_len() -> usize {
        128
    }
    pub fn batch_size() -> usize {
        8
    }
    pub fn timing_tokens() -> usize {
        32
    }
    pub fn distill() -> f64 {
        1.0
    }
    pub fn optimizer() -> super::OptimizerConfig {
        super::OptimizerConfig {
            grokfast_lambda: 0.0,
            kl_coef: 0.0,
            preset: None,
            ..super::OptimizerConfig::preset("phase1").expect("a preset")
        }
    }
    pub fn min_lr_ratio() -> f64 {
        0.1
    }
    pub fn checkpoint_every() -> u64 {
        25
    }
    pub fn log_every() -> u64 {
        5
    }
}

/// The metrics `quantize` writes (per-layer ones as patterns).
pub const METRICS: &[&str] = &[
    "evaluation/accuracy_before",
    "evaluation/accuracy_after",
    "evaluation/accuracy_drop",
    "evaluation/accuracy_drop_percent",
    "evaluation/answers",
    "evaluation/perplexity_before",
    "evaluation/perplexity_after",
    "evaluation/perplexity_increase",
    "evaluation/tokens",
    "evaluation/inference_time_before_ms",
    "evaluation/inference_time_after_ms",
    "evaluation/inference_speedup",
    "evaluation/model_size_before_mb",
    "evaluation/model_size_after_mb",
    "evaluation/compression_ratio",
    "evaluation/sparsity_overall",
    "evaluation/zero_params",
    "evaluation/nonzero_params",
    "evaluation/calibration_perplexity_before",
    "evaluation/calibration_perplexity_after",
    "evaluation/reverted_layers",
    "evaluation/fallback_reverted_layers",
    "compression/quantized_params",
    "compression/preserved_params",
    "compression/*/original_params",
    "compression/*/quantized_params",
    "compression/*/preserved_params",
    "compression/*/sparsity",
    "compression/*/compression_ratio",
    "compression/*/perplexity_increase",
    "compression/*/reverted",
    "finetune/steps",
    "finetune/epoch",
    "finetune/loss",
    "finetune/accuracy",
    "finetune/perplexity",
    "finetune/ptq_accuracy",
    "finetune/ptq_perplexity",
    "finetune/accuracy_recovery",
    "train/loss",
    "train/perplexity",
    "train/learning_rate",
    "train/gradient_norm",
    "train/kl_divergence",
    "system/tokens_per_second",
    "final/compression_ratio",
    "final/model_size_mb",
    "final/sparsity",
    "final/perplexity",
    "final/accuracy",
];

pub struct Quantize;

impl TypedOp for Quantize {
    type Params = QuantizeParams;
    const NAME: &'static str = "quantize";
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Quantize a model to BitNet b1.58 ternary weights, layer by layer with rollback (Phase 4)";

    fn check(&self, p: &QuantizeParams) -> Result<(), ParamsError> {
        for (i, pr) in p.preserve.iter().enumerate() {
            if let Some(problem) = pattern_problem(&pr.pattern) {
                return Err(ParamsError::at(
                    &["preserve", &i.to_string(), "pattern"],
                    format!("`{}` is not a pattern: {problem}", pr.pattern),
                ));
            }
        }
        for (name, v) in [
            ("max_layer_drop", p.max_layer_drop),
            ("max_perplexity_increase", p.max_perplexity_increase),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(ParamsError::at(
                    &[name],
                    format!("{name} must be a non-negative number"),
                ));
            }
        }
        let positive = [
            ("calibration_samples", p.calibration_samples),
            ("eval_records", p.eval_records),
            ("seq_len", p.seq_len),
            ("batch_size", p.batch_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ParamsError::at(&[name], format!("{name} must be positive")));
        }
        let ft = &p.fine_tune;
        if let Some(problem) = ft.optimizer.problems().into_iter().next() {
            return Err(ParamsError::at(&["fine_tune", "optimizer"], problem));
        }
        if ft.optimizer.kl_coef > 0.0 {
            return Err(ParamsError::at(
                &["fine_tune", "optimizer", "kl_coef"],
                "the fine-tuning's KL to the input model is `fine_tune.distill`",
            )
            .with_hint("set kl_coef: 0 and distill: <weight>"));
        }
        for (name, v) in [("distill", ft.distill), ("cross_entropy", ft.cross_entropy)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(ParamsError::at(
                    &["fine_tune", name],
                    format!("{name} must be a non-negative number"),
                ));
            }
        }
        if ft.distill == 0.0 && ft.cross_entropy == 0.0 {
            return Err(ParamsError::at(
                &["fine_tune", "distill"],
                "fine-tuning with neither distillation nor cross-entropy has nothing to minimise",
            )
            .with_hint("set distill: 1 (the default), cross_entropy: 1, or both"));
        }
        for (name, v) in [
            ("batch_size", ft.batch_size as u64),
            ("seq_len", ft.seq_len as u64),
            ("checkpoint_every", ft.checkpoint_every),
            ("log_every", ft.log_every),
        ] {
            if v == 0 {
                return Err(ParamsError::at(
                    &["fine_tune", name],
                    format!("{name} must be positive"),
                ));
            }
        }
        Ok(())
    }

    fn inputs(&self, _p: &QuantizeParams) -> InputSignature {
        InputSignature::Fixed(vec![
            InputSpec::one("model", &[ArtifactKind::Model]),
            InputSpec::many("data", &[ArtifactKind::Dataset]),
        ])
    }

    fn outputs(&self, _p: &QuantizeParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "model".into(),
            kind: ArtifactKind::QuantizedModel,
        }]
    }

    fn metrics(&self, _p: &QuantizeParams) -> Option<Vec<String>> {
        Some(METRICS.iter().map(|m| (*m).to_string()).collect())
    }

    fn backend_class(&self, _p: &QuantizeParams, device: &str) -> Option<String> {
        Some(device::key_class(device))
    }

    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        p: &QuantizeParams,
    ) -> Result<StepOutcome, OpError> {
        let backend = device::resolve(ctx.device()).map_err(|e| OpError::user(e.to_string()))?;
        let dev = backend.device.inner();
        let input = &inputs["model"][0];
        let config = files::read_config(&input.path)?;
        let cfg = files::model_config(&config, &input.path)?;
        let weights_path = input.path.join("model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|e| OpError::io(&weights_path, e))?;
        let sd = StateDict::from_bytes(&bytes).map_err(|e| OpError::user(e.to_string()))?;
        let data = EvalData::load(&input.path.join("tokenizer.json"), &inputs["data"])?;
        if data.val.is_empty() || data.test.is_empty() {
            return Err(OpError::user(
                "`quantize` needs validation (calibration) and test records in `data`",
            ));
        }
        let seq = p.seq_len.min(cfg.max_seq);
        let calibration = eval_batches(
            &data.val,
            &data.codec,
            p.calibration_samples,
            seq,
            p.batch_size,
        );
        let test = eval_batches(&data.test, &data.codec, p.eval_records, seq, p.batch_size);
        let tables = Tables::new(&cfg, &dev);
        let load = |sd: &StateDict| -> Result<TrmTitansMag, OpError> {
            weights::model_from(&cfg, sd.to_bytes(), "the model", &dev)
                .map_err(|e| OpError::user(e.to_string()))
        };
        let mut failure = None;
        let mut calibrations = 0;
        // Each calibration reports progress; once cancelled (Ctrl-C), the running one stops at
        // its next batch and the rest return at once: the pass ends with the cancellation.
        let stop = || ctx.is_cancelled();
        let mut calibrate = |sd: &StateDict, ternary_names: &BTreeSet<String>| -> f64 {
            calibrations += 1;
            ctx.progress(calibrations, None, "calibrations");
            let mut m = match load(sd) {
                Ok(m) => m,
                Err(e) => {
                    failure.get_or_insert(e);
                    return f64::NAN;
                }
            };
            ternary::in_burn(&mut m, ternary_names);
            score_until(&m, &cfg, &calibration, &tables, &dev, &stop).map_or_else(
                || {
                    failure.get_or_insert_with(|| ctx.cancellation());
                    f64::NAN
                },
                |scores| scores.perplexity(),
            )
        };
        // STE fine-tuning first: the layer-by-layer pass then starts from the latent weights it
        // leaves, all candidates ternary, and reverts a layer to the input's weights.
        let tuned = if p.fine_tune_steps > 0 {
            let names: BTreeSet<String> = sd
                .tensors
                .iter()
                .filter(|(n, t)| becomes_ternary(n, &t.shape, &p.preserve))
                .map(|(n, _)| n.clone())
                .collect();
            Some(fine_tune(
                ctx,
                inputs,
                p,
                &cfg,
                &data.codec,
                &bytes,
                &names,
            )?)
        } else {
            None
        };
        let latent = match &tuned {
            Some((t, _)) => StateDict::from_bytes(&t.weights()?)
                .map_err(|e| OpError::internal(e.to_string()))?,
            None => sd.clone(),
        };
        ctx.log(format!(
            "quantizing layer by layer on {} calibration rows (a layer may raise perplexity by {:.0}%)",
            calibration.iter().map(|b| b.rows.len()).sum::<usize>(),
            p.max_layer_drop * 100.0
        ));
        let sources = tuned.as_ref().map(|_| Tuned {
            input: &sd,
            latent: &latent,
        });
        let mut s = match &sources {
            // Fine-tuned with every candidate ternary: start there, revert what costs too much.
            Some(t) => staged_tuned(
                t,
                &p.preserve,
                p.max_layer_drop,
                p.revert_precision,
                &mut calibrate,
            ),
            None => staged(
                &sd,
                &p.preserve,
                p.max_layer_drop,
                p.revert_precision,
                &mut calibrate,
            ),
        };
        // The conservative fallback: revert the accepted layers that cost most until the whole
        // model is within budget of the input model.
        let budget = s.perplexity_before * (1.0 + p.max_perplexity_increase);
        let fallback = fall_back(
            &mut s,
            &sd,
            sources.as_ref(),
            &p.preserve,
            p.revert_precision,
            budget,
            &mut calibrate,
        );
        let after = s.perplexity_after;
        if let Some(e) = failure {
            return Err(e);
        }
        for d in &s.layers {
            ctx.log(format!(
                "{}: perplexity {:.3} → {:.3} ({:+.1}%){}",
                d.layer_name,
                d.perplexity_before,
                d.perplexity_after,
                d.increase * 100.0,
                if d.reverted { ", reverted" } else { "" }
            ));
        }
        if !fallback.is_empty() {
            ctx.log(format!(
                "conservative fallback reverted {} (calibration perplexity {:.3}, budget {:.3})",
                fallback.join(", "),
                after,
                budget
            ));
        }

        // Before and after on the test split, through the same evaluation.
        let original = load(&sd)?;
        let quantized = ternary::load_quantized(&cfg, s.model.clone(), &dev)
            .map_err(|e| OpError::user(e.to_string()))?;
        ctx.check_cancelled()?;
        let m_before = score(&original, &cfg, &test, &tables, &dev);
        ctx.check_cancelled()?;
        let m_after = score(&quantized, &cfg, &test, &tables, &dev);
        ctx.check_cancelled()?;
        let time = |m: &TrmTitansMag| timing(m, &cfg, &data, p.timing_tokens, &tables, &dev);
        let (t_before, t_after) = (time(&original), time(&quantized));
        ctx.check_cancelled()?;
        // The control for fine-tuning: the input quantized as it is, the same layers reverted.
        let ptq = match &tuned {
            Some(_) => {
                let q = QuantizedModel::quantize(&sd, &p.preserve, &s.reverted, p.revert_precision);
                let m = ternary::load_quantized(&cfg, q, &dev)
                    .map_err(|e| OpError::internal(e.to_string()))?;
                Some(score(&m, &cfg, &test, &tables, &dev))
            }
            None => None,
        };

        let out_dir = ctx.output_dir("model")?;
        let packed = s.model.to_bytes();
        let mut out_config = config.clone();
        let (ternary, preserved) = s.model.counts();
        let zeros: usize = s.model.tensors.values().map(Stored::zeros).sum();
        out_config["quantization"] = json!({
            "method": "bitnet-b1.58",
            "format": crate::quant::model::FORMAT,
            "version": crate::quant::model::VERSION,
            "preserve": p.preserve,
            "reverted": s.reverted,
            "ternary_params": ternary,
            "preserved_params": preserved,
        });
        let size_before = dir_bytes(
            &input.path,
            &["model.safetensors", "config.json", "tokenizer.json"],
        )?;
        let mb = |b: u64| b as f64 / f64::from(1u32 << 20);
        let (acc_before, acc_after) = (m_before.answer_accuracy(), m_after.answer_accuracy());
        let mut metrics = Map::new();
        let mut put = |k: &str, v: Value| {
            metrics.insert(k.to_string(), v);
        };
        put("evaluation/accuracy_before", json!(acc_before));
        put("evaluation/accuracy_after", json!(acc_after));
        put("evaluation/accuracy_drop", json!(acc_before - acc_after));
        put(
            "evaluation/accuracy_drop_percent",
            json!(if acc_before > 0.0 {
                (acc_before - acc_after) / acc_before * 100.0
            } else {
                0.0
            }),
        );
        put("evaluation/answers", json!(m_after.answers.len()));
        put("evaluation/perplexity_before", json!(m_before.perplexity()));
        put("evaluation/perplexity_after", json!(m_after.perplexity()));
        put(
            "evaluation/perplexity_increase",
            json!(m_after.perplexity() / m_before.perplexity() - 1.0),
        );
        put("evaluation/tokens", json!(m_after.token_count()));
        put(
            "evaluation/sparsity_overall",
            json!(zeros as f64 / ternary.max(1) as f64),
        );
        put("evaluation/zero_params", json!(zeros));
        put(
            "evaluation/nonzero_params",
            json!(ternary + preserved - zeros),
        );
        put(
            "evaluation/calibration_perplexity_before",
            json!(s.perplexity_before),
        );
        put("evaluation/calibration_perplexity_after", json!(after));
        let reverted_layers = s.layers.iter().filter(|d| d.reverted).count();
        put("evaluation/reverted_layers", json!(reverted_layers));
        put("evaluation/fallback_reverted_layers", json!(fallback.len()));
        put("compression/quantized_params", json!(ternary));
        put("compression/preserved_params", json!(preserved));
        for d in &s.layers {
            let fell_back = fallback.contains(&d.layer_name);
            let k = |f: &str| format!("compression/{}/{f}", d.layer_name);
            let (q, kept) = if fell_back {
                (0, d.original_params)
            } else {
                (d.quantized_params, d.preserved_params)
            };
            metrics.insert(k("original_params"), json!(d.original_params));
            metrics.insert(k("quantized_params"), json!(q));
            metrics.insert(k("preserved_params"), json!(kept));
            metrics.insert(
                k("sparsity"),
                json!(if fell_back { 0.0 } else { d.sparsity }),
            );
            metrics.insert(
                k("compression_ratio"),
                json!(if fell_back {
                    d.kept_ratio
                } else {
                    d.compression_ratio
                }),
            );
            metrics.insert(k("perplexity_increase"), json!(d.increase));
            metrics.insert(k("reverted"), json!(u8::from(d.reverted || fell_back)));
        }
        if let (Some((trained, pool_rows)), Some(ptq)) = (&tuned, &ptq) {
            metrics.extend(fine_tune_metrics(
                [trained.steps as usize, p.fine_tune.batch_size, *pool_rows],
                trained.final_loss,
                [acc_before, ptq.answer_accuracy(), acc_after],
                [ptq.perplexity(), m_after.perplexity()],
            ));
            ctx.log(format!(
                "fine-tuning: test perplexity {:.3} quantized as it was → {:.3} fine-tuned (input {:.3})",
                ptq.perplexity(),
                m_after.perplexity(),
                m_before.perplexity()
            ));
        }
        let breakdown =
            serde_json::to_vec_pretty(&json!({ "layers": s.layers, "fallback": fallback }))
                .expect("json");
        let mut extra = vec![("compression.json", breakdown)];
        if let Some((trained, _)) = &tuned {
            extra.push(("history.jsonl", trained.history_jsonl()));
        }
        // Write, then measure the files as written.
        files::write(
            &out_dir,
            &ModelFiles {
                weights: Some(&packed),
                config: &out_config,
                tokenizer: Some(&input.path.join("tokenizer.json")),
                metrics: &Map::new(),
                extra: &extra,
            },
        )?;
        let size_after = dir_bytes(
            &out_dir,
            &["model.safetensors", "config.json", "tokenizer.json"],
        )?;
        let ratio = size_before as f64 / size_after.max(1) as f64;
        metrics.insert(
            "evaluation/model_size_before_mb".into(),
            json!(mb(size_before)),
        );
        metrics.insert(
            "evaluation/model_size_after_mb".into(),
            json!(mb(size_after)),
        );
        metrics.insert("evaluation/compression_ratio".into(), json!(ratio));
        metrics.insert("final/compression_ratio".into(), json!(ratio));
        metrics.insert("final/model_size_mb".into(), json!(mb(size_after)));
        metrics.insert(
            "final/sparsity".into(),
            json!(zeros as f64 / ternary.max(1) as f64),
        );
        metrics.insert("final/perplexity".into(), json!(m_after.perplexity()));
        metrics.insert("final/accuracy".into(), json!(acc_after));
        files::write_file(
            &out_dir.join("metrics.json"),
            &serde_json::to_vec_pretty(&Value::Object(metrics.clone())).expect("json"),
        )?;
        // Wall-clock numbers go to the step's record, never into the artifact (same bytes on
        // every run).
        metrics.insert(
            "evaluation/inference_time_before_ms".into(),
            json!(t_before),
        );
        metrics.insert("evaluation/inference_time_after_ms".into(), json!(t_after));
        metrics.insert(
            "evaluation/inference_speedup".into(),
            json!(t_before / t_after.max(1e-9)),
        );
        Ok(StepOutcome { metrics })
    }
}

/// STE fine-tuning of the input (`input_bytes`) with the tensors in `names` ternary, as
/// [`FineTune`] describes; checkpointed and resumed like `train`. The run and the number of
/// training rows it samples from.
fn fine_tune(
    ctx: &StepContext,
    inputs: &StepInputs,
    p: &QuantizeParams,
    cfg: &ModelConfig,
    codec: &TextCodec,
    input_bytes: &[u8],
    names: &BTreeSet<String>,
) -> Result<(Trained, usize), OpError> {
    let ft = &p.fine_tune;
    if ft.seq_len > cfg.max_seq {
        return Err(OpError::user(format!(
            "fine_tune.seq_len {} exceeds the model's max_seq {}",
            ft.seq_len, cfg.max_seq
        )));
    }
    let backend = device::resolve(ctx.device()).map_err(|e| OpError::user(e.to_string()))?;
    let dev = &backend.device;
    let corpus = Corpus::load(&inputs["data"], |t| codec.encode(t))?;
    let stages = [Stage {
        until: 1.0,
        max_difficulty: 3,
        mix: None,
    }];
    let curriculum = corpus.curriculum(&stages, None, p.fine_tune_steps)?;
    let seed = ctx.seed();
    let sampler = Sampler {
        pool: &corpus.pool,
        curriculum: &curriculum,
        seed,
        rows: ft.batch_size,
        seq: ft.seq_len,
    };
    let tables = Tables::new(cfg, dev);
    let load = |what: &str| {
        weights::model_from(cfg, input_bytes.to_vec(), what, dev)
            .map_err(|e| OpError::user(e.to_string()))
    };
    let teacher = load("the input model")?.valid();
    let lm = Lm {
        targets: Targets::All,
        sup_steps: cfg.sup_steps,
        act_weight: cfg.act_weight,
        tables: &tables,
        device: dev,
        reference: (ft.distill > 0.0).then_some(Reference {
            model: &teacher,
            kl_coef: ft.distill,
            data_weight: ft.cross_entropy,
        }),
    };
    // Only the ternary layers learn, so a layer reverted afterwards is the input's exactly.
    let objective = ste::Ternary {
        inner: &lm,
        names,
        train_others: false,
    };
    let settings = LoopConfig {
        steps: p.fine_tune_steps,
        batch_size: ft.batch_size,
        seq_len: ft.seq_len,
        grad_accum: 1,
        warmup_steps: ft.warmup_steps.unwrap_or(p.fine_tune_steps / 20),
        min_lr_ratio: ft.min_lr_ratio,
        checkpoint_every: ft.checkpoint_every,
        log_every: ft.log_every,
        memory_budget_mib: None,
    };
    ctx.log(format!(
        "STE fine-tuning {} ternary tensors for {} steps (distill {}, cross-entropy {})",
        names.len(),
        p.fine_tune_steps,
        ft.distill,
        ft.cross_entropy
    ));
    let run = Run {
        ctx,
        model: cfg,
        optimizer: &ft.optimizer,
        settings: &settings,
        device: dev,
        monitor: None,
    };
    let trained = run.train(&|| load("the input model"), &sampler, &objective)?;
    Ok((trained, corpus.pool.tokens.len()))
}

/// Total bytes of the named files in `dir`.
fn dir_bytes(dir: &std::path::Path, names: &[&str]) -> Result<u64, OpError> {
    names.iter().try_fold(0u64, |acc, n| {
        let path = dir.join(n);
        let len = std::fs::metadata(&path)
            .map_err(|e| OpError::io(&path, e))?
            .len();
        Ok(acc + len)
    })
}

/// Milliseconds per token of greedy decoding (incremental, under ACT) of up to 4 test prompts.
fn timing(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    data: &EvalData,
    tokens: usize,
    tables: &Tables,
    device: &burn::tensor::Device,
) -> f64 {
    let decode = |ids: &[i64]| data.codec.decode(ids);
    let d = Decoding {
        cfg,
        eos: -1, // never stop early: every prompt decodes `tokens` tokens
        tables,
        device,
        decode: &decode,
    };
    let prompts: Vec<Vec<i64>> = data
        .test
        .iter()
        .take(4)
        .map(|r| {
            let mut ids = data.codec.encode(&r.prompt);
            ids.pop();
            ids.truncate(cfg.max_seq.saturating_sub(tokens + 1).max(1));
            ids
        })
        .collect();
    let t0 = Instant::now();
    let mut n = 0usize;
    for p in &prompts {
        n += greedy_ids(model, p.clone(), tokens, &d, &|_| false).len();
    }
    t0.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64
}

/// `finetune/*`: what STE fine-tuning did beside its control, the input quantized as it is with
/// the same layers reverted. `accuracy` is `[input, as-is, fine-tuned]`, `perplexity` `[as-is,
/// fine-tuned]`; `epoch` is the passes over the training rows: `[steps, batch size, rows]` gives
/// steps × batch size / rows.
fn fine_tune_metrics(
    [steps, batch_size, rows]: [usize; 3],
    loss: Option<f64>,
    accuracy: [f64; 3],
    perplexity: [f64; 2],
) -> Map<String, Value> {
    let [before, as_is, after] = accuracy;
    let mut m = Map::new();
    m.insert("finetune/steps".into(), json!(steps));
    m.insert(
        "finetune/epoch".into(),
        json!((steps * batch_size) as f64 / rows.max(1) as f64),
    );
    m.insert("finetune/loss".into(), json!(loss));
    m.insert("finetune/accuracy".into(), json!(after));
    m.insert("finetune/perplexity".into(), json!(perplexity[1]));
    m.insert("finetune/ptq_accuracy".into(), json!(as_is));
    m.insert("finetune/ptq_perplexity".into(), json!(perplexity[0]));
    // The share of the accuracy quantization lost that fine-tuning won back (only defined when
    // quantizing as it is lost some).
    if before > as_is {
        m.insert(
            "finetune/accuracy_recovery".into(),
            json!((after - as_is) / (before - as_is)),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `finetune/accuracy_recovery` is 0 when fine-tuning won nothing back, 1 when it won back
    /// everything quantizing lost, moves with the fine-tuned accuracy and only with what it is
    /// measured against, and is absent when quantizing as is lost nothing; `finetune/epoch` counts
    /// passes over the training rows and moves with nothing else.
    #[test]
    fn fine_tune_metrics_measure_what_they_say() {
        let recovery = |acc: [f64; 3]| {
            fine_tune_metrics([10, 8, 160], Some(1.0), acc, [9.0, 8.0])
                .get("finetune/accuracy_recovery")
                .and_then(Value::as_f64)
        };
        assert_eq!(recovery([0.5, 0.3, 0.3]), Some(0.0));
        assert_eq!(recovery([0.5, 0.3, 0.5]), Some(1.0));
        assert!((recovery([0.5, 0.3, 0.4]).unwrap() - 0.5).abs() < 1e-12);
        assert!(
            recovery([0.5, 0.3, 0.2]).unwrap() < 0.0,
            "fine-tuning can lose more"
        );
        assert_eq!(recovery([0.5, 0.5, 0.6]), None);
        assert_eq!(recovery([0.4, 0.5, 0.6]), None);
        let epoch =
            |sizes, acc| fine_tune_metrics(sizes, None, acc, [9.0, 8.0])["finetune/epoch"].as_f64();
        // 10 steps of 8 rows over 320 rows: a quarter of a pass.
        assert_eq!(epoch([10, 8, 320], [0.5, 0.3, 0.4]), Some(0.25));
        assert_eq!(epoch([10, 8, 320], [0.9, 0.1, 0.2]), Some(0.25));
        assert_eq!(epoch([20, 8, 320], [0.5, 0.3, 0.4]), Some(0.5));
        assert_eq!(epoch([10, 16, 320], [0.5, 0.3, 0.4]), Some(0.5));
        assert_eq!(epoch([10, 8, 80], [0.5, 0.3, 0.4]), Some(1.0));
    }

    #[test]
    fn defaults_are_the_seeds_and_bad_patterns_are_refused() {
        let p: QuantizeParams = serde_json::from_value(json!({})).unwrap();
        assert_eq!(p.method, QuantMethod::BitnetB158);
        assert_eq!(p.preserve, default_preserve());
        assert!(Quantize.check(&p).is_ok());
        let bad: QuantizeParams =
            serde_json::from_value(json!({ "preserve": [{ "pattern": "[", "precision": "f16" }] }))
                .unwrap();
        let err = Quantize.check(&bad).unwrap_err();
        assert!(err.message.contains("not a pattern"), "{err:?}");
        assert_eq!(err.path, ["preserve", "0", "pattern"]);
        let unknown = serde_json::from_value::<QuantizeParams>(json!({ "method": "gptq" }));
        assert!(unknown.is_err());
    }
}
