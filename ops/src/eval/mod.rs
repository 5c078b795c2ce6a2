//! Measuring a model, one home for every evaluation. Everything runs the model as it is deployed:
//! ACT inference ([`TrmTitansMag::infer`]) at the config's `act_threshold`, at most `sup_steps`
//! recursions (the same limit training supervises), each token stopping once its halting head
//! says so. Perplexity, answer accuracy, greedy decoding, halting statistics and latency all come
//! from that one path, so a model cannot look better on one measure because another ran it
//! differently.
//!
//! [`score`] gives per-row negative log-likelihoods (for perplexity and for paired bootstraps,
//! [`bootstrap`]), [`greedy_answer`] and [`math_accuracy`] decode, [`lm_report`] is what a trained
//! model's artifact carries, [`fitness`] scores merge candidates, and [`file`] is `forge eval`.

pub mod bootstrap;
pub mod file;
pub mod fitness;
pub mod generate;

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::{Value, json};

use crate::data::{Record, round_robin};
use crate::error::OpError;
use crate::model::decode::Decoder;
use crate::model::{InferOutput, ModelConfig, Tables, TrmTitansMag, fused, to_tensors};
use crate::text::TextCodec;

/// A model artifact loaded for inference: its config, tokenizer and weights on a device.
pub struct Loaded {
    /// The artifact's whole `config.json` (`cfg` is its `model` block).
    pub config: serde_json::Value,
    pub cfg: ModelConfig,
    pub codec: TextCodec,
    pub model: TrmTitansMag,
    pub device: Device,
}

/// Load the model artifact in `model_dir` (`config.json`, `tokenizer.json`, `model.safetensors`)
/// onto `device` (`cpu`, `cuda:N`, `auto`) for inference.
pub fn load_artifact(model_dir: &std::path::Path, device: &str) -> Result<Loaded, OpError> {
    let config = crate::model::files::read_config(model_dir)?;
    let cfg = crate::model::files::model_config(&config, model_dir)?;
    let codec = TextCodec::load(&model_dir.join("tokenizer.json"))?;
    let backend = crate::device::resolve(device).map_err(|e| OpError::user(e.to_string()))?;
    let device = backend.device.inner();
    let path = model_dir.join("model.safetensors");
    let model = load_weights(&cfg, &path, config.get("quantization").is_some(), &device)?;
    Ok(Loaded {
        config,
        cfg,
        codec,
        model,
        device,
    })
}

/// The weights file at `path` as a model of `cfg` for inference, streamed from the file (peak
/// memory about the model's own size): a `quantized` one with its ternary layers through the
/// packed kernel (W1.58A8) and its embedding as stored.
pub fn load_weights(
    cfg: &ModelConfig,
    path: &std::path::Path,
    quantized: bool,
    device: &Device,
) -> Result<TrmTitansMag, OpError> {
    let what = path.display().to_string();
    if quantized {
        let q = crate::quant::model::QuantizedModel::from_file(path).map_err(|e| match e {
            crate::quant::model::QuantizedFileError::Io { path, source } => {
                OpError::io(&path, source)
            }
            e => OpError::user(format!("{what}: {e}")),
        })?;
        crate::model::ternary::load_quantized(cfg, q, device)
    } else {
        crate::model::weights::model_from_file(cfg, path, &what, device)
    }
    .map_err(|e| OpError::user(e.to_string()))
}

/// ACT inference of `tokens` as deployed: the config's threshold and recursion limit.
pub fn act(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    tokens: Tensor<2, Int>,
    t: &Tables,
) -> InferOutput {
    model.infer(tokens, cfg.act_threshold, cfg.sup_steps, t)
}

