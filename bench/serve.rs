//! `forge serve` under load (issue 15's targets): `GET /api/pipeline/status` on a store with
//! 1,000 runs and 1,000,000 events under 50 concurrent keep-alive clients (p50/p90/p99/max
//! latency and requests/s), and how long an event written to a run's `events.jsonl` takes to
//! reach 100 connected WebSocket clients. Prints its numbers; `bench/serve.sh` also runs `wrk`
//! against the same server for comparison.
//!
//! `cargo bench --bench serve -- [--runs N] [--events-per-run M] [--clients C] [--seconds S]
//! [--ws-clients K] [--keep DIR]`

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PIPELINE: &str = r#"
version: 1
name: bench
phases:
  p:
    steps:
      a: { op: exec, with: { run: "echo a > $FORGE_OUTPUT/a" } }
      b: { op: exec, inputs: { up: a }, with: { run: "cat $FORGE_INPUT_UP/a > $FORGE_OUTPUT/b" } }
      c: { op: exec, inputs: { up: b }, with: { run: "cat $FORGE_INPUT_UP/b > $FORGE_OUTPUT/c" } }
"#;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `runs` finished runs of `events` metric/progress events each, older than the real one.
fn synthesize_runs(store: &Path, runs: usize, events: usize) {
    let base = now_ms() - 10_000_000;
    for r in 0..runs {
        let id = format!("{:013}-{}", base + r as u64 * 1000, 1_000_000 + r);
        let dir = store.join("runs").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.join("events.jsonl")).unwrap());
        for e in 0..events {
            let ts = base + r as u64 * 1000 + e as u64;
            if e % 2 == 0 {
                writeln!(f, r#"{{"ts_unix_ms":{ts},"elapsed_ms":{e},"event":"progress","step":"p.a","done":{e},"total":{events},"unit":"steps"}}"#).unwrap();
            } else {
                writeln!(f, r#"{{"ts_unix_ms":{ts},"elapsed_ms":{e},"event":"metric","step":"p.a","name":"train/loss","value":{},"at":{e}}}"#, 1.0 / (e as f64 + 1.0)).unwrap();
            }
        }
        let summary = serde_json::json!({
            "id": id, "pipeline": "bench", "pipeline_path": "bench.yaml",
            "started_unix_ms": base + r as u64 * 1000, "finished_unix_ms": base + r as u64 * 1000 + 999,
            "status": "succeeded", "steps": [],
        });
        std::fs::write(dir.join("run.json"), summary.to_string()).unwrap();
    }
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let runs = arg("--runs", 1000);
    let per_run = arg("--events-per-run", 1000);
    let clients = arg("--clients", 50);
    let seconds = arg("--seconds", 10);
    let ws_clients = arg("--ws-clients", 100);
    let keep = std::env::args()
        .skip_while(|a| a != "--keep")
        .nth(1)
        .map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = keep.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bench.yaml"), PIPELINE).unwrap();
    let forge = env!("CARGO_BIN_EXE_forge");
    let store = dir.join(".forge");
    let t = Instant::now();
    synthesize_runs(&store, runs, per_run);
    let ok = Command::new(forge)
        .args(["apply", "bench.yaml"])
        .current_dir(&dir)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    println!(
        "store: {runs} runs × {per_run} events = {} events (+1 real run), written in {:.1} s",
        runs * per_run,
        t.elapsed().as_secs_f64()
    );

    let mut child = Command::new(forge)
        .args(["serve", "bench.yaml", "--port", "0"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server(child);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let (base, token) = url.split_once("/?token=").unwrap();
    let (base, token) = (base.to_owned(), token.trim().to_owned());
    println!("server: {base}");
    if keep.is_some() {
        println!(
            "keeping the store in {}; the server stops when this exits",
            dir.display()
        );
    }

    // Latency of GET /api/pipeline/status under `clients` concurrent keep-alive clients.
    let status_url = format!("{base}/api/pipeline/status");
    let warm = reqwest::blocking::get(&status_url).unwrap();
    assert!(warm.status().is_success(), "{}", warm.text().unwrap());
    let lat = Arc::new(Mutex::new(Vec::new()));
    let start = Arc::new(Barrier::new(clients));
    let deadline = Duration::from_secs(seconds as u64);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (lat, start, url) = (lat.clone(), start.clone(), status_url.clone());
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                let mut mine = Vec::new();
                start.wait();
                let t0 = Instant::now();
                while t0.elapsed() < deadline {
                    let t = Instant::now();
                    let r = c.get(&url).send().unwrap();
                    assert!(r.status().is_success());
                    let _ = r.bytes().unwrap();
                    mine.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut lat = Arc::try_unwrap(lat).unwrap().into_inner().unwrap();
    lat.sort_by(f64::total_cmp);
    println!(
        "GET /api/pipeline/status, {clients} clients, {seconds} s: {} requests ({:.0}/s); latency ms p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
        lat.len(),
        lat.len() as f64 / seconds as f64,
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );

    // WebSocket delivery: `ws_clients` connected; events appended to a new run's events.jsonl.
    let run_dir = store
        .join("runs")
        .join(format!("{:013}-{}", now_ms(), 999_999));
    std::fs::create_dir_all(&run_dir).unwrap();
    let events_path = run_dir.join("events.jsonl");
    std::fs::write(&events_path, "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let n_events = 20;
    let ws_url = format!(
        "{}/api/events?token={token}",
        base.replace("http://", "ws://")
    );
    let ready = Arc::new(Barrier::new(ws_clients + 1));
    let got: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..ws_clients)
        .map(|_| {
            let (ready, got, url) = (ready.clone(), got.clone(), ws_url.clone());
            std::thread::spawn(move || {
                let (mut ws, _) = tungstenite::connect(url).unwrap();
                ready.wait();
                let mut seen = 0;
                while seen < n_events {
                    if let tungstenite::Message::Text(t) = ws.read().unwrap() {
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "phase:metric" {
                            let at = Instant::now();
                            got.lock()
                                .unwrap()
                                .push((v["data"]["at"].as_u64().unwrap(), at));
                            seen += 1;
                        }
                    }
                }
            })
        })
        .collect();
    ready.wait();
    std::thread::sleep(Duration::from_millis(200));
    let mut written = Vec::new();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&events_path)
        .unwrap();
    for i in 0..n_events {
        let line = format!(
            r#"{{"ts_unix_ms":{},"elapsed_ms":0,"event":"metric","step":"p.a","name":"train/loss","value":1.0,"at":{i}}}"#,
            now_ms()
        );
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
        f.flush().unwrap();
        written.push(Instant::now());
        std::thread::sleep(Duration::from_millis(200));
    }
    for r in readers {
        r.join().unwrap();
    }
    let mut delays: Vec<f64> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(i, at)| at.duration_since(written[*i as usize]).as_secs_f64() * 1000.0)
        .collect();
    delays.sort_by(f64::total_cmp);
    println!(
        "WebSocket, {ws_clients} clients, {n_events} events written 200 ms apart: write → received ms p50 {:.1}, p99 {:.1}, max {:.1} ({} deliveries)",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1],
        delays.len()
    );
    if keep.is_some() {
        println!("(server still up at {base} for `wrk`; press Enter to stop)");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    drop(server);
}
