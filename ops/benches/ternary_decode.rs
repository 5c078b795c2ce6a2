//! End-to-end decoding of a BitNet b1.58 model through the packed kernel against the same model
//! in full precision: milliseconds per token of incremental greedy-style decoding (one token per
//! step, [`Decoder`]) and resident memory, each measured in its own process that loads the
//! weights file as `forge generate` does ([`forge_ops::eval::load_weights`]): before loading,
//! after loading (`VmRSS`, and the peak so far, `VmHWM`), and the peak of the whole run, which
//! adds the decoder's per-sequence state (attention caches and Titans memory per pass, the same
//! for both models).
//!
//!     cargo bench -p forge-ops --bench ternary_decode -- --preset 25m --write DIR
//!     cargo bench -p forge-ops --bench ternary_decode -- --preset 25m --read DIR/f32.safetensors
//!     cargo bench -p forge-ops --bench ternary_decode -- --preset 25m --read DIR/ternary.safetensors
//!
//! `--write` saves a freshly initialised model (seed 1) and its quantization (the seed's default
//! `preserve`: embeddings, lm_head and norms at f16); decoding cost does not depend on what the
//! weights learned, and no token halts early in either, so both run every recursion.
//! `bench/ternary_decode.sh` runs the whole comparison.

use std::collections::BTreeSet;
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use forge_ops::merge::tensors::StateDict;
use forge_ops::model::decode::Decoder;
use forge_ops::model::{ModelConfig, Tables, TrmTitansMag, weights};
use forge_ops::quant::model::{Precision, QuantizedModel, default_preserve};

/// `VmHWM` (peak resident set) or `VmRSS` of this process, in MiB.
fn status_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut preset, mut tokens, mut prefix) = ("tiny".to_string(), 32usize, 16usize);
    let (mut write, mut read, mut threads) = (None, None, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--preset" => preset = val(),
            "--tokens" => tokens = val().parse().expect("--tokens"),
            "--prefix" => prefix = val().parse().expect("--prefix"),
            "--threads" => threads = Some(val().parse::<usize>().expect("--threads")),
            "--write" => write = Some(std::path::PathBuf::from(val())),
            "--read" => read = Some(std::path::PathBuf::from(val())),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(n) = threads {
        forge_ops::device::set_threads(n);
    }
    let backend = forge_ops::device::resolve("cpu").unwrap_or_else(|e| panic!("{e}"));
    let cfg = ModelConfig::preset(&preset).unwrap_or_else(|| panic!("unknown preset {preset}"));
    let dev = backend.device.inner();
    if let Some(dir) = write {
        std::fs::create_dir_all(&dir).expect("create the output directory");
        let bytes = weights::to_bytes(&TrmTitansMag::new(&cfg, 1, &dev)).expect("weights");
        let sd = StateDict::from_bytes(&bytes).expect("a state dict");
        let q =
            QuantizedModel::quantize(&sd, &default_preserve(), &BTreeSet::new(), Precision::F16);
        std::fs::write(dir.join("f32.safetensors"), &bytes).expect("write");
        std::fs::write(dir.join("ternary.safetensors"), q.to_bytes()).expect("write");
        return;
    }
    let path = read.expect("--write DIR or --read FILE");
    let file_mb =
        std::fs::metadata(&path).expect("the weights file").len() as f64 / f64::from(1u32 << 20);
    // The files `--write` made: `ternary.safetensors` is the quantized one.
    let quantized = path.file_name().is_some_and(|n| n == "ternary.safetensors");
    let kind = if quantized { "ternary" } else { "f32" };
    let rss_before = status_mb("VmRSS:");
    let t0 = Instant::now();
    let model = forge_ops::eval::load_weights(&cfg, &path, quantized, &dev).expect("load");
    let load_s = t0.elapsed().as_secs_f64();
    let (rss_loaded, load_peak) = (status_mb("VmRSS:"), status_mb("VmHWM:"));
    let tables = Tables::new(&cfg, &dev);
    let ids: Vec<i64> = (0..prefix + tokens)
        .map(|i| 3 + (i as i64 * 7) % (cfg.vocab_size as i64 - 3))
        .collect();
    let row = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), &dev)
    };
    let mut dec = Decoder::new(&model, &cfg, &tables, 1, &dev);
    let _ = dec.extend(row(ids[..prefix].to_vec())).logits.into_data();
    let t = Instant::now();
    for &token in &ids[prefix..] {
        let _ = dec.extend(row(vec![token])).logits.into_data();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / tokens as f64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "ternary_decode",
            "preset": preset,
            "weights": kind,
            "threads": threads,
            "file_mb": file_mb,
            "load_s": load_s,
            "prefix": prefix,
            "tokens": tokens,
            "ms_per_token": ms,
            "tokens_per_s": 1e3 / ms,
            "rss_before_load_mb": rss_before,
            "rss_after_load_mb": rss_loaded,
            "load_peak_rss_mb": load_peak,
            "peak_rss_mb": status_mb("VmHWM:"),
        })
    );
}
