//! Fitness of merge candidates, and the test-split report of an evolution's champion.
//!
//! Every candidate is loaded into the model and run as deployed — ACT inference, the same path
//! as every other evaluation ([`super::act`]) — on held-out *validation* records, the same ones
//! for every candidate:
//!
//! ```text
//! fitness = w_p / perplexity + w_a · accuracy + w_s / latency + w_m · (size_ref / size − 1)
//! ```
//!
//! with the seed plan's size-adaptive weights, all from one pass over `eval_records` records:
//! perplexity over all their tokens; accuracy over the records with an answer, teacher-forced
//! under ACT — by default the *expected* accuracy, the mean probability the model gives each
//! whole answer (`accuracy: expected`: the accuracy of sampling at temperature 1), or the
//! fraction of answers whose every token is the argmax, what greedy decoding would produce
//! (`accuracy: argmax`); latency the block passes per token under ACT; and the size term zero
//! for a candidate as large as its parents (it rewards a smaller one; it is never a constant).
//! The evaluation is deterministic, so fitness and the champion are reproducible; wall-clock
//! times go to events only. Either way one answer moves fitness by at most `w_a / answers`
//! (reported as `fitness/answer_step`).
//!
//! Why expected accuracy by default: on the tiny pipeline's 340 validation records (314
//! answers) one argmax answer flipping moved fitness by 0.92% — more than the perplexity gaps
//! between the best merges and the specialists are worth (a 2% perplexity gap is ~0.8% of
//! fitness) — so selection followed which few answers flipped and picked a specialist whose
//! test perplexity the merges beat. The expected accuracy counts the same answers, but every
//! one of them moves it a little, so it ranks candidates by how sure they are of the answers
//! rather than by a few coin flips.
//!
//! Results are memoised in the store's `fitness` memo bucket under a typed key (the candidate's
//! weight digest and everything the evaluation depends on), so a candidate seen again — in a
//! later generation or another run — is not re-evaluated. Candidates are evaluated on up to the
//! step's `resources.cpus` threads.
//!
//! [`Fitness::test_report`] measures the champion once on the *test* split, never used for
//! selection, beside each parent, the base and a compute-matched control, with paired-bootstrap
//! 95% intervals ([`super::bootstrap`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::bootstrap::{perplexity, relative_perplexity};
use super::{Decoding, EvalBatch, Scores, block_passes, eval_batches, math_accuracy, score_until};
use crate::artifact::InputArtifact;
use crate::context::{AlertLevel, StepContext};
use crate::data::{Record, Split, load_all_records};
use crate::error::OpError;
use crate::merge::evolve::{self, FitnessReport};
use crate::merge::tensors::StateDict;
use crate::model::{ModelConfig, Tables, TrmTitansMag};
use crate::text::TextCodec;

/// Version of the `fitness` memo bucket: bump when the same candidate and settings would score
/// differently (the forward pass's numerics, the composite, the evaluation data).
pub const MEMO_VERSION: u32 = 5;

/// Bootstrap resamples behind every interval.
const RESAMPLES: usize = 1000;

/// How `evolve` measures a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FitnessConfig {
    /// Validation records each candidate is scored on (round-robin over categories): all of
    /// them for perplexity, those with an answer for answer accuracy.
    #[serde(default = "d::eval_records")]
    pub eval_records: usize,
    /// Rows per inference batch.
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Longest row, in tokens.
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    /// Weights of perplexity, accuracy, speed and size (default: by model size, as in the seed
    /// plan: < 100 MB 0.5/0.3/0.1/0.1, < 1 GB 0.4/0.3/0.2/0.1, else 0.4/0.3/0.15/0.15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<[f64; 4]>,
    /// Test-split math problems the champion answers by greedy decoding.
    #[serde(default = "d::math_eval")]
    pub math_eval: usize,
    /// What the accuracy term counts.
    #[serde(default)]
    pub accuracy: AccuracyMeasure,
}

