//! Fitness of merge candidates: every candidate is loaded into the model and run on held-out
//! data. The score is the seed plan's composite with its size-adaptive weights,
//! `w_p / perplexity + w_a · accuracy + w_s / latency + w_m / size_MB`, where perplexity is
//! exp(cross-entropy) on fixed validation batches, accuracy the fraction of held-out records
//! whose whole answer span the model predicts token for token (argmax, teacher-forced — what
//! greedy decoding of the answer would produce), latency the block passes per token the model
//! spends under ACT at inference (measured by running it; a deterministic cost, so fitness and
//! hence the champion are reproducible — wall-clock times go to events only), and size the
//! weights in MB.
//!
//! Results are memoised in the store's `fitness` memo bucket under a typed key (the candidate's
//! weight digest and everything the evaluation depends on), so a candidate seen again — in a later
//! generation or another run — is not re-evaluated. Candidates are evaluated on up to the step's
//! `resources.cpus` threads.

use std::collections::BTreeMap;
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::context::{AlertLevel, StepContext};
use std::path::Path;

use crate::artifact::InputArtifact;
use crate::data::{Record, Split, TokenPool, load_all_records};
use crate::error::OpError;
use crate::merge::evolve::{self, FitnessReport};
use crate::merge::tensors::StateDict;
use crate::model::{ModelConfig, Tables, TrmTitansMag};
use crate::rng::{Stream, stream};
use crate::text::TextCodec;

/// Version of the `fitness` memo bucket: bump when the same candidate and settings would score
/// differently (the forward pass's numerics, the composite, the evaluation data).
pub const MEMO_VERSION: u32 = 3;

/// How `evolve` measures a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FitnessConfig {
    /// Validation batches for perplexity.
    #[serde(default = "d::eval_batches")]
    pub eval_batches: usize,
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    /// Held-out records whose answers are checked for accuracy.
    #[serde(default = "d::answers")]
    pub answers: usize,
    /// Most ACT recursions when measuring latency.
    #[serde(default = "d::act_max_steps")]
    pub act_max_steps: usize,
    /// Weights of perplexity, accuracy, speed and memory (default: by model size, as in the
    /// seed plan: < 100 MB 0.5/0.3/0.1/0.1, < 1 GB 0.4/0.3/0.2/0.1, else 0.4/0.3/0.15/0.15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<[f64; 4]>,
}

impl Default for FitnessConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

mod d {
    pub fn eval_batches() -> usize {
        2
    }
    pub fn batch_size() -> usize {
        8
    }
    pub fn seq_len() -> usize {
        128
    }
    pub fn answers() -> usize {
        48
    }
    pub fn act_max_steps() -> usize {
        4
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

/// The composite fitness.
pub fn composite(w: [f64; 4], perplexity: f64, accuracy: f64, latency: f64, size_mb: f64) -> f64 {
    w[0] / perplexity + w[1] * accuracy + w[2] / latency.max(1e-9) + w[3] / size_mb.max(1e-9)
}

/// Rows of token ids with, per row, the positions whose next-token prediction must be right.
struct AnswerBatch {
    rows: Vec<Vec<i64>>,
    targets: Vec<Vec<(usize, i64)>>,
}

/// Up to `n` records, taken round-robin over categories in file order, as batches of inputs with
/// the positions of their answer tokens.
fn answer_batches(
    recs: &[Record],
    codec: &TextCodec,
    n: usize,
    batch_size: usize,
    seq: usize,
) -> Vec<AnswerBatch> {
    let mut by_cat: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in recs {
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
    let mut rows = Vec::new();
    for r in picked {
        let Some(start) = r.text.rfind(r.answer.as_str()) else {
            continue;
        };
        let end = start + r.answer.len();
        let Ok(enc) = codec.tokenizer.encode(r.text.as_str(), false) else {
            continue;
        };
        let mut tokens = vec![codec.bos];
        tokens.extend(enc.get_ids().iter().map(|&i| i64::from(i)));
        // Token j of the text is position j + 1; it is predicted from position j.
        let targets: Vec<(usize, i64)> = enc
            .get_offsets()
            .iter()
            .enumerate()
            .filter(|(_, (a, b))| *a < end && *b > start)
            .map(|(j, _)| (j, tokens[j + 1]))
            .collect();
        if targets.is_empty() || tokens.len() > seq + 1 {
            continue;
        }
        rows.push((tokens, targets));
    }
    rows.chunks(batch_size)
        .map(|c| {
            let len = c.iter().map(|(t, _)| t.len() - 1).max().unwrap_or(1);
            AnswerBatch {
                // Inputs only (the last token is never an input); padded at the end, which a
                // causal model cannot see from earlier positions.
                rows: c
                    .iter()
                    .map(|(t, _)| {
                        let mut x = t[..t.len() - 1].to_vec();
                        x.resize(len, 0);
                        x
                    })
                    .collect(),
                targets: c.iter().map(|(_, g)| g.clone()).collect(),
            }
        })
        .collect()
}

/// The evaluator: fixed validation batches, answer spans, the model config, the memo.
pub struct Fitness<'a> {
    ctx: &'a StepContext,
    /// The inference device candidates run on.
    device: burn::tensor::Device,
    cfg: ModelConfig,
    fc: FitnessConfig,
    ppl_batches: Vec<Vec<Vec<i64>>>,
    answers: Vec<AnswerBatch>,
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
    seed: u64,
    backend: String,
}

#[derive(Serialize)]
struct CandidateKey<'a> {
    #[serde(flatten)]
    base: &'a KeyBase,
    weights: String,
}

/// Where a candidate is evaluated: the held-out records and how their text is tokenized.
pub struct EvalData {
    /// Held-out records (the `val` split; `train` when a dataset has none).
    pub records: Vec<Record>,
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
        let mut records = load_all_records(data, Split::Val)?;
        if records.is_empty() {
            records = load_all_records(data, Split::Train)?;
        }
        Ok(Self {
            records,
            codec,
            data_digests: data.iter().map(|d| d.digest.to_hex()).collect(),
            tokenizer_digest: blake3::hash(&tk_bytes).to_hex().to_string(),
        })
    }
}

