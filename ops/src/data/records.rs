//! The record format of every dataset artifact and reading it back: `train.jsonl`, `val.jsonl` and
//! `test.jsonl` of JSON-line [`Record`]s, which split a record belongs to, and the loaders the
//! ops that train or evaluate a model use.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::artifact::InputArtifact;
use crate::error::OpError;

/// One training/evaluation example, the record format of every dataset artifact (`*.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub category: String,
    /// 1 (easiest) to 3.
    pub difficulty: u8,
    /// The question as posed.
    pub prompt: String,
    /// The exact expected answer (compared after trimming).
    pub answer: String,
    /// The full text a language model trains on: prompt, worked solution, answer.
    pub text: String,
}

/// Which split a prompt belongs to: a pure function of its text.
pub fn split_of(prompt: &str, val_fraction: f64, test_fraction: f64) -> Split {
    let h = blake3::hash(prompt.as_bytes());
    let x =
        u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    if x < test_fraction {
        Split::Test
    } else if x < test_fraction + val_fraction {
        Split::Val
    } else {
        Split::Train
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        }
    }
}

/// The training texts of a dataset directory for `split`: the `text` field of each record of
/// `<split>.jsonl`; for datasets without split files (e.g. a `file:` corpus), the `train` split is
/// every `*.jsonl` record's `text` and every non-empty line of every `*.txt`.
pub fn read_texts(dir: &Path, split: Split) -> Result<Vec<String>, OpError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e| OpError::io(&p, e)
    };
    let parse = |path: &Path, out: &mut Vec<String>| -> Result<(), OpError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let r: Record = serde_json::from_str(line).map_err(|e| {
                OpError::user(format!(
                    "{}:{}: not a dataset record: {e}",
                    path.display(),
                    n + 1
                ))
            })?;
            out.push(r.text);
        }
        Ok(())
    };
    let mut out = Vec::new();
    let split_file = dir.join(format!("{}.jsonl", split.name()));
    if split_file.exists() {
        parse(&split_file, &mut out)?;
        return Ok(out);
    }
    if split != Split::Train || dir.join("train.jsonl").exists() {
        return Ok(out);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        match f.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => parse(&f, &mut out)?,
            Some("txt") => {
                let text = std::fs::read_to_string(&f).map_err(io(&f))?;
                out.extend(
                    text.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(str::to_owned),
                );
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The records of `split` of every dataset in `data`, in input order.
pub fn load_all_records(data: &[InputArtifact], split: Split) -> Result<Vec<Record>, OpError> {
    let mut out = Vec::new();
    for d in data {
        out.extend(load_records(&d.path, split)?);
    }
    Ok(out)
}

/// The records of `<dir>/<split>.jsonl` (none when the file does not exist).
pub fn load_records(dir: &Path, split: Split) -> Result<Vec<Record>, OpError> {
    let path = dir.join(format!("{}.jsonl", split.name()));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OpError::io(&path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l).map_err(|e| {
                OpError::user(format!(
                    "{}:{}: not a dataset record: {e}",
                    path.display(),
                    n + 1
                ))
            })
        })
        .collect()
}