/// What the fitness's accuracy term counts, over the answer spans of the evaluation records
/// (teacher-forced under ACT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccuracyMeasure {
    /// The mean probability of each whole answer: the expected accuracy of sampling it (the
    /// default).
    #[default]
    Expected,
    /// The fraction of answers whose every token is the argmax prediction.
    Argmax,
}

impl AccuracyMeasure {
    /// This measure of `scores`.
    pub fn of(self, scores: &Scores) -> f64 {
        match self {
            Self::Expected => scores.expected_answer_accuracy(),
            Self::Argmax => scores.answer_accuracy(),
        }
    }
}

impl Default for FitnessConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

mod d {
    pub fn eval_records() -> usize {
        400
    }
    pub fn batch_size() -> usize {
        16
    }
    pub fn seq_len() -> usize {
        128
    }
    pub fn math_eval() -> usize {
        60
    }
}

impl FitnessConfig {
    /// Why these settings cannot measure anything, if they cannot.
    pub fn problem(&self) -> Option<String> {
        (self.eval_records == 0 || self.batch_size == 0 || self.seq_len < 2)
            .then(|| "eval_records and batch_size must be positive and seq_len at least 2".into())
    }
}

/// The seed plan's size-adaptive fitness weights.
pub fn fitness_weights(size_mb: f64) -> [f64; 4] {
    if size_mb < 100.0 {
        [0.5, 0.3, 0.1, 0.1]
    } else if size_mb < 1000.0 {
        [0.4, 0.3, 0.2, 0.1]
    } else {
        [0.4, 0.3, 0.15, 0.15]
    }
}

/// The composite fitness; `reference_mb` is the parents' size, so the size term is zero for a
/// candidate of the same size.
pub fn composite(
    w: [f64; 4],
    perplexity: f64,
    accuracy: f64,
    latency: f64,
    size_mb: f64,
    reference_mb: f64,
) -> f64 {
    w[0] / perplexity
        + w[1] * accuracy
        + w[2] / latency.max(1e-9)
        + w[3] * (reference_mb / size_mb.max(1e-9) - 1.0)
}

/// Run `model` on `rows` under ACT; `None` once `stop` says so (asked before each batch).
fn measure(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    rows: &[EvalBatch],
    device: &burn::tensor::Device,
    stop: &dyn Fn() -> bool,
) -> Option<Scores> {
    score_until(model, cfg, rows, &Tables::new(cfg, device), device, stop)
}

/// The evaluator: fixed validation rows and answer spans, the model config, the memo.
pub struct Fitness<'a> {
    ctx: &'a StepContext,
    /// The inference device candidates run on.
    device: burn::tensor::Device,
    cfg: ModelConfig,
    fc: FitnessConfig,
    data: &'a EvalData,
    val: Vec<EvalBatch>,
    /// The parents' size in MB (the size term's reference).
    reference_mb: f64,
    memo: forge_cache::Memo,
    key: KeyBase,
}

/// What a candidate's fitness depends on besides its weights: the memo key's pre-image.
#[derive(Debug, Clone, Serialize)]
struct KeyBase {
    fitness: FitnessConfig,
    model: ModelConfig,
    /// Content digests of the evaluation datasets, in input order.
    data: Vec<String>,
    tokenizer: String,
    reference_mb: f64,
    backend: String,
}

#[derive(Serialize)]
struct CandidateKey<'a> {
    #[serde(flatten)]
    base: &'a KeyBase,
    weights: String,
}

/// Where candidates are evaluated: the held-out records and how their text is tokenized.
pub struct EvalData {
    /// Validation records (the `val` split; `train` when a dataset has none): selection.
    pub val: Vec<Record>,
    /// Test records (the `test` split): the champion's report, never selection.
    pub test: Vec<Record>,
    pub codec: TextCodec,
    /// Content digests of the datasets and the tokenizer, for the memo key.
    pub data_digests: Vec<String>,
    pub tokenizer_digest: String,
}

