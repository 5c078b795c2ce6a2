//! Measuring a model, one home for every evaluation: validation loss over fixed batches, ACT
//! halting statistics, greedy decoding and answer accuracy, and the report a trained model's
//! artifact carries ([`lm_report`]). [`fitness`] scores merge candidates for the evolution.
//! `train` and `merge` call these; nothing else computes a model's quality.

pub mod fitness;

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::{Value, json};

use crate::data::Record;
use crate::error::OpError;
use crate::model::{ModelConfig, Tables, TrmTitansMag, to_tensors};
use crate::text::TextCodec;

/// Mean cross-entropy (last supervision step) over the given batches.
pub fn eval_loss(
    model: &TrmTitansMag,
    batches: &[Vec<Vec<i64>>],
    sup_steps: usize,
    t: &Tables,
    device: &Device,
) -> f64 {
    let mut total = 0.0;
    for rows in batches {
        let (x, y) = to_tensors(rows, device);
        total += model
            .forward_train(x, y, sup_steps, 0.0, t)
            .ce
            .into_scalar::<f32>() as f64;
    }
    total / batches.len().max(1) as f64
}

/// The integer after `####` in generated text.
pub fn parse_answer(text: &str) -> Option<String> {
    let rest = text.split("####").nth(1)?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// What greedy decoding needs besides the model and the prompt.
pub struct Decoding<'a> {
    pub eos: i64,
    pub sup_steps: usize,
    pub max_seq: usize,
    pub tables: &'a Tables,
    pub device: &'a Device,
    pub decode: &'a dyn Fn(&[i64]) -> String,
}

/// Greedy-decode the answer of a math prompt (stopping at eos or after the `#### n` line);
/// returns the generated text.
pub fn greedy_answer(
    model: &TrmTitansMag,
    prompt_tokens: Vec<i64>,
    max_new: usize,
    d: &Decoding<'_>,
) -> String {
    let mut tokens = prompt_tokens;
    let start = tokens.len();
    for _ in 0..max_new {
        let window: Vec<i64> = tokens[tokens.len().saturating_sub(d.max_seq)..].to_vec();
        let n = window.len();
        let x = Tensor::<2, Int>::from_data(TensorData::new(window, [1, n]), d.device);
        let logits = model.forward_logits(x, d.sup_steps, d.tables);
        let v = logits.dims()[2];
        let last = logits
            .narrow(1, n - 1, 1)
            .reshape([v])
            .argmax(0)
            .into_scalar::<i64>();
        if last == d.eos {
            break;
        }
        tokens.push(last);
        let text = (d.decode)(&tokens[start..]);
        if let Some(after) = text.split("####").nth(1)
            && after.contains('\n')
        {
            break;
        }
    }
    (d.decode)(&tokens[start..])
}

/// How many recursions tokens ran before halting under ACT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaltingStats {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub variance: f64,
}

/// Run ACT inference on `rows`' inputs and summarise the tokens' halting steps.
pub fn halting(
    model: &TrmTitansMag,
    rows: &[Vec<i64>],
    threshold: f64,
    max_steps: usize,
    t: &Tables,
    device: &Device,
) -> HaltingStats {
    let (x, _) = to_tensors(rows, device);
    let infer = model.infer(x, threshold, max_steps, t);
    let steps: Vec<f64> = infer
        .halting_steps
        .iter()
        .flatten()
        .map(|s| f64::from(*s))
        .collect();
    let n = steps.len().max(1) as f64;
    let avg = steps.iter().sum::<f64>() / n;
    HaltingStats {
        avg,
        min: steps.iter().copied().fold(f64::INFINITY, f64::min),
        max: steps.iter().copied().fold(0.0, f64::max),
        variance: steps.iter().map(|h| (h - avg).powi(2)).sum::<f64>() / n,
    }
}

/// Block passes per token under ACT: halting steps × the passes of one recursion.
pub fn block_passes(cfg: &ModelConfig, avg_halting_steps: f64) -> f64 {
    avg_halting_steps * (cfg.cycles * (cfg.n_inner + 1) * cfg.layers) as f64
}

/// Greedy-decoded math answers against always answering the most common one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MathScore {
    pub correct: usize,
    pub evaluated: usize,
    pub majority_hits: usize,
    pub max_difficulty: u8,
}

impl MathScore {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.evaluated.max(1) as f64
    }
    pub fn majority_baseline(&self) -> f64 {
        self.majority_hits as f64 / self.evaluated.max(1) as f64
    }
}