/// The next-token logits forge computes for `text` as deployed (ACT, on the CPU), with the ids
/// they are for (`<s>` and the text's tokens), row-major `[ids, vocab]`: what an exported copy
/// of the model must reproduce.
pub fn logits_of_text(
    model_dir: &std::path::Path,
    text: &str,
) -> Result<(Vec<i64>, Vec<f32>), OpError> {
    let l = load_artifact(model_dir, "cpu")?;
    let mut ids = vec![l.codec.bos];
    let enc = l
        .codec
        .tokenizer
        .encode(text, false)
        .map_err(|e| OpError::user(format!("encoding the text: {e}")))?;
    ids.extend(enc.get_ids().iter().map(|&i| i64::from(i)));
    let n = ids.len();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), &l.device);
    let out = act(&l.model, &l.cfg, tokens, &Tables::new(&l.cfg, &l.device));
    let logits = out
        .logits
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| OpError::internal(format!("{e:?}")))?;
    Ok((ids, logits))
}

/// Held-out rows to score: `<s>`, a record's text, `</s>` (cut to `seq + 1` ids), padded with id 0
/// to the batch's longest row (padding is never a target, and a causal model cannot see it from
/// earlier positions), and per row the input positions whose argmax must give the record's
/// answer (empty when the record has none).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalBatch {
    pub rows: Vec<Vec<i64>>,
    /// Per row: (input position, the token it must predict) over the answer's span.
    pub answers: Vec<Vec<(usize, i64)>>,
}

/// One row's token ids and its answer positions (see [`EvalBatch::answers`]).
type Row = (Vec<i64>, Vec<(usize, i64)>);

/// Up to `n` records (round-robin over categories; the same ones for every model) as batches of
/// `batch` rows, longest first so rows of a batch are of similar length.
pub fn eval_batches(
    records: &[Record],
    codec: &TextCodec,
    n: usize,
    seq: usize,
    batch: usize,
) -> Vec<EvalBatch> {
    let mut rows: Vec<Row> = round_robin(records, n)
        .into_iter()
        .filter_map(|r| {
            let enc = codec.tokenizer.encode(r.text.as_str(), false).ok()?;
            let mut tokens = vec![codec.bos];
            tokens.extend(enc.get_ids().iter().map(|&i| i64::from(i)));
            tokens.push(codec.eos);
            tokens.truncate(seq + 1);
            if tokens.len() < 2 {
                return None;
            }
            // Token j of the text is at position j + 1; it is predicted from position j.
            let answer = r.answer.trim();
            let span = (!answer.is_empty())
                .then(|| r.text.rfind(answer).map(|s| (s, s + answer.len())))
                .flatten();
            let targets: Vec<(usize, i64)> = span
                .map(|(start, end)| {
                    enc.get_offsets()
                        .iter()
                        .enumerate()
                        .filter(|(_, (a, b))| *a < end && *b > start)
                        .map(|(j, _)| (j, i64::from(enc.get_ids()[j])))
                        .collect()
                })
                .unwrap_or_default();
            // An answer cut off by the row's end is not checked.
            let whole = targets.iter().all(|(j, _)| j + 1 < tokens.len());
            Some((tokens, if whole { targets } else { Vec::new() }))
        })
        .collect();
    rows.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
    rows.chunks(batch.max(1))
        .map(|c| {
            let len = c[0].0.len();
            EvalBatch {
                rows: c
                    .iter()
                    .map(|(t, _)| {
                        let mut t = t.clone();
                        t.resize(len, 0);
                        t
                    })
                    .collect(),
                answers: c.iter().map(|(_, a)| a.clone()).collect(),
            }
        })
        .collect()
}

/// What [`score`] measured on a set of rows.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// Per row: summed negative log-likelihood of its next-token targets (nats).
    pub nll: Vec<f64>,
    /// Per row: how many targets it has.
    pub tokens: Vec<usize>,
    /// Per row with an answer: whether the argmax predicted it, and its probability.
    pub answers: Vec<AnswerScore>,
    /// Per token: recursions run before halting.
    pub halting: Vec<f64>,
    /// Mean slot usage of the memory blocks (`None` without memory blocks).
    pub memory_usage: Option<f64>,
    /// Wall-clock seconds of inference (events only, never an artifact).
    pub seconds: f64,
}