impl EvalData {
    /// The held-out records of the datasets `data`, tokenized by the `tokenizer.json` at
    /// `tokenizer`.
    pub fn load(tokenizer: &Path, data: &[InputArtifact]) -> Result<Self, OpError> {
        let tk_bytes = std::fs::read(tokenizer).map_err(|e| OpError::io(tokenizer, e))?;
        let codec = TextCodec::from_bytes(&tk_bytes, tokenizer)?;
        let mut val = load_all_records(data, Split::Val)?;
        if val.is_empty() {
            val = load_all_records(data, Split::Train)?;
        }
        let test = load_all_records(data, Split::Test)?;
        Ok(Self {
            val,
            test,
            codec,
            data_digests: data.iter().map(|d| d.digest.to_hex()).collect(),
            tokenizer_digest: blake3::hash(&tk_bytes).to_hex().to_string(),
        })
    }
}

/// A model in the champion's test report: its metric prefix (`final`, `parents/0`, `base`,
/// `control`) and its weights.
pub struct Contender {
    pub prefix: String,
    pub weights: Vec<u8>,
}

impl<'a> Fitness<'a> {
    /// Fix the evaluation rows for candidates of `cfg` whose parents have `reference_numel`
    /// parameters.
    pub fn prepare(
        ctx: &'a StepContext,
        fc: &FitnessConfig,
        cfg: &ModelConfig,
        data: &'a EvalData,
        reference_numel: usize,
    ) -> Result<Self, OpError> {
        if data.val.is_empty() {
            return Err(OpError::user("the dataset has no records to evaluate on"));
        }
        let seq = fc.seq_len.min(cfg.max_seq);
        let val = eval_batches(&data.val, &data.codec, fc.eval_records, seq, fc.batch_size);
        let backend =
            crate::device::resolve(ctx.device()).map_err(|e| OpError::user(e.to_string()))?;
        let reference_mb = size_mb(reference_numel);
        let key = KeyBase {
            fitness: fc.clone(),
            model: cfg.clone(),
            data: data.data_digests.clone(),
            tokenizer: data.tokenizer_digest.clone(),
            reference_mb,
            backend: backend.class.to_string(),
        };
        Ok(Self {
            ctx,
            device: backend.device.inner(),
            cfg: cfg.clone(),
            fc: fc.clone(),
            data,
            val,
            reference_mb,
            memo: ctx.memo("fitness", MEMO_VERSION)?,
            key,
        })
    }

    fn load(&self, bytes: Vec<u8>, what: &str) -> Result<TrmTitansMag, String> {
        crate::model::weights::model_from(&self.cfg, bytes, what, &self.device)
            .map_err(|e| e.to_string())
    }

    /// Run one candidate, given as safetensors bytes with `numel` parameters.
    fn fitness_of(&self, bytes: Vec<u8>, numel: usize) -> Result<FitnessReport, String> {
        let model = self.load(bytes, "the candidate")?;
        let stop = || self.ctx.is_cancelled();
        let m = measure(&model, &self.cfg, &self.val, &self.device, &stop)
            .ok_or_else(|| CANCELLED.to_owned())?;
        let perplexity = m.perplexity();
        let accuracy = self.fc.accuracy.of(&m);
        let latency = block_passes(&self.cfg, m.halting_stats().avg);
        let size_mb = size_mb(numel);
        let w = self.fc.weights.unwrap_or_else(|| fitness_weights(size_mb));
        Ok(FitnessReport {
            fitness: composite(w, perplexity, accuracy, latency, size_mb, self.reference_mb),
            perplexity,
            accuracy,
            latency,
            size_mb,
        })
    }

