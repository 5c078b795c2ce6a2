//! Run records: one directory per `forge apply` under `runs/`, holding `run.json` (a summary of
//! every step: its key, status and outputs — what `gc` keeps alive) and `events.jsonl` (every
//! event of the run, one JSON object a line, flushed as it happens so a crash keeps them).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::digest::{ObjectDigest, StepKey};
use crate::error::{IoContext, Result};
use crate::store::{Store, now_ms, read_dir_sorted, read_json_opt};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub pipeline: String,
    pub pipeline_path: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    /// "running", "succeeded", "failed", "cancelled".
    pub status: String,
    pub steps: Vec<RunStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStep {
    pub id: String,
    pub op: String,
    pub key: Option<StepKey>,
    /// "cached", "ran", "failed", "cancelled", "skipped", "pending".
    pub status: String,
    pub outputs: BTreeMap<String, ObjectDigest>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

/// An open run: append events, rewrite the summary.
#[derive(Debug)]
pub struct RunWriter {
    pub id: String,
    dir: PathBuf,
    events: File,
}

impl RunWriter {
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Append one event line; flushed immediately.
    pub fn append_event(&mut self, line: &str) -> Result<()> {
        let p = self.dir.join("events.jsonl");
        self.events.write_all(line.as_bytes()).at(&p)?;
        self.events.write_all(b"\n").at(&p)?;
        self.events.flush().at(&p)
    }

    pub fn write_summary(&self, s: &RunSummary) -> Result<()> {
        let p = self.dir.join("run.json");
        write_atomic(
            &p,
            &serde_json::to_vec_pretty(s).expect("run summary serializes"),
        )
        .at(&p)
    }
}

impl Store {
    /// Start a new run record. Ids sort by start time.
    pub fn new_run(&self) -> Result<RunWriter> {
        let id = format!("{:013}-{}", now_ms(), std::process::id());
        let dir = self.root().join("runs").join(&id);
        fs::create_dir_all(&dir).at(&dir)?;
        let p = dir.join("events.jsonl");
        let events = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .at(&p)?;
        Ok(RunWriter { id, dir, events })
    }

    /// All run summaries, oldest first.
    pub fn runs(&self) -> Result<Vec<RunSummary>> {
        let mut out = Vec::new();
        for d in read_dir_sorted(&self.root().join("runs"))? {
            if let Some(s) = read_json_opt::<RunSummary>(&d.join("run.json"), "run summary")? {
                out.push(s);
            }
        }
        Ok(out)
    }
}