/// Answer up to `limit` math records of difficulty ≤ `max_difficulty` by greedy decoding.
/// `each` is called after every problem (progress, cancellation).
pub fn math_accuracy(
    model: &TrmTitansMag,
    records: &[Record],
    max_difficulty: u8,
    limit: usize,
    codec: &TextCodec,
    d: &Decoding<'_>,
    each: &mut dyn FnMut(usize, usize) -> Result<(), OpError>,
) -> Result<MathScore, OpError> {
    let math: Vec<&Record> = records
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
    let evaluated: Vec<&&Record> = math.iter().take(limit).collect();
    let mut correct = 0usize;
    for (i, r) in evaluated.iter().enumerate() {
        let prompt = codec.encode(&format!("Question: {}\nAnswer:", r.prompt));
        let prompt = prompt[..prompt.len() - 1].to_vec(); // drop eos: the answer follows
        let text = greedy_answer(model, prompt, 48, d);
        if parse_answer(&text).as_deref() == Some(r.answer.as_str()) {
            correct += 1;
        }
        each(i + 1, evaluated.len())?;
    }
    let majority_hits = evaluated
        .iter()
        .filter(|r| Some(r.answer.as_str()) == majority.as_deref())
        .count();
    Ok(MathScore {
        correct,
        evaluated: evaluated.len(),
        majority_hits,
        max_difficulty,
    })
}

/// What a trained language model's artifact reports about it.
#[derive(Debug, Clone)]
pub struct LmReport {
    pub val_loss: f64,
    pub halting: HaltingStats,
    pub memory_usage: f64,
    pub math: MathScore,
    /// Wall-clock ACT inference per row: an event, never part of an artifact.
    pub inference_ms: f64,
}

/// What [`lm_report`] evaluates on.
pub struct LmEvalSet<'a> {
    /// Fixed validation batches (rows of `seq + 1` ids).
    pub batches: &'a [Vec<Vec<i64>>],
    /// Held-out records for answer accuracy.
    pub records: &'a [Record],
    pub math_limit: usize,
    pub math_max_difficulty: u8,
    pub act_max_steps: usize,
}

/// Validation loss, halting, memory usage and math accuracy of `model`.
pub fn lm_report(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    set: &LmEvalSet<'_>,
    codec: &TextCodec,
    device: &Device,
    each: &mut dyn FnMut(usize, usize) -> Result<(), OpError>,
) -> Result<LmReport, OpError> {
    let tables = Tables::new(cfg, device);
    let val_loss = eval_loss(model, set.batches, cfg.sup_steps, &tables, device);
    let t = Instant::now();
    let halting = halting(
        model,
        &set.batches[0],
        cfg.act_threshold,
        set.act_max_steps,
        &tables,
        device,
    );
    let inference_ms = t.elapsed().as_secs_f64() * 1000.0 / set.batches[0].len() as f64;
    let (vx, vy) = to_tensors(&set.batches[0], device);
    let memory_usage = model
        .forward_train(vx, vy, cfg.sup_steps, 0.0, &tables)
        .memory_usage
        .map(|u| u.into_scalar::<f32>() as f64)
        .unwrap_or(0.0);
    let decode = |ids: &[i64]| {
        codec
            .tokenizer
            .decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), true)
            .unwrap_or_default()
    };
    let decoding = Decoding {
        eos: codec.eos,
        sup_steps: cfg.sup_steps,
        max_seq: cfg.max_seq,
        tables: &tables,
        device,
        decode: &decode,
    };
    let math = math_accuracy(
        model,
        set.records,
        set.math_max_difficulty,
        set.math_limit,
        codec,
        &decoding,
        each,
    )?;
    Ok(LmReport {
        val_loss,
        halting,
        memory_usage,
        math,
        inference_ms,
    })
}

impl LmReport {
    /// The report under the seed's metric names, in a fixed order.
    pub fn metrics(&self, cfg: &ModelConfig, params: usize) -> Vec<(&'static str, Value)> {
        let h = &self.halting;
        vec![
            ("val/loss", json!(self.val_loss)),
            ("val/perplexity", json!(self.val_loss.exp())),
            ("val/math_accuracy", json!(self.math.accuracy())),
            (
                "val/math_majority_baseline",
                json!(self.math.majority_baseline()),
            ),
            ("val/math_evaluated", json!(self.math.evaluated)),
            ("val/math_max_difficulty", json!(self.math.max_difficulty)),
            ("act/avg_halting_steps", json!(h.avg)),
            ("act/min_halting_steps", json!(h.min)),
            ("act/max_halting_steps", json!(h.max)),
            ("act/halting_variance", json!(h.variance)),
            ("ltm/memory_usage", json!(self.memory_usage)),
            ("diversity/avg_halting_steps", json!(h.avg)),
            ("diversity/ltm_usage", json!(self.memory_usage)),
            // Deterministic stand-in for inference time: block passes per token under ACT.
            (
                "diversity/inference_passes",
                json!(block_passes(cfg, h.avg)),
            ),
            ("final/total_params", json!(params)),
            (
                "final/model_size_mb",
                json!(params as f64 * 4.0 / (1u64 << 20) as f64),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_after_the_marker() {
        assert_eq!(parse_answer("3 + 4 = 7\n#### 7\n").as_deref(), Some("7"));
        assert_eq!(parse_answer("no marker"), None);
        assert_eq!(parse_answer("#### x"), None);
    }
}
