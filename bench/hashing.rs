//! Benchmark: hashing a large file into a step key — cold (read and hash every byte, memory-mapped
//! on all cores) and warm (the stat cache says the file is unchanged). Run by `bench/run.sh`,
//! which times `b3sum` on the same file in the same run.
//!
//! ```text
//! cargo bench --bench hashing -- <file> [repeats]
//! ```
//! Prints one JSON object: best-of-N seconds for cold and warm, and the digest.

use std::time::Instant;

use forge_cache::{HashSource, Store, hash_file_uncached};

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let file = std::path::PathBuf::from(args.get(1).expect("usage: hashing <file> [repeats]"));
    let repeats: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store_dir.path().join("store")).expect("store");

    let mut cold = f64::INFINITY;
    let mut digest = String::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let d = hash_file_uncached(&file).expect("hash");
        cold = cold.min(t.elapsed().as_secs_f64());
        digest = d.to_hex();
    }
    // Prime the stat cache, then time unchanged re-checks.
    let (d, _) = store.hash_file(&file).expect("hash");
    assert_eq!(d.to_hex(), digest);
    let mut warm = f64::INFINITY;
    for _ in 0..repeats.max(20) {
        let t = Instant::now();
        let (d, src) = store.hash_file(&file).expect("hash");
        warm = warm.min(t.elapsed().as_secs_f64());
        assert_eq!(
            src,
            HashSource::StatCache,
            "file changed or is too new for the stat cache"
        );
        assert_eq!(d.to_hex(), digest);
    }
    let bytes = std::fs::metadata(&file).expect("stat").len();
    println!(
        "{}",
        serde_json::json!({
            "bytes": bytes,
            "cold_seconds": cold,
            "cold_gib_per_second": bytes as f64 / (1u64 << 30) as f64 / cold,
            "warm_seconds": warm,
            "warm_speedup": cold / warm,
            "digest": digest,
        })
    );
}
