//! `forge export-metrics RUN DIR`: one run's numbers, read back from its `events.jsonl` (every
//! metric event its steps emitted) and the recorded results of the steps it finished, written
//! as TensorBoard event files (one directory per step instance), a CSV table or JSON lines.

use std::io::{BufRead, Write};
use std::path::Path;

use clap::ValueEnum;
use forge_cache::Store;
use serde_json::Value;

use crate::tensorboard::Board;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// `DIR/<step id>/events.out.tfevents.*` (`tensorboard --logdir DIR`).
    Tensorboard,
    /// `DIR/metrics.csv`: step, name, at, value, ts_unix_ms, source.
    Csv,
    /// `DIR/metrics.jsonl`: one object per number, the same fields.
    Jsonl,
}

/// One number of a run: a metric event (`source: event`, `at` the step it was logged at, if
/// any) or a finished step's recorded result (`source: result`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    pub step: String,
    pub name: String,
    pub at: Option<u64>,
    pub value: f64,
    pub ts_unix_ms: u64,
    pub source: &'static str,
}

/// A recorded result's metrics by step key (hex), from the store.
pub fn results_in(store: &Store) -> impl Fn(&str) -> Option<serde_json::Map<String, Value>> + '_ {
    move |key: &str| {
        let key = key.parse().ok()?;
        Some(store.get_action(&key).ok()??.metrics)
    }
}

/// Every event line of `events.jsonl` at `path`, parsed (a torn last line is skipped).
fn events(path: &Path) -> std::io::Result<Vec<Value>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for line in f.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(&line?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// The run's numbers in event order, each finished step's results after its last metric.
pub fn points(
    events: &[Value],
    results_of: &dyn Fn(&str) -> Option<serde_json::Map<String, Value>>,
) -> Vec<Point> {
    let mut out = Vec::new();
    for ev in events {
        let step = ev["step"].as_str().unwrap_or("").to_owned();
        let ts = ev["ts_unix_ms"].as_u64().unwrap_or(0);
        match ev["event"].as_str() {
            Some("metric") => {
                if let (Some(name), Some(value)) = (ev["name"].as_str(), ev["value"].as_f64()) {
                    out.push(Point {
                        step,
                        name: name.into(),
                        at: ev["at"].as_u64(),
                        value,
                        ts_unix_ms: ts,
                        source: "event",
                    });
                }
            }
            Some("finished") => {
                let results = ev["key"].as_str().and_then(results_of).unwrap_or_default();
                for (name, v) in results {
                    if let Some(value) = v.as_f64() {
                        out.push(Point {
                            step: step.clone(),
                            name,
                            at: None,
                            value,
                            ts_unix_ms: ts,
                            source: "result",
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Write the run whose directory is `run_dir` to `out` in `format`; returns how many numbers
/// and step instances were written.
pub fn export(
    store: &Store,
    run_dir: &Path,
    format: ExportFormat,
    out: &Path,
) -> std::io::Result<(usize, usize)> {
    let evs = events(&run_dir.join("events.jsonl"))?;
    let results_of = results_in(store);
    std::fs::create_dir_all(out)?;
    if format == ExportFormat::Tensorboard {
        let mut board = Board::new(out);
        for ev in &evs {
            board.event(ev, &results_of)?;
        }
        board.flush()?;
        return Ok((board.written(), board.step_count()));
    }
    let pts = points(&evs, &results_of);
    let steps: std::collections::BTreeSet<&str> = pts.iter().map(|p| p.step.as_str()).collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(out.join(match format {
        ExportFormat::Csv => "metrics.csv",
        _ => "metrics.jsonl",
    }))?);
    if format == ExportFormat::Csv {
        writeln!(w, "step,name,at,value,ts_unix_ms,source")?;
    }
    for p in &pts {
        if format == ExportFormat::Csv {
            writeln!(
                w,
                "{},{},{},{},{},{}",
                csv_field(&p.step),
                csv_field(&p.name),
                p.at.map(|a| a.to_string()).unwrap_or_default(),
                p.value,
                p.ts_unix_ms,
                p.source
            )?;
        } else {
            writeln!(
                w,
                "{}",
                serde_json::to_string(p).map_err(std::io::Error::other)?
            )?;
        }
    }
    w.flush()?;
    Ok((pts.len(), steps.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn points_are_metric_events_then_results() {
        let evs = [
            json!({"ts_unix_ms": 5, "event": "started", "step": "a.b", "key": "k", "attempt": 1}),
            json!({"ts_unix_ms": 6, "event": "metric", "step": "a.b", "name": "train/loss", "value": 2.5, "at": 4}),
            json!({"ts_unix_ms": 7, "event": "metric", "step": "a.b", "name": "hits", "value": 1.0, "at": null}),
            json!({"ts_unix_ms": 8, "event": "finished", "step": "a.b", "key": "k", "duration_ms": 1, "outputs": {}}),
        ];
        let results = |k: &str| {
            (k == "k").then(|| {
                json!({"final/ppl": 7.5, "tag": "x"})
                    .as_object()
                    .unwrap()
                    .clone()
            })
        };
        let pts = points(&evs, &results);
        let rows: Vec<(&str, Option<u64>, f64, &str)> = pts
            .iter()
            .map(|p| (p.name.as_str(), p.at, p.value, p.source))
            .collect();
        assert_eq!(
            rows,
            [
                ("train/loss", Some(4), 2.5, "event"),
                ("hits", None, 1.0, "event"),
                ("final/ppl", None, 7.5, "result"),
            ]
        );
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a.b[v=x]"), "a.b[v=x]");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
