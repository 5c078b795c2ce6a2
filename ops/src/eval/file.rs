//! `forge eval`: one model artifact on a file of records, as deployed (ACT inference): perplexity
//! with its 95% interval and, for records whose answer appears in their text, answer accuracy by
//! greedy decoding. Deterministic: the same model and records give the same numbers.

use std::path::Path;

use serde::Serialize;

use super::bootstrap::{Estimate, perplexity};
use super::{Decoding, HaltingStats, score};
use crate::data::{Record, round_robin};
use crate::error::OpError;
use crate::model::{ModelConfig, Tables, TrmTitansMag};
use crate::text::TextCodec;

/// What to evaluate and how much of it.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Records scored at most (round-robin over categories).
    pub limit: usize,
    /// Answers decoded at most (0: none).
    pub answers: usize,
    pub seq_len: usize,
    pub batch_size: usize,
    /// The step's device string (`cpu`, `cuda:N`, `auto`).
    pub device: String,
}

/// What `forge eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    pub perplexity: Estimate,
    pub loss: f64,
    pub rows: usize,
    pub tokens: usize,
    /// Answer accuracy by greedy decoding, when any record had an answer to check.
    pub answer_accuracy: Option<f64>,
    pub answers_checked: usize,
    pub answers_right: usize,
    pub avg_halting_steps: f64,
    pub act_threshold: f64,
    pub max_recursions: usize,
}

/// Records from a file: `*.jsonl` of records (each with `text`, or `prompt` and `answer`; the
/// other fields optional), or any other text file, one text per non-empty line.
pub fn read_records(path: &Path) -> Result<Vec<Record>, OpError> {
    let text = std::fs::read_to_string(path).map_err(|e| OpError::io(path, e))?;
    let lines = text.lines().filter(|l| !l.trim().is_empty()).enumerate();
    if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        return Ok(lines
            .map(|(i, l)| Record {
                id: i.to_string(),
                category: "text".into(),
                difficulty: 1,
                prompt: String::new(),
                answer: String::new(),
                text: l.to_string(),
            })
            .collect());
    }
    lines
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).map_err(|e| {
                OpError::user(format!("{}:{}: not JSON: {e}", path.display(), i + 1))
            })?;
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let (prompt, answer) = (field("prompt"), field("answer"));
            let text = match v["text"].as_str() {
                Some(t) => t.to_string(),
                None if !prompt.is_empty() => format!("{prompt}\n{answer}"),
                None => {
                    return Err(OpError::user(format!(
                        "{}:{}: a record needs `text`, or `prompt` and `answer`",
                        path.display(),
                        i + 1
                    )));
                }
            };
            Ok(Record {
                id: v["id"]
                    .as_str()
                    .map_or_else(|| i.to_string(), str::to_owned),
                category: v["category"].as_str().unwrap_or("text").to_string(),
                difficulty: v["difficulty"].as_u64().unwrap_or(1) as u8,
                prompt,
                answer,
                text,
            })
        })
        .collect()
}

/// Evaluate the model artifact in `model_dir` on `records`.
pub fn evaluate(
    model_dir: &Path,
    records: &[Record],
    o: &EvalOptions,
) -> Result<EvalSummary, OpError> {
    let super::Loaded {
        cfg,
        codec,
        model,
        device,
        ..
    } = super::load_artifact(model_dir, &o.device)?;
    let seq = o.seq_len.min(cfg.max_seq);
    let tables = Tables::new(&cfg, &device);
    let rows = super::eval_batches(records, &codec, o.limit, seq, o.batch_size);
    if rows.is_empty() {
        return Err(OpError::user("no records to evaluate"));
    }
    let scores = score(&model, &cfg, &rows, &tables, &device);
    let (right, checked) =
        greedy_answers(&model, &cfg, records, &codec, o.answers, &tables, &device);
    Ok(EvalSummary {
        perplexity: perplexity(&scores, 1000, 0),
        loss: scores.loss(),
        rows: scores.nll.len(),
        tokens: scores.token_count(),
        answer_accuracy: (checked > 0).then(|| right as f64 / checked as f64),
        answers_checked: checked,
        answers_right: right,
        avg_halting_steps: HaltingStats::of(&scores.halting).avg,
        act_threshold: cfg.act_threshold,
        max_recursions: cfg.sup_steps,
    })
}

/// Greedy-decode the answers of up to `n` records whose answer appears in their text: the model
/// reads the text up to the answer and must continue with it. Returns (right, checked).
fn greedy_answers(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    records: &[Record],
    codec: &TextCodec,
    n: usize,
    tables: &Tables,
    device: &burn::tensor::Device,
) -> (usize, usize) {
    let decode = |ids: &[i64]| codec.decode(ids);
    let d = Decoding {
        cfg,
        eos: codec.eos,
        tables,
        device,
        decode: &decode,
    };
    let with_answers: Vec<Record> = records
        .iter()
        .filter(|r| !r.answer.trim().is_empty() && r.text.rfind(r.answer.trim()).is_some())
        .cloned()
        .collect();
    let (mut right, mut checked) = (0, 0);
    for r in round_robin(&with_answers, n) {
        let answer = r.answer.trim();
        let start = r.text.rfind(answer).expect("filtered");
        let prompt = codec.encode(&r.text[..start]);
        let prompt = prompt[..prompt.len() - 1].to_vec(); // drop eos: the answer follows
        let want = codec.encode(answer).len().saturating_sub(2) + 2;
        let got = continuation(model, prompt, want, &d);
        checked += 1;
        if got.trim_start().starts_with(answer) {
            right += 1;
        }
    }
    (right, checked)
}

/// Greedy continuation of `prompt` by up to `max_new` tokens under ACT.
fn continuation(
    model: &TrmTitansMag,
    prompt: Vec<i64>,
    max_new: usize,
    d: &Decoding<'_>,
) -> String {
    (d.decode)(&super::greedy_ids(model, prompt, max_new, d, &|_| false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_from_jsonl_or_plain_text() {
        let d = tempfile::tempdir().unwrap();
        let jsonl = d.path().join("r.jsonl");
        std::fs::write(
            &jsonl,
            "{\"prompt\": \"2+2?\", \"answer\": \"4\"}\n{\"text\": \"free text\"}\n",
        )
        .unwrap();
        let r = read_records(&jsonl).unwrap();
        assert_eq!(r[0].text, "2+2?\n4");
        assert_eq!(r[0].answer, "4");
        assert_eq!(r[1].text, "free text");
        let txt = d.path().join("c.txt");
        std::fs::write(&txt, "one\n\ntwo\n").unwrap();
        let t = read_records(&txt).unwrap();
        assert_eq!(
            t.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        std::fs::write(&jsonl, "{\"id\": 1}\n").unwrap();
        assert!(read_records(&jsonl).is_err());
    }
}
