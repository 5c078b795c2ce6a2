//! `quantize`: Phase 4 — BitNet b1.58 ternary weights ([`crate::quant`]). The input `model` is
//! quantized layer by layer on calibration data (validation split of `data`), reverting a layer
//! whose perplexity increase passes `max_layer_drop`; when the whole model's calibration
//! perplexity increase still passes `max_perplexity_increase`, the seed's conservative fallback
//! reverts the accepted layers that cost most, one at a time, until it does not. The output is a
//! `quantized-model` artifact (packed weights, `config.json` with a `quantization` block, the
//! input's tokenizer) and the seed's `evaluation/*` and `compression/*` metrics, measured on the
//! test split for the input and the quantized model alike.
//!
//! Calibration runs W1.58A8 in burn on the dequantized weights ([`ternary::simulate`]); the
//! test-split numbers and the decoding time run the quantized model as `forge eval` and
//! `forge generate` do, its ternary layers through the packed kernel
//! ([`ternary::load_quantized`]). Not yet here (issue 13): STE fine-tuning.

use std::collections::BTreeSet;
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::artifact::{ArtifactKind, InputSignature, InputSpec, OutputSpec, StepInputs};
use crate::context::StepContext;
use crate::device;
use crate::error::{OpError, ParamsError};
use crate::eval::fitness::EvalData;
use crate::eval::{Decoding, eval_batches, greedy_ids, score};
use crate::merge::tensors::StateDict;
use crate::model::files::{self, ModelFiles};
use crate::model::{ModelConfig, Tables, TrmTitansMag, ternary, weights};
use crate::op::{StepOutcome, TypedOp};
use crate::quant::model::{Precision, Preserve, Stored, default_preserve, pattern_problem};
use crate::quant::staged::{fall_back, staged};

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
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Tokens greedily decoded per prompt to time inference.
    #[serde(default = "d::timing_tokens")]
    pub timing_tokens: usize,
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
    const VERSION: u32 = 1;
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
            weights::model_from(&cfg, 0, sd.to_bytes(), "the model", &dev)
                .map_err(|e| OpError::user(e.to_string()))
        };
        let mut failure = None;
        let mut calibrate = |sd: &StateDict, ternary_names: &BTreeSet<String>| -> f64 {
            match load(sd) {
                Ok(mut m) => {
                    ternary::simulate(&mut m, ternary_names);
                    score(&m, &cfg, &calibration, &tables, &dev).perplexity()
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    f64::NAN
                }
            }
        };
        ctx.log(format!(
            "quantizing layer by layer on {} calibration rows (a layer may raise perplexity by {:.0}%)",
            calibration.iter().map(|b| b.rows.len()).sum::<usize>(),
            p.max_layer_drop * 100.0
        ));
        let mut s = staged(
            &sd,
            &p.preserve,
            p.max_layer_drop,
            p.revert_precision,
            &mut calibrate,
        );
        // The conservative fallback: revert the accepted layers that cost most until the whole
        // model is within budget.
        let budget = s.perplexity_before * (1.0 + p.max_perplexity_increase);
        let fallback = fall_back(
            &mut s,
            &sd,
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
        let quantized = ternary::load_quantized(&cfg, &s.model, &dev)
            .map_err(|e| OpError::user(e.to_string()))?;
        let m_before = score(&original, &cfg, &test, &tables, &dev);
        let m_after = score(&quantized, &cfg, &test, &tables, &dev);
        let time = |m: &TrmTitansMag| timing(m, &cfg, &data, p.timing_tokens, &tables, &dev);
        let (t_before, t_after) = (time(&original), time(&quantized));

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
        let breakdown =
            serde_json::to_vec_pretty(&json!({ "layers": s.layers, "fallback": fallback }))
                .expect("json");
        // Write, then measure the files as written.
        files::write(
            &out_dir,
            &ModelFiles {
                weights: Some(&packed),
                config: &out_config,
                tokenizer: Some(&input.path.join("tokenizer.json")),
                metrics: &Map::new(),
                extra: &[("compression.json", breakdown)],
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

#[cfg(test)]
mod tests {
    use super::*;

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
