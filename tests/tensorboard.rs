//! TensorBoard files read back with TensorBoard's own reader: `apply` writes one event file per
//! step instance under the run's directory as it goes (matrix instances as separate runs that
//! overlay), with every metric event and each finished step's results; `forge export-metrics`
//! writes the same numbers as TensorBoard files, CSV or JSON lines.
//!
//! Needs Python with `tensorboard`: `$FORGE_TENSORBOARD_PYTHON`, installed by
//! `.ci/install-tensorboard` (which also sets `FORGE_REQUIRE_TENSORBOARD=1`, so CI fails rather
//! than skips without it). The CSV/JSON checks run without it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Project, stderr};

const PIPELINE: &str = r#"
version: 1
name: tb
phases:
  p:
    steps:
      corpus: { op: download, with: { source: "builtin:math", samples: 400 } }
      tok: { op: tokenizer, inputs: { data: corpus }, with: { vocab_size: 320 } }
      model:
        op: train
        inputs: { data: corpus, tokenizer: tok }
        matrix: { v: [{ name: a, seed: 1 }, { name: b, seed: 2 }] }
        seed: "${matrix.v.seed}"
        with:
          model: { preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }
          steps: 6
          batch_size: 4
          seq_len: 32
          log_every: 2
          math_eval: 2
          eval_records: 8
"#;

/// The Python to read event files with, or `None` (skipped) when none has tensorboard.
fn python() -> Option<String> {
    common::python_with(
        "FORGE_TENSORBOARD_PYTHON",
        "tensorboard",
        "FORGE_REQUIRE_TENSORBOARD",
        ".ci/install-tensorboard",
    )
}

/// Every scalar under `dir` as TensorBoard reads it: run (sub-directory) → tag → (step, value).
const READ: &str = r#"
import json, os, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
root, out = sys.argv[1], {}
for run in sorted(os.listdir(root)):
    acc = EventAccumulator(os.path.join(root, run), size_guidance={"scalars": 0})
    acc.Reload()
    out[run] = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
print(json.dumps(out))
"#;

type Scalars = BTreeMap<String, BTreeMap<String, Vec<(i64, f64)>>>;

fn read_board(python: &str, dir: &Path) -> Scalars {
    let out = Command::new(python)
        .args(["-c", READ])
        .arg(dir)
        .env_remove("PYTHONPATH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What the run's `events.jsonl` says: step → tag → (at, value) for metric events.
fn logged(run_dir: &Path) -> BTreeMap<String, BTreeMap<String, Vec<(i64, f64)>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<(i64, f64)>>> = BTreeMap::new();
    for line in std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap()
        .lines()
    {
        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
        if ev["event"] == "metric" && ev["at"].is_u64() {
            out.entry(ev["step"].as_str().unwrap().into())
                .or_default()
                .entry(ev["name"].as_str().unwrap().into())
                .or_default()
                .push((ev["at"].as_i64().unwrap(), ev["value"].as_f64().unwrap()));
        }
    }
    out
}

fn only_run(p: &Project) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(p.store().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);
    runs[0].clone()
}

/// The recorded results (`metrics.json`) of step `id`.
fn results(p: &Project, id: &str) -> serde_json::Map<String, serde_json::Value> {
    let out = p.run(&["show", id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["metrics"].as_object().unwrap().clone()
}

#[test]
fn apply_writes_tensorboard_files_and_export_metrics_writes_every_format() {
    let p = Project::new();
    p.write("tb.yaml", PIPELINE);
    p.apply_ok("tb.yaml", &[]);
    let run = only_run(&p);
    let logged = logged(&run);
    let ids = ["p.model[v=a]", "p.model[v=b]"];
    for id in ids {
        assert!(
            logged[id]["train/loss"].len() >= 3,
            "{id} logged its loss every 2 of 6 steps"
        );
    }

    // CSV and JSON lines: every metric event and every numeric result, one row each.
    for (format, file) in [("csv", "metrics.csv"), ("jsonl", "metrics.jsonl")] {
        let out = p.run(&["export-metrics", "latest", format, "--format", format]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = std::fs::read_to_string(p.path().join(format).join(file)).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        let events = std::fs::read_to_string(run.join("events.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains(r#""event":"metric""#))
            .count();
        let numbers: usize = ["p.corpus", "p.tok", ids[0], ids[1]]
            .iter()
            .map(|id| results(&p, id).values().filter(|v| v.is_number()).count())
            .sum();
        let header = usize::from(format == "csv");
        assert_eq!(rows.len(), header + events + numbers, "{format}");
        if format == "csv" {
            assert_eq!(rows[0], "step,name,at,value,ts_unix_ms,source");
            assert!(
                rows.iter()
                    .any(|r| r.starts_with("p.model[v=a],train/loss,2,")),
                "{text}"
            );
        }
    }
    let refused = p.run(&["export-metrics", "latest", "csv"]);
    assert_eq!(refused.status.code(), Some(2), "a non-empty DIR is refused");
    let unknown = p.run(&["export-metrics", "nosuchrun", "x"]);
    assert_eq!(unknown.status.code(), Some(2));

    let Some(python) = python() else { return };
    let live = read_board(&python, &run.join("tensorboard"));
    let out = p.run(&["export-metrics", "latest", "tb", "--format", "tensorboard"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported = read_board(&python, &p.path().join("tb"));
    assert_eq!(live, exported, "export writes what apply wrote");
    // One TensorBoard run per step instance, so the two models overlay.
    for id in ids {
        let board = &live[id];
        for (tag, points) in &logged[id] {
            let got = &board[tag];
            assert_eq!(got.len(), points.len(), "{id} {tag}");
            for ((s1, v1), (s2, v2)) in got.iter().zip(points) {
                assert_eq!(s1, s2, "{id} {tag}");
                // Scalars are f32 in TensorBoard.
                assert!(
                    (v1 - v2).abs() <= 1e-6 * v2.abs().max(1.0),
                    "{id} {tag}: {v1} vs {v2}"
                );
            }
        }
        // Results it did not stream are there too, at the last logged step.
        let last = logged[id]["train/loss"].last().unwrap().0;
        for (name, v) in results(&p, id) {
            let Some(v) = v.as_f64() else { continue };
            if logged[id].contains_key(&name) {
                continue;
            }
            let got = &board[&name];
            assert_eq!(got.len(), 1, "{id} {name}");
            assert_eq!(got[0].0, last, "{id} {name}");
            assert!(
                (got[0].1 - v).abs() <= 1e-6 * v.abs().max(1.0),
                "{id} {name}"
            );
        }
    }
}