impl Scores {
    /// Mean negative log-likelihood per token.
    pub fn loss(&self) -> f64 {
        self.nll.iter().sum::<f64>() / self.tokens.iter().sum::<usize>().max(1) as f64
    }
    pub fn perplexity(&self) -> f64 {
        self.loss().exp()
    }
    pub fn token_count(&self) -> usize {
        self.tokens.iter().sum()
    }
    pub fn halting_stats(&self) -> HaltingStats {
        HaltingStats::of(&self.halting)
    }
    /// Fraction of checked answers predicted whole (0 when none were checked).
    pub fn answer_accuracy(&self) -> f64 {
        self.answers.iter().filter(|a| a.correct).count() as f64 / self.answers.len().max(1) as f64
    }
    /// Mean probability the model gives each checked answer, whole (0 when none were checked):
    /// the expected accuracy of sampling the answer at temperature 1. Every answer moves it
    /// smoothly, where the argmax accuracy moves only when an answer flips.
    pub fn expected_answer_accuracy(&self) -> f64 {
        self.answers.iter().map(|a| a.log_prob.exp()).sum::<f64>()
            / self.answers.len().max(1) as f64
    }
}

/// One answer's teacher-forced check under ACT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerScore {
    /// Every answer token was the argmax prediction: what greedy decoding would produce.
    pub correct: bool,
    /// Log-probability of the whole answer span given what precedes it.
    pub log_prob: f64,
}

/// Score `batches` under ACT: per-row likelihood, halting, memory use, and answers.
pub fn score(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    batches: &[EvalBatch],
    t: &Tables,
    device: &Device,
) -> Scores {
    score_until(model, cfg, batches, t, device, &|| false).expect("never stopped")
}

/// [`score`], asking `stop` before each batch: `None` once it says to stop.
pub fn score_until(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    batches: &[EvalBatch],
    t: &Tables,
    device: &Device,
    stop: &dyn Fn() -> bool,
) -> Option<Scores> {
    let mut out = Scores::default();
    let mut usage = Vec::new();
    let t0 = Instant::now();
    for batch in batches {
        if stop() {
            return None;
        }
        let (x, y) = to_tensors(&batch.rows, device);
        let [b, s] = x.dims();
        let inf = act(model, cfg, x, t);
        let logp = fused::log_softmax(inf.logits, 2);
        let picked = logp
            .clone()
            .gather(2, y.clone().reshape([b, s, 1]))
            .reshape([b, s]);
        if batch.answers.iter().any(|a| !a.is_empty()) {
            let pred: Vec<i64> = logp
                .argmax(2)
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .expect("i64 predictions");
            let target_logp: Vec<f32> = picked
                .clone()
                .into_data()
                .try_to_vec()
                .expect("f32 log-probabilities");
            for (r, targets) in batch.answers.iter().enumerate() {
                if !targets.is_empty() {
                    // An answer token is the row's next token at its position, so its
                    // log-probability is the one the likelihood uses.
                    debug_assert!(targets.iter().all(|&(p, t)| batch.rows[r][p + 1] == t));
                    out.answers.push(AnswerScore {
                        correct: targets.iter().all(|&(p, t)| pred[r * s + p] == t),
                        log_prob: targets
                            .iter()
                            .map(|&(p, _)| f64::from(target_logp[r * s + p]))
                            .sum(),
                    });
                }
            }
        }
        let real = y.not_equal_elem(0).float();
        let nll: Vec<f32> = picked
            .mul(real.clone())
            .neg()
            .sum_dim(1)
            .into_data()
            .try_to_vec()
            .expect("f32 losses");
        let counts: Vec<f32> = real
            .sum_dim(1)
            .into_data()
            .try_to_vec()
            .expect("f32 counts");
        out.nll.extend(nll.iter().map(|v| f64::from(*v)));
        out.tokens.extend(counts.iter().map(|c| *c as usize));
        for (row, steps) in inf.halting_steps.iter().enumerate() {
            let real_len = counts[row] as usize;
            out.halting.extend(
                steps[..real_len.min(steps.len())]
                    .iter()
                    .map(|s| f64::from(*s)),
            );
        }
        usage.extend(inf.memory_usage);
    }
    out.memory_usage = (!usage.is_empty()).then(|| usage.iter().sum::<f64>() / usage.len() as f64);
    out.seconds = t0.elapsed().as_secs_f64();
    Some(out)
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
    pub cfg: &'a ModelConfig,
    pub eos: i64,
    pub tables: &'a Tables,
    pub device: &'a Device,
    pub decode: &'a dyn Fn(&[i64]) -> String,
}