    /// How much data a fitness rests on, and how far one answer can move it: absolutely
    /// (`fitness/answer_step`: `w_a / answers`, with either accuracy measure) and relative to
    /// `reference` (the parents' average fitness).
    pub fn sensitivity(&self, reference: f64) -> Map<String, Value> {
        let rows: usize = self.val.iter().map(|b| b.rows.len()).sum();
        let answers: usize = self
            .val
            .iter()
            .flat_map(|b| &b.answers)
            .filter(|a| !a.is_empty())
            .count();
        let w = self
            .fc
            .weights
            .unwrap_or_else(|| fitness_weights(self.reference_mb));
        let step = w[1] / answers.max(1) as f64;
        Map::from_iter([
            ("fitness/records".to_string(), json!(rows)),
            ("fitness/answers".to_string(), json!(answers)),
            ("fitness/answer_step".to_string(), json!(step)),
            (
                "fitness/answer_step_relative".to_string(),
                json!(step / reference.abs().max(1e-12)),
            ),
        ])
    }

    /// The champion (`contenders[0]`, prefix `final`) measured once on the test split beside the
    /// other contenders, with 95% intervals (`_lo`, `_hi`): each one's perplexity, the champion's
    /// perplexity relative to each (`final/test_vs/<prefix>`: `ppl_champion / ppl_other − 1`,
    /// negative when the champion is better), answer accuracy, and the champion's greedy math
    /// accuracy beside the majority-answer baseline. See [`TEST_REPORT_METRICS`].
    pub fn test_report(
        &self,
        contenders: &[Contender],
        seed: u64,
    ) -> Result<Map<String, Value>, OpError> {
        if self.data.test.is_empty() {
            return Err(OpError::user(
                "the evaluation data has no test split to report the champion on",
            ));
        }
        let seq = self.fc.seq_len.min(self.cfg.max_seq);
        let test = eval_batches(
            &self.data.test,
            &self.data.codec,
            self.fc.eval_records,
            seq,
            self.fc.batch_size,
        );
        let mut out = Map::new();
        let mut measured = Vec::new();
        for (i, c) in contenders.iter().enumerate() {
            self.ctx
                .progress(i as u64, Some(contenders.len() as u64), "test evaluations");
            self.ctx.check_cancelled()?;
            let model = self
                .load(c.weights.clone(), &c.prefix)
                .map_err(OpError::internal)?;
            let stop = || self.ctx.is_cancelled();
            match measure(&model, &self.cfg, &test, &self.device, &stop) {
                Some(m) => measured.push(m),
                None => return Err(self.ctx.cancellation()),
            }
        }
        let champion = &measured[0];
        for (c, m) in contenders.iter().zip(&measured) {
            let p = perplexity(m, RESAMPLES, seed);
            out.insert(format!("{}/test_perplexity", c.prefix), json!(p.value));
            out.insert(format!("{}/test_perplexity_lo", c.prefix), json!(p.lo));
            out.insert(format!("{}/test_perplexity_hi", c.prefix), json!(p.hi));
            out.insert(
                format!("{}/test_accuracy", c.prefix),
                json!(m.answer_accuracy()),
            );
            out.insert(
                format!("{}/test_expected_accuracy", c.prefix),
                json!(m.expected_answer_accuracy()),
            );
            if c.prefix != "final" {
                let r = relative_perplexity(champion, m, RESAMPLES, seed);
                out.insert(format!("final/test_vs/{}", c.prefix), json!(r.value));
                out.insert(format!("final/test_vs/{}_lo", c.prefix), json!(r.lo));
                out.insert(format!("final/test_vs/{}_hi", c.prefix), json!(r.hi));
            }
        }
        out.insert("final/test_rows".into(), json!(champion.nll.len()));
        out.insert("final/test_tokens".into(), json!(champion.token_count()));
        out.insert("final/test_answers".into(), json!(champion.answers.len()));

        let math = self.greedy_math(&contenders[0].weights)?;
        out.insert("final/test_math_accuracy".into(), json!(math.accuracy()));
        out.insert(
            "final/test_math_majority_baseline".into(),
            json!(math.majority_baseline()),
        );
        out.insert("final/test_math_evaluated".into(), json!(math.evaluated));
        Ok(out)
    }

