//! Training batches from dataset records: a [`TokenPool`] of tokenized records grouped by
//! (category, difficulty), packed rows drawn from it under a category mix, and the curriculum that
//! says which difficulties and mix each part of a run draws from. Every batch is a pure function
//! of its RNG, so a run that draws batch (step, micro) from a stream seeded by them resumes
//! bit-exactly.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Category, Record};

/// One curriculum stage: until `until` (fraction of the steps) train on records of at most
/// `max_difficulty`, with this stage's category mix if given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// End of the stage as a fraction of all steps, in (0, 1].
    pub until: f64,
    /// Hardest records of the stage: difficulty 1 (easiest) to 3.
    #[serde(default = "three")]
    pub max_difficulty: u8,
    /// This stage's category sampling weights (default: the step's `mix`).
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

/// The records a model trains and is checked on, from one or more datasets.
pub struct Corpus {
    pub train: Vec<Record>,
    /// Held-out records for checking during development (the `val` splits).
    pub val: Vec<Record>,
    /// Held-out records for reporting (the `test` splits).
    pub test: Vec<Record>,
    pub pool: TokenPool,
}

impl Corpus {
    /// Load the splits of `data` and tokenize the training records with `encode`. Datasets without
    /// held-out splits (a `file:` corpus) are checked on their training records.
    pub fn load(
        data: &[crate::artifact::InputArtifact],
        encode: impl Fn(&str) -> Vec<i64>,
    ) -> Result<Self, crate::error::OpError> {
        use super::{Split, load_all_records};
        let train = load_all_records(data, Split::Train)?;
        if train.is_empty() {
            return Err(crate::error::OpError::user(
                "the dataset has no train.jsonl records",
            ));
        }
        let or_train = |v: Vec<Record>| if v.is_empty() { train.clone() } else { v };
        let val = or_train(load_all_records(data, Split::Val)?);
        let test = or_train(load_all_records(data, Split::Test)?);
        let pool = TokenPool::new(&train, &encode);
        Ok(Self {
            train,
            val,
            test,
            pool,
        })
    }

    /// The curriculum of a run of `steps` steps over this corpus; an error when a stage would
    /// have nothing to train on.
    pub fn curriculum(
        &self,
        stages: &[Stage],
        mix: Option<&BTreeMap<Category, f64>>,
        steps: u64,
    ) -> Result<Curriculum, crate::error::OpError> {
        let categories = self.pool.categories();
        let c = Curriculum::new(stages, mix, &categories, steps);
        match c.problem(&self.train, &categories) {
            Some(problem) => Err(crate::error::OpError::user(problem)),
            None => Ok(c),
        }
    }
}

/// Up to `n` records taken round-robin over their categories (each in file order), so a sample
/// of a split covers every category evenly.
pub fn round_robin(records: &[Record], n: usize) -> Vec<&Record> {
    let mut by_cat: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_cat.entry(r.category.as_str()).or_default().push(r);
    }
    let mut picked = Vec::new();
    let mut round = 0;
    while picked.len() < n && by_cat.values().any(|v| v.len() > round) {
        for v in by_cat.values() {
            if let Some(r) = v.get(round)
                && picked.len() < n
            {
                picked.push(*r);
            }
        }
        round += 1;
    }
    picked
}

/// Draws a run's training rows: micro-batch `micro` of step `step` comes from the curriculum
/// stage of `step`, through the stream `TrainBatch { step, micro }` of `seed`.
pub struct Sampler<'a> {
    pub pool: &'a TokenPool,
    pub curriculum: &'a Curriculum,
    pub seed: u64,
    pub rows: usize,
    pub seq: usize,
}

impl Sampler<'_> {
    pub fn rows(&self, step: u64, micro: u64) -> Vec<Vec<i64>> {
        let (_, stage, mix) = self.curriculum.at(step);
        self.pool.batch(
            &mut crate::rng::stream(self.seed, crate::rng::Stream::TrainBatch { step, micro }),
            self.rows,
            self.seq,
            &mix,
            stage.max_difficulty,
        )
    }

    /// The 1-based curriculum stage of `step`.
    pub fn stage(&self, step: u64) -> usize {
        self.curriculum.at(step).0 + 1
    }
}

