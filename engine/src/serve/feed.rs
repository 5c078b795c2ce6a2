//! The live event feed of `forge serve`: a thread tails every run's `events.jsonl` in the store
//! (forge's own event stream, not a second bookkeeping), turns each event into one of the seed's
//! five WebSocket events (`phase:progress`, `phase:metric`, `phase:alert`, `phase:complete`,
//! `hardware:update`) and keeps the newest in a ring buffer, each with a sequence number, so a
//! client that reconnects with `?since=SEQ` gets exactly what it missed.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

/// How often the runs are looked at for new lines.
pub const POLL: Duration = Duration::from_millis(25);

/// One event as clients get it: its sequence number and its JSON text (with `seq` in it).
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub seq: u64,
    pub text: Arc<str>,
}

/// The newest events, numbered from 0 for the server's lifetime.
pub struct Feed {
    /// A random id of this server process: sequence numbers are only comparable under one.
    pub server_id: String,
    capacity: usize,
    buf: Mutex<VecDeque<FeedEvent>>,
    /// The next sequence number; changes whenever an event is added.
    next: watch::Sender<u64>,
}

/// What a client should send from `since`: the events, or `Err(first)` when `since` is older
/// than the buffer keeps (the client then reloads its state and continues from `first`).
pub type Since = Result<Vec<FeedEvent>, u64>;

impl Feed {
    pub fn new(server_id: String, capacity: usize) -> Self {
        Self {
            server_id,
            capacity,
            buf: Mutex::new(VecDeque::new()),
            next: watch::channel(0).0,
        }
    }