    fn greedy_math(&self, weights: &[u8]) -> Result<super::MathScore, OpError> {
        let model = self
            .load(weights.to_vec(), "the champion")
            .map_err(OpError::internal)?;
        let tables = Tables::new(&self.cfg, &self.device);
        let codec = &self.data.codec;
        let decode = |ids: &[i64]| codec.decode(ids);
        let d = Decoding {
            cfg: &self.cfg,
            eos: codec.eos,
            tables: &tables,
            device: &self.device,
            decode: &decode,
        };
        math_accuracy(
            &model,
            &self.data.test,
            3,
            self.fc.math_eval,
            codec,
            &d,
            &mut |i, n| {
                self.ctx.progress(i as u64, Some(n as u64), "math problems");
                self.ctx.check_cancelled()
            },
        )
    }
}

/// The metrics [`Fitness::test_report`] writes, as patterns (`*` is one name segment).
pub const TEST_REPORT_METRICS: &[&str] = &[
    "final/test_perplexity",
    "final/test_perplexity_lo",
    "final/test_perplexity_hi",
    "final/test_accuracy",
    "final/test_expected_accuracy",
    "parents/*/test_perplexity",
    "parents/*/test_perplexity_lo",
    "parents/*/test_perplexity_hi",
    "parents/*/test_accuracy",
    "parents/*/test_expected_accuracy",
    "*/test_perplexity",
    "*/test_perplexity_lo",
    "*/test_perplexity_hi",
    "*/test_accuracy",
    "*/test_expected_accuracy",
    "final/test_vs/parents/*",
    "final/test_vs/parents/*_lo",
    "final/test_vs/parents/*_hi",
    "final/test_vs/*",
    "final/test_vs/*_lo",
    "final/test_vs/*_hi",
    "final/test_rows",
    "final/test_tokens",
    "final/test_answers",
    "final/test_math_accuracy",
    "final/test_math_majority_baseline",
    "final/test_math_evaluated",
];

fn size_mb(numel: usize) -> f64 {
    numel as f64 * 4.0 / f64::from(1u32 << 20)
}

/// What a candidate cut short by cancellation reports.
const CANCELLED: &str = "cancelled";

