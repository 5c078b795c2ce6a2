//! The store's lock and action-cache paths under many concurrent processes (issue 16's scale
//! numbers): P worker processes each walk S step keys through exactly what `apply` does per
//! step — look the key up, take its lease, look again, write an output object, its tree and the
//! action record, release — on one store. `--shared` makes every worker walk the *same* keys
//! (each step is built once, the other P−1 workers wait on its lease or hit the cache: lock
//! contention); without it each worker has its own keys (write throughput). Prints steps/s,
//! lookups/s and the per-step latency percentiles, and the metadata operations each step costs.
//!
//! `cargo bench -p forge-cache --bench store -- [--processes P] [--steps S] [--shared]
//! [--poll-ms MS] [--dir DIR]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use forge_cache::{ActionRecord, LockOptions, StepKey, Store};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// One worker: returns (built, hits, per-step latencies in µs).
fn worker(store: &Path, id: usize, steps: usize, shared: bool) -> (u64, u64, Vec<u64>) {
    let store = Store::open(store).unwrap();
    let opts = LockOptions {
        // The executor's poll interval unless told otherwise.
        poll: Duration::from_millis(num("--poll-ms", 50) as u64),
        ..LockOptions::default()
    };
    let (mut built, mut hits, mut lat) = (0, 0, Vec::with_capacity(steps));
    for s in 0..steps {
        let t = Instant::now();
        let name = if shared {
            format!("step {s}")
        } else {
            format!("worker {id} step {s}")
        };
        let key = StepKey::of(name.as_bytes());
        if store.get_action(&key).unwrap().is_some() {
            hits += 1;
            lat.push(t.elapsed().as_micros() as u64);
            continue;
        }
        // As the executor does: stop waiting once the holder has recorded the result.
        let finished = || store.read_action(&key).is_ok_and(|r| r.is_some());
        let lock = match store.lock_step(&key, opts, &finished, &|_| {}) {
            Ok(lock) => Some(lock),
            Err(_) if store.get_action(&key).unwrap().is_some() => None,
            Err(e) => panic!("{e}"),
        };
        if lock.is_none() || store.get_action(&key).unwrap().is_some() {
            hits += 1;
        } else {
            let blob = store.put_bytes(name.as_bytes()).unwrap();
            let tree = store
                .put_tree_manifest(&forge_cache::Tree {
                    forge_tree: 1,
                    entries: vec![forge_cache::TreeEntry {
                        path: "out.txt".into(),
                        digest: blob,
                        size: name.len() as u64,
                        executable: false,
                    }],
                })
                .unwrap();
            store
                .put_action(&ActionRecord {
                    key,
                    step: name.clone(),
                    op: "bench".into(),
                    outputs: [("out".to_string(), tree)].into(),
                    metrics: Default::default(),
                    preimage: serde_json::json!({ "name": name }),
                    created_unix_ms: 0,
                    duration_ms: 0,
                    run_id: "bench".into(),
                })
                .unwrap();
            built += 1;
        }
        drop(lock);
        lat.push(t.elapsed().as_micros() as u64);
    }
    (built, hits, lat)
}

fn pct(v: &[u64], p: f64) -> u64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if let Some(id) = arg("--worker") {
        let store = PathBuf::from(arg("--dir").unwrap());
        let (built, hits, lat) = worker(
            &store,
            id.parse().unwrap(),
            num("--steps", 10_000),
            flag("--shared"),
        );
        let lat: Vec<String> = lat.iter().map(u64::to_string).collect();
        println!("{built} {hits} {}", lat.join(","));
        return;
    }
    let processes = num("--processes", 64);
    let steps = num("--steps", 10_000);
    let shared = flag("--shared");
    let tmp = tempfile::tempdir().unwrap();
    let dir = arg("--dir").map_or_else(|| tmp.path().join("store"), PathBuf::from);
    Store::open(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let t0 = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|i| {
            let mut c = Command::new(&exe);
            c.args(["--worker", &i.to_string(), "--steps", &steps.to_string()])
                .args(["--poll-ms", &num("--poll-ms", 50).to_string()])
                .arg("--dir")
                .arg(&dir)
                .stdout(std::process::Stdio::piped());
            if shared {
                c.arg("--shared");
            }
            c.spawn().unwrap()
        })
        .collect();
    let (mut built, mut hits, mut lat) = (0u64, 0u64, vec![]);
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut f = text.trim().splitn(3, ' ');
        built += f.next().unwrap().parse::<u64>().unwrap();
        hits += f.next().unwrap().parse::<u64>().unwrap();
        lat.extend(
            f.next()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().unwrap()),
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let total = built + hits;
    println!(
        "store bench: {processes} processes × {steps} steps ({}, lock poll {} ms), {} cores",
        if shared { "shared keys" } else { "own keys" },
        num("--poll-ms", 50),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    println!("  wall {secs:.2} s; built {built}, cache hits {hits}");
    println!(
        "  throughput: {:.0} steps built/s, {:.0} step lookups/s (built + hits)",
        built as f64 / secs,
        total as f64 / secs
    );
    println!(
        "  per-step latency: p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0)
    );
    println!(
        "  metadata operations per built step: ~14 (lease: write + link + unlink, release: read + \
         unlink; 2 objects and 1 action: temp create + fsync + rename each, 2 stats); per hit: ~4 \
         (action read, 1 tree read, 1 object stat)"
    );
}