impl TokenPool {
    /// `n` fixed batches over every category equally and every difficulty, batch `i` drawn from
    /// `rng(i)`: the held-out batches an evaluation scores on.
    pub fn even_batches(
        &self,
        n: usize,
        rows: usize,
        seq: usize,
        rng: impl Fn(u64) -> ChaCha8Rng,
    ) -> Vec<Vec<Vec<i64>>> {
        let mix: BTreeMap<String, f64> = self.categories().into_iter().map(|c| (c, 1.0)).collect();
        (0..n)
            .map(|i| self.batch(&mut rng(i as u64), rows, seq, &mix, 3))
            .collect()
    }
}

/// A run's curriculum: its stages and the mix each draws from.
pub struct Curriculum {
    stages: Vec<Stage>,
    base_mix: BTreeMap<String, f64>,
    steps: u64,
}

impl Curriculum {
    /// `stages` (empty: one stage of everything) over `steps` steps, drawing categories by
    /// `mix` (default: equal over `categories`) unless a stage has its own.
    pub fn new(
        stages: &[Stage],
        mix: Option<&BTreeMap<Category, f64>>,
        categories: &[String],
        steps: u64,
    ) -> Self {
        let base_mix = match mix {
            Some(m) => m.iter().map(|(c, w)| (c.name().to_string(), *w)).collect(),
            None => categories.iter().map(|c| (c.clone(), 1.0)).collect(),
        };
        let stages = if stages.is_empty() {
            vec![Stage {
                until: 1.0,
                max_difficulty: 3,
                mix: None,
            }]
        } else {
            stages.to_vec()
        };
        Self {
            stages,
            base_mix,
            steps,
        }
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The base mix, before any stage overrides it.
    pub fn base_mix(&self) -> &BTreeMap<String, f64> {
        &self.base_mix
    }

    /// The stage of `step` (its index and itself) and the mix it draws from.
    pub fn at(&self, step: u64) -> (usize, &Stage, BTreeMap<String, f64>) {
        let frac = (step as f64 + 0.5) / self.steps.max(1) as f64;
        let i = self
            .stages
            .iter()
            .position(|s| frac <= s.until)
            .unwrap_or(self.stages.len() - 1);
        let s = &self.stages[i];
        (i, s, self.mix_of(s))
    }

    fn mix_of(&self, s: &Stage) -> BTreeMap<String, f64> {
        s.mix
            .as_ref()
            .map(|m| m.iter().map(|(c, w)| (c.name().to_string(), *w)).collect())
            .unwrap_or_else(|| self.base_mix.clone())
    }

    /// Why some stage has nothing to train on in `records`, if one has not.
    pub fn problem(&self, records: &[Record], pool_categories: &[String]) -> Option<String> {
        if !self.base_mix.keys().any(|c| pool_categories.contains(c)) {
            return Some(format!(
                "no category of `mix` occurs in the data (it has: {})",
                pool_categories.join(", ")
            ));
        }
        for s in &self.stages {
            let mix: Vec<String> = self.mix_of(s).into_keys().collect();
            if !records
                .iter()
                .any(|r| r.difficulty <= s.max_difficulty && mix.contains(&r.category))
            {
                return Some(format!(
                    "curriculum stage ending at {} has no records (max_difficulty {}, categories {mix:?})",
                    s.until, s.max_difficulty
                ));
            }
        }
        None
    }

    /// The hardest difficulty any stage reaches.
    pub fn max_difficulty(&self) -> u8 {
        self.stages
            .iter()
            .map(|s| s.max_difficulty)
            .max()
            .unwrap_or(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, stream};

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
        let batch_rng = || stream(1, Stream::TrainBatch { step: 5, micro: 0 });
        let a = pool.batch(&mut batch_rng(), 3, 7, &mix, 1);
        let b = pool.batch(&mut batch_rng(), 3, 7, &mix, 1);
        assert_eq!(a, b);
        for r in a.iter().flatten() {
            let rec = &recs[*r as usize];
            assert_eq!((rec.category.as_str(), rec.difficulty), ("math", 1));
        }
    }
}