impl evolve::Evaluator for Fitness<'_> {
    fn stopped(&self) -> bool {
        self.ctx.is_cancelled()
    }

    fn evaluate(&self, models: &[&StateDict]) -> Vec<Result<FitnessReport, String>> {
        // Each candidate is serialised once: its digest names its cache entry, and the same
        // bytes load it into the model.
        let bytes: Vec<Vec<u8>> = models.iter().map(|w| w.to_bytes()).collect();
        let keys: Vec<forge_cache::MemoKey> = bytes
            .iter()
            .map(|b| {
                self.memo.key(&CandidateKey {
                    base: &self.key,
                    weights: blake3::hash(b).to_hex().to_string(),
                })
            })
            .collect();
        // A memo entry that cannot be read is a miss: the candidate is evaluated again.
        let mut out: Vec<Option<Result<FitnessReport, String>>> = keys
            .iter()
            .map(|k| {
                self.memo
                    .get(k)
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .map(Ok)
            })
            .collect();
        let todo: Vec<usize> = (0..models.len()).filter(|&i| out[i].is_none()).collect();
        let hits = models.len() - todo.len();
        if hits > 0 {
            self.ctx
                .metric("evolution/fitness_cache_hits", hits as f64, None);
        }
        let threads = (self.ctx.cpus() as usize).clamp(1, todo.len().max(1));
        let t0 = Instant::now();
        // Progress per candidate; Ctrl-C stops each thread before its next candidate and the
        // running one before its next batch (`stopped` then tells the evolution to record
        // nothing of this generation).
        let evaluated = AtomicU64::new(0);
        let total = todo.len() as u64;
        let results: Vec<(usize, Result<FitnessReport, String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let mine: Vec<usize> = todo.iter().copied().skip(t).step_by(threads).collect();
                    let (bytes, evaluated) = (&bytes, &evaluated);
                    s.spawn(move || {
                        mine.into_iter()
                            .map(|i| {
                                if self.ctx.is_cancelled() {
                                    return (i, Err(CANCELLED.to_owned()));
                                }
                                let r =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        self.fitness_of(bytes[i].clone(), models[i].numel())
                                    }))
                                    .unwrap_or_else(|_| Err("the forward pass panicked".into()));
                                let done = evaluated.fetch_add(1, Ordering::SeqCst) + 1;
                                self.ctx.progress(done, Some(total), "candidates");
                                (i, r)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("evaluation thread"))
                .collect()
        });
        if !todo.is_empty() {
            self.ctx.metric(
                "time/fitness_eval_ms_per_model",
                t0.elapsed().as_secs_f64() * 1000.0 / todo.len() as f64 * threads as f64,
                None,
            );
        }
        for (i, r) in results {
            if let Ok(rep) = &r
                && rep.fitness.is_finite()
            {
                // A memo entry is an optimisation: failing to write one costs a re-evaluation
                // later, so it is reported, not fatal.
                if let Err(e) = self
                    .memo
                    .put(&keys[i], &serde_json::to_vec(rep).expect("json"))
                {
                    self.ctx.alert(
                        AlertLevel::Warn,
                        format!("could not memoise a candidate's fitness: {e}"),
                    );
                }
            }
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every candidate evaluated"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accuracy_term_is_the_expected_accuracy_unless_argmax_is_asked_for() {
        use super::super::AnswerScore;
        // One answer right under argmax with probability 0.6, one wrong with 0.3.
        let s = Scores {
            answers: vec![
                AnswerScore {
                    correct: true,
                    log_prob: 0.6f64.ln(),
                },
                AnswerScore {
                    correct: false,
                    log_prob: 0.3f64.ln(),
                },
            ],
            ..Scores::default()
        };
        assert_eq!(FitnessConfig::default().accuracy, AccuracyMeasure::Expected);
        assert!((AccuracyMeasure::Expected.of(&s) - 0.45).abs() < 1e-12);
        assert!((AccuracyMeasure::Argmax.of(&s) - 0.5).abs() < 1e-12);
        let parsed: FitnessConfig = serde_json::from_str(r#"{"accuracy": "argmax"}"#).unwrap();
        assert_eq!(parsed.accuracy, AccuracyMeasure::Argmax);
    }

    #[test]
    fn the_size_term_is_zero_at_the_parents_size_and_nothing_is_constant() {
        let w = [0.5, 0.3, 0.1, 0.1];
        let f = |ppl, acc, lat, size| composite(w, ppl, acc, lat, size, 4.0);
        // Same everything but size: the parents' size adds nothing, a smaller model gains.
        assert!((f(20.0, 0.1, 10.0, 4.0) - (0.5 / 20.0 + 0.03 + 0.01)).abs() < 1e-12);
        assert!(f(20.0, 0.1, 10.0, 2.0) > f(20.0, 0.1, 10.0, 4.0));
        // Each remaining term moves fitness when its measure moves.
        assert!(f(10.0, 0.1, 10.0, 4.0) > f(20.0, 0.1, 10.0, 4.0));
        assert!(f(20.0, 0.2, 10.0, 4.0) > f(20.0, 0.1, 10.0, 4.0));
        assert!(f(20.0, 0.1, 5.0, 4.0) > f(20.0, 0.1, 10.0, 4.0));
        // One answer of the default 400 records moves fitness by at most w_a / 400 = 0.00075.
        let one = FitnessConfig::default();
        assert!(w[1] / one.eval_records as f64 <= 0.00075 + 1e-12);
    }
}
