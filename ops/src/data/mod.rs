//! Built-in datasets: deterministic generators for the `builtin:<name>` sources of `download`.
//!
//! Every record is generated from its own RNG (the `rng` stream `Data { category, index }`), so a
//! dataset is a pure function of (generator version, seed, sizes) and any record can be rebuilt
//! alone. Records are de-duplicated by prompt, and the split (train/val/test) of a record is a
//! function of its prompt's hash: the same problem can never land in two splits, whatever the
//! sample counts. Generators write their own worked solutions, so answers are exact.
//!
//! | name | what | difficulty 1 → 3 |
//! |---|---|---|
//! | `math` | multi-step arithmetic word problems, GSM8K-style `#### 42` answer line | 1 → 3–4 operations |
//! | `qa` | multi-hop questions over a generated world of facts (with distractors) | 1 → 3 hops |
//! | `code` | small Python-subset programs and what they print | straight-line → branches → loops |
//! | `commonsense` | everyday-physics comparisons and superlatives, lettered choices | 2 → 4 options |
//! | `language` | a grammar-generated story language with subject–verb agreement across clauses | 0 → 3 attractors |
//! | `mixed` | all five, weighted by `mix` | |
//! | `reasoning` | Phase 3's strategy-tagged thinking traces, balanced over the ten strategies ([`reasoning`]) | as its problems |
//!
//! Downloaded tables (parquet, jsonl, json; e.g. Hugging Face datasets) become records of the same
//! format through the templates of [`table`]. [`records`] reads a dataset artifact back;
//! [`batches`] draws training rows from its records under a curriculum.

pub mod batches;
pub mod code;
pub mod commonsense;
pub mod language;
pub mod math;
pub mod qa;
pub mod reasoning;
pub mod records;
pub mod table;

pub use batches::{Corpus, Curriculum, Sampler, Stage, TokenPool, default_curriculum, round_robin};
pub use records::{Record, Split, load_all_records, load_records, read_texts, split_of};

use std::collections::{BTreeMap, HashSet};

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Bumped whenever any generator's output changes; part of every `builtin:` download's key.
/// (3: every draw from the `data` stream of `rng`.)
pub const GENERATOR_VERSION: u32 = 3;

/// What a generator returns for one draw.
#[derive(Debug, Clone)]
pub struct Item {
    pub prompt: String,
    pub answer: String,
    pub text: String,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Math,
    Qa,
    Code,
    Commonsense,
    Language,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Self::Math,
        Self::Qa,
        Self::Code,
        Self::Commonsense,
        Self::Language,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Math => "math",
            Self::Qa => "qa",
            Self::Code => "code",
            Self::Commonsense => "commonsense",
            Self::Language => "language",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    fn generate(self, rng: &mut ChaCha8Rng, difficulty: u8) -> Item {
        match self {
            Self::Math => math::generate(rng, difficulty),
            Self::Qa => qa::generate(rng, difficulty),
            Self::Code => code::generate(rng, difficulty),
            Self::Commonsense => commonsense::generate(rng, difficulty),
            Self::Language => language::generate(rng, difficulty),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Category → number of distinct records (over all splits).
    pub counts: BTreeMap<Category, u64>,
    pub seed: u64,
    pub val_fraction: f64,
    pub test_fraction: f64,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "builtin:{category} ran out of distinct problems after {found} of {wanted} (its template space is too small for that many samples)"
)]
pub struct Exhausted {
    pub category: &'static str,
    pub found: u64,
    pub wanted: u64,
}

/// Split counts from a total and weights, by largest remainder (sums exactly to `total`).
pub fn apportion(total: u64, weights: &BTreeMap<Category, f64>) -> BTreeMap<Category, u64> {
    let sum: f64 = weights.values().sum();
    let mut out: BTreeMap<Category, u64> = BTreeMap::new();
    let mut rema: Vec<(f64, Category)> = Vec::new();
    let mut given = 0;
    for (&c, &w) in weights {
        let exact = total as f64 * w / sum;
        let floor = exact.floor() as u64;
        out.insert(c, floor);
        given += floor;
        rema.push((exact - floor as f64, c));
    }
    rema.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, c) in rema.into_iter().take((total - given) as usize) {
        *out.get_mut(&c).expect("present") += 1;
    }
    out
}