/// Greedy-decode the answer of a math prompt under ACT (stopping at eos or after the `#### n`
/// line); returns the generated text.
pub fn greedy_answer(
    model: &TrmTitansMag,
    prompt_tokens: Vec<i64>,
    max_new: usize,
    d: &Decoding<'_>,
) -> String {
    let ids = greedy_ids(model, prompt_tokens, max_new, d, &|new| {
        answer_line_complete(&(d.decode)(new))
    });
    (d.decode)(&ids)
}

/// Whether generated `text` has a complete `#### <answer>` line (the point to stop decoding).
pub fn answer_line_complete(text: &str) -> bool {
    text.split("####")
        .nth(1)
        .is_some_and(|after| after.contains('\n'))
}

/// Greedy-decode under ACT after `prompt_tokens`, at most `max_new` tokens, until eos (not
/// included) or until `done(generated so far)`; returns the generated ids.
pub fn greedy_ids(
    model: &TrmTitansMag,
    prompt_tokens: Vec<i64>,
    max_new: usize,
    d: &Decoding<'_>,
    done: &dyn Fn(&[i64]) -> bool,
) -> Vec<i64> {
    greedy_batch(model, vec![prompt_tokens], max_new, d, done)
        .pop()
        .expect("one row")
}

/// [`greedy_ids`] for many prompts at once, decoded incrementally ([`Decoder`]): the prompts'
/// common length is read in one pass, then every unfinished row takes one token per step — the
/// next token of its prompt while it has one, else its own argmax — and finished rows leave the
/// batch. A row that reaches `max_seq` goes on with a window of its last `max_seq` tokens,
/// recomputed each step ([`greedy_windowed`]).
pub fn greedy_batch(
    model: &TrmTitansMag,
    prompts: Vec<Vec<i64>>,
    max_new: usize,
    d: &Decoding<'_>,
    done: &dyn Fn(&[i64]) -> bool,
) -> Vec<Vec<i64>> {
    assert!(prompts.iter().all(|p| !p.is_empty()), "empty prompt");
    let starts: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut rows = prompts;
    let common = starts.iter().copied().min().unwrap_or(0).min(d.cfg.max_seq);
    let mut open: Vec<usize> = (0..rows.len()).collect();
    if max_new == 0 || open.is_empty() {
        return vec![Vec::new(); rows.len()];
    }
    let mut dec = Decoder::new(model, d.cfg, d.tables, open.len(), d.device);
    let prefix: Vec<i64> = rows.iter().flat_map(|r| r[..common].to_vec()).collect();
    let mut logits = dec
        .extend(Tensor::from_data(
            TensorData::new(prefix, [rows.len(), common]),
            d.device,
        ))
        .logits;
    loop {
        let pos = dec.len();
        let [_, n, _] = logits.dims();
        let pred: Vec<i64> = last_argmax(logits, n);
        let (mut keep, mut feed) = (Vec::new(), Vec::new());
        for (k, &i) in open.iter().enumerate() {
            let next = if pos < starts[i] {
                rows[i][pos]
            } else {
                if pred[k] == d.eos {
                    continue;
                }
                rows[i].push(pred[k]);
                let generated = &rows[i][starts[i]..];
                if generated.len() >= max_new || done(generated) {
                    continue;
                }
                pred[k]
            };
            keep.push(k);
            feed.push(next);
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < open.len() {
            dec.retain(&keep);
            open = keep.iter().map(|&k| open[k]).collect();
        }
        if dec.room() == 0 {
            greedy_windowed(model, &mut rows, &starts, &open, max_new, d, done);
            break;
        }
        let x = Tensor::from_data(TensorData::new(feed, [open.len(), 1]), d.device);
        logits = dec.extend(x).logits;
    }
    rows.into_iter()
        .zip(starts)
        .map(|(mut r, s)| r.split_off(s))
        .collect()
}

/// Each row's argmax at position `n − 1` of `logits` (`[b, n, vocab]`).
fn last_argmax(logits: Tensor<3>, n: usize) -> Vec<i64> {
    logits
        .narrow(1, n - 1, 1)
        .argmax(2)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("i64 predictions")
}

/// Greedy decoding past `max_seq` for the rows `open` of `rows` (each row its own last `max_seq`
/// tokens, left-aligned and padded on the right, which a causal model cannot see), recomputed
/// each step, until each has `max_new` tokens after its start, eos, or `done`.
fn greedy_windowed(
    model: &TrmTitansMag,
    rows: &mut [Vec<i64>],
    starts: &[usize],
    open: &[usize],
    max_new: usize,
    d: &Decoding<'_>,
    done: &dyn Fn(&[i64]) -> bool,
) {
    let mut open = open.to_vec();
    while !open.is_empty() {
        let windows: Vec<&[i64]> = open
            .iter()
            .map(|&i| &rows[i][rows[i].len().saturating_sub(d.cfg.max_seq)..])
            .collect();
        let width = windows.iter().map(|w| w.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(windows.len() * width);
        for w in &windows {
            ids.extend_from_slice(w);
            ids.resize(ids.len() + width - w.len(), 0);
        }
        let lens: Vec<usize> = windows.iter().map(|w| w.len()).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [lens.len(), width]), d.device);
        let pred: Vec<i64> = act(model, d.cfg, x, d.tables)
            .logits
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("i64 predictions");
        let mut still = Vec::with_capacity(open.len());
        for (k, &i) in open.iter().enumerate() {
            let next = pred[k * width + lens[k] - 1];
            if next == d.eos {
                continue;
            }
            rows[i].push(next);
            let generated = &rows[i][starts[i]..];
            if generated.len() < max_new && !done(generated) {
                still.push(i);
            }
        }
        open = still;
    }
}

