//! Training machinery behind the `train` op: token pools and deterministic batches with curriculum
//! and category mixes, the learning-rate schedule, QK-clip, and evaluation (validation loss, ACT
//! halting statistics, memory usage, greedy-decoded math accuracy). [`memory`] sizes micro-batches from a memory budget.

pub mod memory;

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::data::{Category, Record};
use crate::model::{Tables, TrmTitansMag};

/// One curriculum stage: until `until` (fraction of the steps) train on records of at most
/// `max_difficulty`, with this stage's category mix if given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// End of the stage as a fraction of all steps, in (0, 1].
    pub until: f64,
    #[serde(default = "three")]
    pub max_difficulty: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<BTreeMap<Category, f64>>,
}

fn three() -> u8 {
    3
}

/// The three-stage curriculum of the seed plan: foundation (difficulty 1), reasoning (≤ 2),
/// advanced (all).
pub fn default_curriculum() -> Vec<Stage> {
    vec![
        Stage {
            until: 0.3,
            max_difficulty: 1,
            mix: None,
        },
        Stage {
            until: 0.6,
            max_difficulty: 2,
            mix: None,
        },
        Stage {
            until: 1.0,
            max_difficulty: 3,
            mix: None,
        },
    ]
}

/// Tokenized records grouped for sampling.
pub struct TokenPool {
    /// Token ids of each record (bos + text + eos).
    pub tokens: Vec<Vec<i64>>,
    /// (category, difficulty) → record indices.
    groups: BTreeMap<(String, u8), Vec<usize>>,
}

impl TokenPool {
    pub fn new(records: &[Record], tokenize: impl Fn(&str) -> Vec<i64>) -> Self {
        let mut groups: BTreeMap<(String, u8), Vec<usize>> = BTreeMap::new();
        let tokens = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                groups
                    .entry((r.category.clone(), r.difficulty))
                    .or_default()
                    .push(i);
                tokenize(&r.text)
            })
            .collect();
        Self { tokens, groups }
    }

    pub fn categories(&self) -> Vec<String> {
        let mut c: Vec<String> = self.groups.keys().map(|(c, _)| c.clone()).collect();
        c.dedup();
        c
    }

    /// Sample a packed batch of `rows` sequences of `seq + 1` tokens.
    pub fn batch(
        &self,
        rng: &mut ChaCha8Rng,
        rows: usize,
        seq: usize,
        mix: &BTreeMap<String, f64>,
        max_difficulty: u8,
    ) -> Vec<Vec<i64>> {
        // Eligible records per category under this stage.
        let mut eligible: Vec<(f64, Vec<usize>)> = Vec::new();
        for (cat, w) in mix {
            let idx: Vec<usize> = self
                .groups
                .iter()
                .filter(|((c, d), _)| c == cat && *d <= max_difficulty)
                .flat_map(|(_, v)| v.iter().copied())
                .collect();
            if *w > 0.0 && !idx.is_empty() {
                eligible.push((*w, idx));
            }
        }
        assert!(
            !eligible.is_empty(),
            "no eligible records (checked before training)"
        );
        let total: f64 = eligible.iter().map(|(w, _)| w).sum();
        (0..rows)
            .map(|_| {
                let mut row = Vec::with_capacity(seq + 1);
                while row.len() < seq + 1 {
                    let mut x = rng.random::<f64>() * total;
                    let mut pick = &eligible[eligible.len() - 1].1;
                    for (w, idx) in &eligible {
                        if x < *w {
                            pick = idx;
                            break;
                        }
                        x -= w;
                    }
                    let r = pick[rng.random_range(0..pick.len())];
                    row.extend_from_slice(&self.tokens[r]);
                }
                row.truncate(seq + 1);
                row
            })
            .collect()
    }
}