    /// Add an event (a JSON object); it gets the next sequence number.
    pub fn push(&self, mut ev: Value) {
        let mut buf = self
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seq = *self.next.borrow();
        ev["seq"] = json!(seq);
        buf.push_back(FeedEvent {
            seq,
            text: Arc::from(ev.to_string()),
        });
        while buf.len() > self.capacity {
            buf.pop_front();
        }
        drop(buf);
        self.next.send_replace(seq + 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.next.subscribe()
    }

    pub fn next_seq(&self) -> u64 {
        *self.next.borrow()
    }

    /// Every kept event with `seq >= since`.
    pub fn since(&self, since: u64) -> Since {
        let buf = self
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = buf.front().map_or_else(|| *self.next.borrow(), |e| e.seq);
        if since < first {
            return Err(first);
        }
        let skip = usize::try_from(since - first).unwrap_or(usize::MAX);
        Ok(buf.iter().skip(skip).cloned().collect())
    }
}

/// The phase of a step id (`cognate.model[variant=memory]` → `cognate`).
pub fn phase_of(step: &str) -> &str {
    step.split('.').next().unwrap_or(step)
}

/// One forge event (a line of `events.jsonl`) as the seed's WebSocket event, or `None` for the
/// events the seed has no counterpart for (queued, started, logs, …).
pub fn to_seed_event(run: &str, ev: &Value) -> Option<Value> {
    let kind = ev["event"].as_str()?;
    let step = ev["step"].as_str().unwrap_or("");
    let base = |ty: &str, data: Value| {
        json!({
            "type": ty,
            "run": run,
            "ts_unix_ms": ev["ts_unix_ms"],
            "phase": if step.is_empty() { Value::Null } else { json!(phase_of(step)) },
            "step": if step.is_empty() { Value::Null } else { json!(step) },
            "data": data,
        })
    };
    Some(match kind {
        "progress" => base(
            "phase:progress",
            json!({ "done": ev["done"], "total": ev["total"], "unit": ev["unit"] }),
        ),
        "metric" => base(
            "phase:metric",
            json!({ "name": ev["name"], "value": ev["value"], "at": ev["at"] }),
        ),
        "alert" => base(
            "phase:alert",
            json!({ "level": ev["level"], "message": ev["message"] }),
        ),
        "warning" => base(
            "phase:alert",
            json!({ "level": "warn", "message": ev["message"] }),
        ),
        "retrying" => base(
            "phase:alert",
            json!({ "level": "warn", "message": format!("retrying (attempt {}): {}", ev["attempt"], ev["error"].as_str().unwrap_or("")) }),
        ),
        "finished" => base(
            "phase:complete",
            json!({ "status": "ran", "duration_ms": ev["duration_ms"], "key": ev["key"] }),
        ),
        "cache-hit" => base(
            "phase:complete",
            json!({ "status": "cached", "key": ev["key"] }),
        ),
        "failed" => base(
            "phase:complete",
            json!({ "status": "failed", "error": ev["error"], "hint": ev["hint"], "tier": ev["tier"] }),
        ),
        "cancelled" => base(
            "phase:complete",
            json!({ "status": "cancelled", "reason": ev["reason"] }),
        ),
        "skipped" => base(
            "phase:complete",
            json!({ "status": "skipped", "reason": ev["reason"] }),
        ),
        "hardware" => json!({
            "type": "hardware:update",
            "run": run,
            "ts_unix_ms": ev["ts_unix_ms"],
            "data": { "cpu": ev["cpu"], "memory": ev["memory"], "disk": ev["disk"] },
        }),
        "run-finished" => base(
            "phase:complete",
            json!({ "status": ev["status"], "run_finished": true }),
        ),
        _ => return None,
    })
}

/// What the latest runs are doing, from their events: each step's state and last progress, and
/// the newest alerts. `GET /api/pipeline/status` reads it instead of re-reading event files.
#[derive(Default)]
pub struct Live {
    runs: Mutex<BTreeMap<String, RunLive>>,
    /// Counts events that change a step's state (and so, maybe, the store).
    changes: std::sync::atomic::AtomicU64,
}

/// How many runs [`Live`] keeps (the newest by id).
const LIVE_RUNS: usize = 8;
/// How many alerts a run keeps.
const LIVE_ALERTS: usize = 50;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RunLive {
    pub steps: BTreeMap<String, StepLive>,
    pub alerts: VecDeque<Value>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StepLive {
    /// queued, running, retrying, ran, cached, failed, cancelled or skipped.
    pub state: String,
    pub progress: Option<Value>,
}

impl Live {
    /// Take one event of run `run` into account.
    pub fn observe(&self, run: &str, ev: &Value) {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = runs.entry(run.to_owned()).or_default();
        let step = ev["step"].as_str().unwrap_or("");
        let state = match ev["event"].as_str().unwrap_or("") {
            "queued" => Some("queued"),
            "started" => Some("running"),
            "retrying" => Some("retrying"),
            "finished" => Some("ran"),
            "cache-hit" => Some("cached"),
            "failed" => Some("failed"),
            "cancelled" => Some("cancelled"),
            "skipped" => Some("skipped"),
            "progress" => {
                let s = r.steps.entry(step.to_owned()).or_default();
                s.progress =
                    Some(json!({"done": ev["done"], "total": ev["total"], "unit": ev["unit"]}));
                None
            }
            "alert" | "warning" => {
                r.alerts.push_back(json!({
                    "step": ev["step"],
                    "level": ev.get("level").cloned().unwrap_or(json!("warn")),
                    "message": ev["message"],
                    "ts_unix_ms": ev["ts_unix_ms"],
                }));
                while r.alerts.len() > LIVE_ALERTS {
                    r.alerts.pop_front();
                }
                None
            }
            _ => None,
        };
        if state.is_some() || ev["event"] == "run-finished" {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(state) = state
            && !step.is_empty()
        {
            r.steps.entry(step.to_owned()).or_default().state = state.to_owned();
        }
        while runs.len() > LIVE_RUNS {
            let oldest = runs.keys().next().cloned().expect("not empty");
            runs.remove(&oldest);
        }
    }

    /// How many state-changing events were seen (see [`Live::observe`]).
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn run(&self, id: &str) -> Option<RunLive> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// Where one run's `events.jsonl` has been read up to.
struct Tail {
    offset: u64,
    partial: Vec<u8>,
}

/// Read what was appended to `path` since `tail`, complete lines only.
fn read_new(path: &Path, tail: &mut Tail) -> std::io::Result<Vec<Value>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < tail.offset {
        // Truncated or replaced: start over.
        tail.offset = 0;
        tail.partial.clear();
    }
    if len == tail.offset {
        return Ok(Vec::new());
    }
    f.seek(SeekFrom::Start(tail.offset))?;
    let mut bytes = Vec::new();
    f.take(len - tail.offset).read_to_end(&mut bytes)?;
    tail.offset += bytes.len() as u64;
    tail.partial.extend_from_slice(&bytes);
    let Some(end) = tail.partial.iter().rposition(|&b| b == b'\n') else {
        return Ok(Vec::new());
    };
    let complete: Vec<u8> = tail.partial.drain(..=end).collect();
    Ok(complete
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

/// Whether a run's summary says it is still going (read once, when the server first sees it).
fn still_running(run_dir: &Path) -> bool {
    std::fs::read(run_dir.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v["status"] == "running")
}

/// Tail the store's runs into `feed` and `live` until `stop` is set. Of the runs there at the
/// start, the newest is read whole into `live` (not into the feed) and the others that are
/// still running are followed from their current end; runs that appear later are followed
/// from their first line. A run is let go once its `run-finished` event is read, so a store of
/// thousands of finished runs costs one `stat` of `runs/` per poll.
pub fn tail_runs(runs: &Path, feed: &Feed, live: &Live, stop: &std::sync::atomic::AtomicBool) {
    let mut seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut active: BTreeMap<String, (Tail, bool)> = BTreeMap::new();
    let mut listed_at = None;
    let mut first = true;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mtime = std::fs::metadata(runs).and_then(|m| m.modified()).ok();
        if mtime.is_none() || mtime != listed_at {
            listed_at = mtime;
            let mut ids: Vec<String> = std::fs::read_dir(runs)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|id| !seen.contains(id))
                .collect();
            ids.sort();
            let newest = ids.last().cloned();
            for id in ids {
                seen.insert(id.clone());
                let path = runs.join(&id).join("events.jsonl");
                let replay = first && Some(&id) == newest.as_ref();
                let offset = if !first || replay {
                    0
                } else if still_running(&runs.join(&id)) {
                    std::fs::metadata(&path).map_or(0, |m| m.len())
                } else {
                    continue;
                };
                let tail = Tail {
                    offset,
                    partial: Vec::new(),
                };
                active.insert(id, (tail, replay));
            }
        }
        let mut done = Vec::new();
        for (id, (tail, replay)) in &mut active {
            let path = runs.join(id).join("events.jsonl");
            if let Ok(evs) = read_new(&path, tail) {
                for ev in &evs {
                    live.observe(id, ev);
                    if !*replay && let Some(e) = to_seed_event(id, ev) {
                        feed.push(e);
                    }
                    if ev["event"] == "run-finished" {
                        done.push(id.clone());
                    }
                }
            }
            // Replayed once; from now on its new lines are news.
            *replay = false;
        }
        for id in done {
            active.remove(&id);
        }
        first = false;
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_gives_what_a_client_missed_and_says_when_it_is_gone() {
        let f = Feed::new("s".into(), 3);
        for i in 0..5 {
            f.push(json!({ "i": i }));
        }
        assert_eq!(f.next_seq(), 5);
        let seqs = |r: Since| r.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(f.since(3)), [3, 4]);
        assert_eq!(seqs(f.since(5)), Vec::<u64>::new());
        // 0 and 1 fell out of the buffer of 3.
        assert_eq!(f.since(1).unwrap_err(), 2);
        let e = &f.since(4).unwrap()[0];
        assert_eq!(
            serde_json::from_str::<Value>(&e.text).unwrap(),
            json!({"i": 4, "seq": 4})
        );
    }

    #[test]
    fn forge_events_map_to_the_seed_events() {
        let ev = json!({"ts_unix_ms": 1, "event": "progress", "step": "cognate.model[variant=a]", "done": 3, "total": 10, "unit": "steps"});
        let e = to_seed_event("r1", &ev).unwrap();
        assert_eq!(e["type"], "phase:progress");
        assert_eq!(e["phase"], "cognate");
        assert_eq!(e["data"]["done"], 3);
        let m =
            json!({"event": "metric", "step": "p.s", "name": "train/loss", "value": 2.0, "at": 4});
        assert_eq!(to_seed_event("r", &m).unwrap()["type"], "phase:metric");
        let f = json!({"event": "failed", "step": "p.s", "error": "x", "tier": "user"});
        assert_eq!(to_seed_event("r", &f).unwrap()["data"]["status"], "failed");
        assert!(to_seed_event("r", &json!({"event": "started", "step": "p.s"})).is_none());
    }

    #[test]
    fn a_tail_reads_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"b\":").unwrap();
        let mut t = Tail {
            offset: 0,
            partial: Vec::new(),
        };
        assert_eq!(read_new(&p, &mut t).unwrap(), [json!({"a": 1})]);
        std::fs::write(&p, "{\"a\":1}\n{\"b\":2}\n").unwrap();
        assert_eq!(read_new(&p, &mut t).unwrap(), [json!({"b": 2})]);
        assert!(read_new(&p, &mut t).unwrap().is_empty());
    }
}