/// How many recursions tokens ran before halting under ACT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaltingStats {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub variance: f64,
    /// Fraction of tokens that halted after the first recursion.
    pub first_step: f64,
}

impl HaltingStats {
    pub fn of(steps: &[f64]) -> Self {
        let n = steps.len().max(1) as f64;
        let avg = steps.iter().sum::<f64>() / n;
        Self {
            avg,
            min: steps.iter().copied().fold(f64::INFINITY, f64::min),
            max: steps.iter().copied().fold(0.0, f64::max),
            variance: steps.iter().map(|h| (h - avg).powi(2)).sum::<f64>() / n,
            first_step: steps.iter().filter(|s| **s <= 1.0).count() as f64 / n,
        }
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
        .map(|(a, _)| (*a).to_string());
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

/// What a trained language model's artifact reports about it: perplexity and halting on the
/// validation batches, perplexity and greedy math accuracy on the test split.
#[derive(Debug, Clone)]
pub struct LmReport {
    pub val: Scores,
    pub test: Scores,
    pub math: MathScore,
}

/// What [`lm_report`] evaluates on.
pub struct LmEvalSet<'a> {
    /// Validation rows.
    pub val: &'a [EvalBatch],
    /// Test rows.
    pub test: &'a [EvalBatch],
    /// Test records for answer accuracy.
    pub test_records: &'a [Record],
    pub math_limit: usize,
    pub math_max_difficulty: u8,
}

/// Validation and test perplexity, halting, memory usage and test math accuracy of `model`.
pub fn lm_report(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    set: &LmEvalSet<'_>,
    codec: &TextCodec,
    device: &Device,
    each: &mut dyn FnMut(usize, usize) -> Result<(), OpError>,
) -> Result<LmReport, OpError> {
    let tables = Tables::new(cfg, device);
    let val = score(model, cfg, set.val, &tables, device);
    let test = score(model, cfg, set.test, &tables, device);
    let decode = |ids: &[i64]| codec.decode(ids);
    let decoding = Decoding {
        cfg,
        eos: codec.eos,
        tables: &tables,
        device,
        decode: &decode,
    };
    let math = math_accuracy(
        model,
        set.test_records,
        set.math_max_difficulty,
        set.math_limit,
        codec,
        &decoding,
        each,
    )?;
    Ok(LmReport { val, test, math })
}

impl LmReport {
    /// The report under the seed's metric names, in a fixed order.
    pub fn metrics(&self, cfg: &ModelConfig, params: usize) -> Vec<(&'static str, Value)> {
        let h = self.val.halting_stats();
        let usage = self.val.memory_usage.unwrap_or(0.0);
        vec![
            ("val/loss", json!(self.val.loss())),
            ("val/perplexity", json!(self.val.perplexity())),
            ("val/tokens", json!(self.val.token_count())),
            ("test/loss", json!(self.test.loss())),
            ("test/perplexity", json!(self.test.perplexity())),
            ("test/tokens", json!(self.test.token_count())),
            ("test/answer_accuracy", json!(self.test.answer_accuracy())),
            ("test/answers", json!(self.test.answers.len())),
            ("test/math_accuracy", json!(self.math.accuracy())),
            (
                "test/math_majority_baseline",
                json!(self.math.majority_baseline()),
            ),
            ("test/math_evaluated", json!(self.math.evaluated)),
            ("test/math_max_difficulty", json!(self.math.max_difficulty)),
            ("act/avg_halting_steps", json!(h.avg)),
            ("act/min_halting_steps", json!(h.min)),
            ("act/max_halting_steps", json!(h.max)),
            ("act/halting_variance", json!(h.variance)),
            ("act/halted_at_first_step", json!(h.first_step)),
            ("ltm/memory_usage", json!(usage)),
            ("diversity/avg_halting_steps", json!(h.avg)),
            ("diversity/ltm_usage", json!(usage)),
            // Deterministic stand-in for inference time: block passes per token under ACT.
            (
                "diversity/inference_passes",
                json!(block_passes(cfg, h.avg)),
            ),
            ("final/total_params", json!(params)),
            (
                "final/model_size_mb",
                json!(params as f64 * 4.0 / f64::from(1u32 << 20)),
            ),
        ]
    }