impl<'a> Fitness<'a> {
    /// Fix the evaluation batches and answer spans for candidates of `cfg`.
    pub fn prepare(
        ctx: &'a StepContext,
        fc: &FitnessConfig,
        cfg: &ModelConfig,
        data: &EvalData,
        seed: u64,
    ) -> Result<Self, OpError> {
        let (recs, codec) = (&data.records, &data.codec);
        if recs.is_empty() {
            return Err(OpError::user("the dataset has no records to evaluate on"));
        }
        let fc = fc.clone();
        let seq = fc.seq_len.min(cfg.max_seq);
        let pool = TokenPool::new(recs, |t| codec.encode(t));
        let ppl_batches = pool.even_batches(fc.eval_batches, fc.batch_size, seq, |index| {
            stream(seed, Stream::FitnessBatch { index })
        });
        let answers = answer_batches(recs, codec, fc.answers, fc.batch_size, seq);
        let backend =
            crate::device::resolve(ctx.device()).map_err(|e| OpError::user(e.to_string()))?;
        let key = KeyBase {
            fitness: fc.clone(),
            model: cfg.clone(),
            data: data.data_digests.clone(),
            tokenizer: data.tokenizer_digest.clone(),
            seed,
            backend: backend.class.to_string(),
        };
        Ok(Self {
            ctx,
            device: backend.device.inner(),
            cfg: cfg.clone(),
            fc,
            ppl_batches,
            answers,
            memo: ctx.memo("fitness", MEMO_VERSION)?,
            key,
        })
    }

    /// Run one candidate, given as safetensors bytes with `numel` parameters.
    fn measure(&self, bytes: Vec<u8>, numel: usize) -> Result<FitnessReport, String> {
        let device = &self.device;
        let cfg = &self.cfg;
        let mut model = TrmTitansMag::new(cfg, 0, device);
        crate::model::weights::load_exact(&mut model, bytes, "the candidate")
            .map_err(|e| e.to_string())?;
        let tables = Tables::new(cfg, device);
        let loss = super::eval_loss(&model, &self.ppl_batches, cfg.sup_steps, &tables, device);
        let perplexity = loss.exp();
        let (mut right, mut total) = (0usize, 0usize);
        for b in &self.answers {
            let n = b.rows[0].len();
            let x = crate::model::inputs::ids_tensor(&b.rows, device);
            let pred: Vec<i64> = model
                .forward_logits(x, cfg.sup_steps, &tables)
                .argmax(2)
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| format!("{e:?}"))?;
            for (r, targets) in b.targets.iter().enumerate() {
                total += 1;
                if targets.iter().all(|&(pos, tok)| pred[r * n + pos] == tok) {
                    right += 1;
                }
            }
        }
        let accuracy = right as f64 / total.max(1) as f64;
        let halting = super::halting(
            &model,
            &self.ppl_batches[0],
            cfg.act_threshold,
            self.fc.act_max_steps,
            &tables,
            device,
        );
        let latency = super::block_passes(cfg, halting.avg);
        let size_mb = numel as f64 * 4.0 / f64::from(1u32 << 20);
        let w = self.fc.weights.unwrap_or_else(|| fitness_weights(size_mb));
        Ok(FitnessReport {
            fitness: composite(w, perplexity, accuracy, latency, size_mb),
            perplexity,
            accuracy,
            latency,
            size_mb,
        })
    }
}

impl evolve::Evaluator for Fitness<'_> {
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
        let results: Vec<(usize, Result<FitnessReport, String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let mine: Vec<usize> = todo.iter().copied().skip(t).step_by(threads).collect();
                    let bytes = &bytes;
                    s.spawn(move || {
                        mine.into_iter()
                            .map(|i| {
                                let r =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        self.measure(bytes[i].clone(), models[i].numel())
                                    }))
                                    .unwrap_or_else(|_| Err("the forward pass panicked".into()));
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