/// Deterministic RNG for (seed, purpose, step, micro-batch).
pub fn rng_for(seed: u64, purpose: &str, step: u64, micro: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(purpose.as_bytes());
    h.update(&seed.to_le_bytes());
    h.update(&step.to_le_bytes());
    h.update(&micro.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Inputs and shifted labels of packed rows.
pub fn to_tensors(rows: &[Vec<i64>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let b = rows.len();
    let s = rows[0].len() - 1;
    let x: Vec<i64> = rows.iter().flat_map(|r| r[..s].iter().copied()).collect();
    let y: Vec<i64> = rows.iter().flat_map(|r| r[1..].iter().copied()).collect();
    (
        Tensor::from_data(TensorData::new(x, [b, s]), device),
        Tensor::from_data(TensorData::new(y, [b, s]), device),
    )
}

/// Linear warm-up to 1, then cosine decay to `min_ratio` at `total`.
pub fn lr_factor(step: u64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// QK-clip (MuonClip): where a head's max attention logit exceeds τ, scale its query and key
/// columns by √(τ / max) so the logit comes back to τ. Returns how many heads were clipped.
pub fn qk_clip(model: TrmTitansMag, max_logits: &[Vec<f32>], tau: f64) -> (TrmTitansMag, usize) {
    let mut model = model;
    let mut clipped = 0;
    for (block, logits) in model.blocks.iter_mut().zip(max_logits) {
        if !logits.iter().any(|m| *m as f64 > tau) {
            continue;
        }
        let d = block.attn.wq.weight.val().dims()[1];
        let dh = d / logits.len();
        let mut scale = vec![1f32; d];
        for (h, m) in logits.iter().enumerate() {
            if *m as f64 > tau {
                clipped += 1;
                let f = (tau / *m as f64).sqrt() as f32;
                scale[h * dh..(h + 1) * dh].iter_mut().for_each(|x| *x = f);
            }
        }
        let apply = |p: Param<Tensor<2>>, scale: &[f32]| {
            let (id, t, mapper) = p.consume();
            let rg = t.is_require_grad();
            let dev = t.device();
            let s = Tensor::<2>::from_data(TensorData::new(scale.to_vec(), [1, d]), &dev);
            let mut new = Tensor::from_inner(t.inner().mul(s.inner()));
            if rg {
                new = new.require_grad();
            }
            Param::from_mapped_value(id, new, mapper)
        };
        block.attn.wq.weight = apply(block.attn.wq.weight.clone(), &scale);
        block.attn.wk.weight = apply(block.attn.wk.weight.clone(), &scale);
    }
    (model, clipped)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        assert!((lr_factor(0, 10, 100, 0.1) - 0.1).abs() < 1e-12);
        assert!((lr_factor(9, 10, 100, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_factor(10, 10, 100, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_factor(55, 10, 100, 0.1) - 0.55).abs() < 1e-12);
        assert!((lr_factor(100, 10, 100, 0.1) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn answers_are_parsed_after_the_marker() {
        assert_eq!(parse_answer("3 + 4 = 7\n#### 7\n").as_deref(), Some("7"));
        assert_eq!(parse_answer("no marker"), None);
        assert_eq!(parse_answer("#### x"), None);
    }

    #[test]
    fn batches_are_deterministic_and_respect_the_curriculum() {
        let recs: Vec<Record> = (0..30)
            .map(|i| Record {
                id: i.to_string(),
                category: if i % 2 == 0 {
                    "math".into()
                } else {
                    "qa".into()
                },
                difficulty: (i % 3) as u8 + 1,
                prompt: String::new(),
                answer: String::new(),
                text: String::new(),
            })
            .collect();
        // Token = record index, so the batch tells which records were used.
        let pool = TokenPool::new(&recs, |_| vec![0]);
        let pool = TokenPool {
            tokens: (0..30).map(|i| vec![i as i64]).collect(),
            ..pool
        };
        let mix: BTreeMap<String, f64> = [("math".to_string(), 1.0)].into();
        let a = pool.batch(&mut rng_for(1, "t", 5, 0), 3, 7, &mix, 1);
        let b = pool.batch(&mut rng_for(1, "t", 5, 0), 3, 7, &mix, 1);
        assert_eq!(a, b);
        for r in a.iter().flatten() {
            let rec = &recs[*r as usize];
            assert_eq!((rec.category.as_str(), rec.difficulty), ("math", 1));
        }
    }
}