    /// Wall-clock ACT inference per token in milliseconds (an event, never an artifact).
    pub fn inference_ms_per_token(&self) -> f64 {
        self.val.seconds * 1000.0 / self.val.token_count().max(1) as f64
    }
}

/// Every metric name [`LmReport::metrics`] writes (for plan-time checks of `validate` steps).
pub const LM_REPORT_METRICS: &[&str] = &[
    "val/loss",
    "val/perplexity",
    "val/tokens",
    "test/loss",
    "test/perplexity",
    "test/tokens",
    "test/answer_accuracy",
    "test/answers",
    "test/math_accuracy",
    "test/math_majority_baseline",
    "test/math_evaluated",
    "test/math_max_difficulty",
    "act/avg_halting_steps",
    "act/min_halting_steps",
    "act/max_halting_steps",
    "act/halting_variance",
    "act/halted_at_first_step",
    "ltm/memory_usage",
    "diversity/avg_halting_steps",
    "diversity/ltm_usage",
    "diversity/inference_passes",
    "final/total_params",
    "final/model_size_mb",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelConfig {
        ModelConfig {
            sup_steps: 3,
            ..ModelConfig::micro()
        }
    }

    /// Mean next-token NLL of `rows` from `steps` fixed recursions (no halting).
    fn fixed_depth_loss(
        model: &TrmTitansMag,
        cfg: &ModelConfig,
        rows: &[Vec<i64>],
        steps: usize,
    ) -> f64 {
        let dev = crate::device::test_device().inner();
        let t = Tables::new(cfg, &dev);
        let (x, y) = to_tensors(rows, &dev);
        let [b, s] = x.dims();
        let logp = fused::log_softmax(model.forward_logits(x, steps, &t), 2);
        let picked = logp.gather(2, y.reshape([b, s, 1]));
        -(picked.mean().into_scalar::<f32>() as f64)
    }

    #[test]
    fn evaluation_runs_the_model_as_deployed_under_act() {
        // The same model and rows: a threshold every token reaches at once is one recursion, one
        // none reaches is `sup_steps` of them — and the scores are exactly those depths'.
        let dev = crate::device::test_device().inner();
        let rows: Vec<Vec<i64>> = (0..3)
            .map(|r| (0..12).map(|i| 1 + (i * 7 + r * 3) % 39).collect())
            .collect();
        let batches = vec![EvalBatch {
            answers: vec![Vec::new(); rows.len()],
            rows: rows.clone(),
        }];
        let at = |threshold: f64| {
            let cfg = ModelConfig {
                act_threshold: threshold,
                ..small()
            };
            let model = TrmTitansMag::new(&cfg, 3, &dev);
            let s = score(&model, &cfg, &batches, &Tables::new(&cfg, &dev), &dev);
            (s, model, cfg)
        };
        let (eager, m0, c0) = at(0.0);
        let (never, m1, c1) = at(1.01);
        assert_eq!(eager.halting_stats().avg, 1.0);
        assert_eq!(
            never.halting_stats().avg,
            3.0,
            "at most sup_steps recursions"
        );
        assert!((eager.loss() - fixed_depth_loss(&m0, &c0, &rows, 1)).abs() < 1e-5);
        assert!((never.loss() - fixed_depth_loss(&m1, &c1, &rows, 3)).abs() < 1e-5);
        assert!(
            (eager.loss() - never.loss()).abs() > 1e-6,
            "depth changes the loss"
        );
        assert_eq!(eager.token_count(), 3 * 11);
    }

    #[test]
    fn expected_answer_accuracy_is_the_mean_probability_of_each_whole_answer() {
        // Answers taken from the model's own argmax are right, others wrong; the expected
        // accuracy is the mean over answers of the product of their tokens' probabilities,
        // computed here by hand from the same logits.
        let dev = crate::device::test_device().inner();
        let cfg = small();
        let model = TrmTitansMag::new(&cfg, 5, &dev);
        let t = Tables::new(&cfg, &dev);
        let base: Vec<Vec<i64>> = (0..2)
            .map(|r| (0..10).map(|i| 1 + (i * 5 + r * 7) % 39).collect())
            .collect();
        let s = base[0].len() - 1;
        let v = cfg.vocab_size;
        let logp_of = |rows: &[Vec<i64>]| -> Vec<f32> {
            let (x, _) = to_tensors(rows, &dev);
            fused::log_softmax(act(&model, &cfg, x, &t).logits, 2)
                .into_data()
                .try_to_vec()
                .unwrap()
        };
        let argmax = |lp: &[f32], r: usize, p: usize| {
            let row = &lp[(r * s + p) * v..(r * s + p + 1) * v];
            (0..v).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as i64
        };
        // Answers at positions 5 and 6 (tokens 6 and 7): row 0's is what the model predicts
        // (built token by token, as greedy decoding would), row 1's second token is not.
        let mut rows = base.clone();
        let lp = logp_of(&rows);
        for (r, row) in rows.iter_mut().enumerate() {
            row[6] = argmax(&lp, r, 5);
        }
        let lp = logp_of(&rows);
        rows[0][7] = argmax(&lp, 0, 6);
        rows[1][7] = 1 + argmax(&lp, 1, 6) % 39;
        // A causal model's predictions at positions ≤ 6 do not see token 7.
        let logp = logp_of(&rows);
        let answers = vec![
            vec![(5, rows[0][6]), (6, rows[0][7])],
            vec![(5, rows[1][6]), (6, rows[1][7])],
        ];
        let scored = |rows: &[Vec<i64>], answers: Vec<Vec<(usize, i64)>>| {
            let b = vec![EvalBatch {
                rows: rows.to_vec(),
                answers,
            }];
            score(&model, &cfg, &b, &t, &dev)
        };
        let got = scored(&rows, answers.clone());
        assert!((got.answer_accuracy() - 0.5).abs() < 1e-12);
        let p = |r: usize, pos: usize, tok: i64| f64::from(logp[(r * s + pos) * v + tok as usize]);
        let by_hand = answers
            .iter()
            .enumerate()
            .map(|(r, a)| {
                a.iter()
                    .map(|&(pos, tok)| p(r, pos, tok))
                    .sum::<f64>()
                    .exp()
            })
            .sum::<f64>()
            / 2.0;
        assert!((got.expected_answer_accuracy() - by_hand).abs() < 1e-5);
        // It moves with the answers' probability and only then: scoring the same rows without
        // answer spans leaves the likelihood as it was.
        let none = scored(&rows, vec![Vec::new(); 2]);
        assert_eq!(none.nll, got.nll);
        assert_eq!(none.expected_answer_accuracy(), 0.0);
    }

    #[test]
    fn batched_greedy_decoding_gives_each_prompts_own_tokens() {
        let dev = crate::device::test_device().inner();
        let cfg = ModelConfig {
            max_seq: 12,
            ..small()
        };
        let model = TrmTitansMag::new(&cfg, 9, &dev);
        let tables = Tables::new(&cfg, &dev);
        let decode = |ids: &[i64]| format!("{ids:?}");
        let d = Decoding {
            cfg: &cfg,
            eos: 2,
            tables: &tables,
            device: &dev,
            decode: &decode,
        };
        // Prompts of different lengths; 10 new tokens push the longest past max_seq.
        let prompts: Vec<Vec<i64>> =
            vec![vec![1, 7], vec![1, 9, 4, 5, 6, 11, 12], vec![1, 30, 31, 32]];
        let never = |_: &[i64]| false;
        let alone: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| greedy_ids(&model, p.clone(), 10, &d, &never))
            .collect();
        assert_eq!(greedy_batch(&model, prompts.clone(), 10, &d, &never), alone);
        // The same tokens as recomputing every prefix in full at every step.
        let mut recomputed = prompts.clone();
        let starts: Vec<usize> = prompts.iter().map(Vec::len).collect();
        greedy_windowed(&model, &mut recomputed, &starts, &[0, 1, 2], 10, &d, &never);
        let recomputed: Vec<Vec<i64>> = recomputed
            .into_iter()
            .zip(&starts)
            .map(|(mut r, &s)| r.split_off(s))
            .collect();
        assert_eq!(alone, recomputed);
        assert!(
            alone.iter().all(|a| a.len() == 10),
            "eos never predicted here"
        );
        // A row that is done stops growing; the others go on.
        let short = |new: &[i64]| new.len() >= 3;
        let got = greedy_batch(&model, prompts, 10, &d, &short);
        for (g, a) in got.iter().zip(&alone) {
            assert_eq!(g[..], a[..g.len()]);
            assert!(g.len() <= 3);
        }
    }

    #[test]
    fn answers_are_parsed_after_the_marker() {
        assert_eq!(parse_answer("3 + 4 = 7\n#### 7\n").as_deref(), Some("7"));
        assert_eq!(parse_answer("no marker"), None);
        assert_eq!(parse_answer("#### x"), None);
    }
}