/// Generate the dataset: records per split, in generation order. `progress` gets the number of
/// records made so far, every 1,000, and returns whether to go on; told to stop, generation
/// returns the records made so far (the caller, which asked, discards them).
pub fn generate(
    spec: &Spec,
    progress: impl FnMut(u64) -> bool,
) -> Result<BTreeMap<Split, Vec<Record>>, Exhausted> {
    let categories: Vec<Category> = spec.counts.keys().copied().collect();
    let counts: Vec<(&'static str, u64)> =
        spec.counts.iter().map(|(c, &n)| (c.name(), n)).collect();
    generate_named(&counts, spec, progress, |i, rng, difficulty| {
        categories[i].generate(rng, difficulty)
    })
}

/// `builtin:reasoning`: `samples` traces, as equal a share per strategy as `samples` allows
/// (`spec.counts` is not used). `progress` as for [`generate`].
pub fn generate_reasoning(
    samples: u64,
    spec: &Spec,
    progress: impl FnMut(u64) -> bool,
) -> Result<BTreeMap<Split, Vec<Record>>, Exhausted> {
    let strategies = crate::bake::strategies::STRATEGIES;
    let n = strategies.len() as u64;
    let counts: Vec<(&'static str, u64)> = strategies
        .iter()
        .enumerate()
        .map(|(i, s)| (s.metric, samples / n + u64::from((i as u64) < samples % n)))
        .collect();
    generate_named(&counts, spec, progress, |i, rng, difficulty| {
        reasoning::generate(strategies[i], rng, difficulty)
    })
}

/// Draw `wanted` distinct records for each `(name, wanted)` of `counts` from
/// `draw(index in counts, rng, difficulty)`: each draw from
/// its own `Data { name, index }` stream, difficulty cycling 1, 2, 3, repeated prompts skipped,
/// the split by prompt hash.
fn generate_named(
    counts: &[(&'static str, u64)],
    spec: &Spec,
    mut progress: impl FnMut(u64) -> bool,
    draw: impl Fn(usize, &mut ChaCha8Rng, u8) -> Item,
) -> Result<BTreeMap<Split, Vec<Record>>, Exhausted> {
    let mut out: BTreeMap<Split, Vec<Record>> = BTreeMap::new();
    let mut done = 0;
    for (which, &(name, wanted)) in counts.iter().enumerate() {
        let mut seen = HashSet::new();
        let mut found = 0u64;
        let mut index = 0u64;
        while found < wanted {
            if index >= wanted * 20 + 1000 {
                return Err(Exhausted {
                    category: name,
                    found,
                    wanted,
                });
            }
            let mut rng = crate::rng::stream(
                spec.seed,
                crate::rng::Stream::Data {
                    category: name,
                    index,
                },
            );
            // Difficulty cycles 1,2,3 so every level is equally represented.
            let difficulty = (index % 3) as u8 + 1;
            index += 1;
            let item = draw(which, &mut rng, difficulty);
            if !seen.insert(blake3::hash(item.prompt.as_bytes())) {
                continue;
            }
            let split = split_of(&item.prompt, spec.val_fraction, spec.test_fraction);
            let id = format!("{name}-{found:07}");
            out.entry(split).or_default().push(Record {
                id,
                category: name.into(),
                difficulty,
                prompt: item.prompt,
                answer: item.answer,
                text: item.text,
            });
            found += 1;
            done += 1;
            if done % 1000 == 0 && !progress(done) {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Helpers shared by the generators.
pub(crate) mod pick {
    use rand::Rng;
    use rand::seq::IndexedRandom;
    use rand_chacha::ChaCha8Rng;

    pub fn one<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
        items.choose(rng).expect("non-empty list")
    }

    /// `n` distinct items.
    pub fn distinct<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], n: usize) -> Vec<&'a T> {
        items.choose_multiple(rng, n).collect()
    }

    pub fn range(rng: &mut ChaCha8Rng, lo: i64, hi: i64) -> i64 {
        rng.random_range(lo..=hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u64) -> Spec {
        Spec {
            counts: Category::ALL.iter().map(|&c| (c, n)).collect(),
            seed: 42,
            val_fraction: 0.1,
            test_fraction: 0.1,
        }
    }

    #[test]
    fn progress_every_thousand_records_and_stopping_when_told() {
        let mut seen = Vec::new();
        let all = generate(&spec(500), |n| {
            seen.push(n);
            true
        })
        .unwrap();
        let total: usize = all.values().map(Vec::len).sum();
        assert_eq!(
            seen,
            (1..=total as u64 / 1000)
                .map(|k| k * 1000)
                .collect::<Vec<_>>()
        );
        let stopped = generate(&spec(500), |n| n < 2000).unwrap();
        assert_eq!(stopped.values().map(Vec::len).sum::<usize>(), 2000);
    }

    #[test]
    fn deterministic_from_the_seed() {
        let a = generate(&spec(60), |_| true).unwrap();
        let b = generate(&spec(60), |_| true).unwrap();
        assert_eq!(a, b);
        let mut other = spec(60);
        other.seed = 43;
        assert_ne!(generate(&other, |_| true).unwrap(), a);
    }

    #[test]
    fn splits_never_overlap_and_counts_are_exact() {
        let data = generate(&spec(300), |_| true).unwrap();
        let mut seen = HashSet::new();
        let mut total = 0;
        for records in data.values() {
            for r in records {
                assert!(
                    seen.insert(r.prompt.clone()),
                    "duplicate prompt across splits: {}",
                    r.prompt
                );
                total += 1;
            }
        }
        assert_eq!(total, 300 * 5);
        assert!(data[&Split::Val].len() > 50 && data[&Split::Test].len() > 50);
        // A bigger dataset keeps every prompt in the split it had.
        let bigger = generate(&spec(400), |_| true).unwrap();
        for (split, records) in &data {
            let there: HashSet<&str> = bigger[split].iter().map(|r| r.prompt.as_str()).collect();
            assert!(records.iter().all(|r| there.contains(r.prompt.as_str())));
        }
    }

    #[test]
    fn reasoning_traces_are_balanced_over_the_ten_strategies() {
        let data = generate_reasoning(1003, &spec(0), |_| true).unwrap();
        let mut per: BTreeMap<String, u64> = BTreeMap::new();
        for r in data.values().flatten() {
            *per.entry(r.category.clone()).or_default() += 1;
            assert!(r.text.contains("[thinking]<"), "{}", r.text);
            assert!(r.id.starts_with(&r.category));
        }
        assert_eq!(per.len(), 10);
        assert_eq!(per.values().sum::<u64>(), 1003);
        assert!(per.values().all(|&n| n == 100 || n == 101), "{per:?}");
        assert!(data[&Split::Val].len() > 50 && data[&Split::Test].len() > 50);
        assert_eq!(generate_reasoning(1003, &spec(0), |_| true).unwrap(), data);
    }

    #[test]
    fn apportion_sums_exactly() {
        let w: BTreeMap<Category, f64> = [
            (Category::Math, 0.4),
            (Category::Qa, 0.3),
            (Category::Code, 0.3),
        ]
        .into();
        let c = apportion(1001, &w);
        assert_eq!(c.values().sum::<u64>(), 1001);
        assert_eq!(c[&Category::Math], 401);
    }
}
