//! Decoding cost per token, incremental ([`forge_ops::model::decode::Decoder`]) against
//! recomputing the whole prefix each step ([`TrmTitansMag::infer`]), at several prefix lengths:
//! the incremental cost should stay nearly flat (attention over the cache grows, nothing else),
//! the recompute cost grows with the prefix.
//!
//!     cargo bench -p forge-ops --bench decode -- --preset tiny --tokens 16 --threads 2
//!
//! A freshly initialised model (decoding cost does not depend on what the weights learned; no
//! token halts early, so both ways run every recursion). Prints one JSON line per prefix length.

use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use forge_ops::model::decode::Decoder;
use forge_ops::model::{ModelConfig, Tables, TrmTitansMag};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut preset, mut tokens, mut device) = ("tiny".to_string(), 16usize, "cpu".to_string());
    let mut threads = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--preset" => preset = val(),
            "--tokens" => tokens = val().parse().expect("--tokens"),
            "--device" => device = val(),
            "--threads" => threads = Some(val().parse::<usize>().expect("--threads")),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(n) = threads {
        forge_ops::device::set_threads(n);
    }
    let backend = forge_ops::device::resolve(&device).unwrap_or_else(|e| panic!("{e}"));
    let cfg = ModelConfig::preset(&preset).unwrap_or_else(|| panic!("unknown preset {preset}"));
    let dev = backend.device.inner();
    let model = TrmTitansMag::new(&cfg, 1, &dev);
    let tables = Tables::new(&cfg, &dev);
    let ids = |n: usize| -> Vec<i64> { (0..n).map(|i| 3 + (i as i64 * 7) % 200).collect() };
    let row = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), &dev)
    };
    for prefix in [16, 64, 128, 224] {
        if prefix + tokens > cfg.max_seq {
            continue;
        }
        let text = ids(prefix + tokens);
        // Incremental: read the prefix once, then one token at a time.
        let mut dec = Decoder::new(&model, &cfg, &tables, 1, &dev);
        let _ = dec.extend(row(text[..prefix].to_vec())).logits.into_data();
        let t = Instant::now();
        for &token in &text[prefix..] {
            let _ = dec.extend(row(vec![token])).logits.into_data();
        }
        let incremental = t.elapsed().as_secs_f64() * 1e3 / tokens as f64;
        // Recompute: the whole prefix through ACT inference for every new token.
        let t = Instant::now();
        for i in prefix..prefix + tokens {
            let out = model.infer(
                row(text[..=i].to_vec()),
                cfg.act_threshold,
                cfg.sup_steps,
                &tables,
            );
            let _ = out.logits.into_data();
        }
        let recompute = t.elapsed().as_secs_f64() * 1e3 / tokens as f64;
        println!(
            "{}",
            serde_json::json!({
                "bench": "decode",
                "preset": preset,
                "backend": backend.class,
                "prefix": prefix,
                "tokens": tokens,
                "incremental_ms_per_token": incremental,
                "recompute_ms_per_token": recompute,
                "speedup": recompute / incremental,
            })
        );
    }
}
