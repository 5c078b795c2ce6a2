//! `forge eval`: a model artifact on held-out data, as it is deployed — resolving the model (a
//! step's result or a directory) and the data (a file, a dataset directory, or a dataset step's
//! split), running `forge_ops::eval::file`, and printing the result.

use std::path::{Path, PathBuf};

use clap::Args;
use forge_ops::OpRegistry;
use forge_ops::data::{Split, load_records};
use forge_ops::eval::file::{EvalOptions, EvalSummary, evaluate, read_records};

use crate::exit::INVALID;
use crate::lookup::{artifact_dir, eprint_error, op_failure};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model: a step id (its result in the store) or a model artifact directory.
    pub model: String,
    /// The records: a `.jsonl` file (`text`, or `prompt` and `answer`), a text file (one text
    /// per line), a dataset directory, or a dataset step's id.
    #[arg(long)]
    pub data: String,
    /// Which split of a dataset.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Records scored at most.
    #[arg(long, default_value_t = 512)]
    pub limit: usize,
    /// Answers checked by greedy decoding at most (0: none).
    #[arg(long, default_value_t = 100)]
    pub answers: usize,
    /// Longest row, in tokens.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The pipeline a step id belongs to (when several have it).
    #[arg(long, short)]
    pub pipeline: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Run `forge eval`; the exit code.
pub fn run(store: &Path, a: &EvalArgs, registry: &OpRegistry) -> Result<u8, u8> {
    let resolve = |what: &str| artifact_dir(store, what, a.pipeline.as_deref(), registry);
    let model = resolve(&a.model)?;
    let data = resolve(&a.data)?;
    let split = match a.split.as_str() {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        other => {
            eprint_error(
                &format!("unknown split `{other}`"),
                Some("use train, val or test"),
            );
            return Err(INVALID);
        }
    };
    let records = if data.is_dir() {
        load_records(&data, split)
    } else {
        read_records(&data)
    }
    .map_err(|e| op_failure(&e))?;
    if records.is_empty() {
        eprint_error(
            &format!("no records in `{}` (split {})", data.display(), a.split),
            Some("a dataset directory holds train.jsonl, val.jsonl and test.jsonl"),
        );
        return Err(INVALID);
    }
    let opts = EvalOptions {
        limit: a.limit,
        answers: a.answers,
        seq_len: a.seq_len,
        batch_size: 16,
        device: a.device.clone(),
    };
    let summary = evaluate(&model, &records, &opts).map_err(|e| op_failure(&e))?;
    if a.json {
        let doc = serde_json::json!({ "model": model, "data": data, "split": a.split, "result": summary });
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    } else {
        print!("{}", text(&a.model, &a.data, &a.split, &summary));
    }
    Ok(0)
}

/// The human report.
pub fn text(model: &str, data: &str, split: &str, s: &EvalSummary) -> String {
    let p = &s.perplexity;
    let mut out = format!(
        "{model} on {data} ({split}): {} rows, {} tokens\n  perplexity  {:.3}  (95% CI {:.3}–{:.3})  loss {:.4} nats/token\n",
        s.rows, s.tokens, p.value, p.lo, p.hi, s.loss
    );
    if let Some(acc) = s.answer_accuracy {
        out.push_str(&format!(
            "  answers     {acc:.3}  ({} of {} by greedy decoding)\n",
            s.answers_right, s.answers_checked
        ));
    }
    out.push_str(&format!(
        "  halting     {:.2} recursions per token (ACT threshold {}, at most {})\n",
        s.avg_halting_steps, s.act_threshold, s.max_recursions
    ));
    out
}
