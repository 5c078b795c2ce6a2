//! The forge side of `bench/merge.sh`: one streaming file merge, as `strategy: merge` runs it.
//!
//!   cargo bench -p forge-ops --bench merge_files -- <linear|slerp|ties> OUT A B [BASE]
//!
//! Prints one JSON line (method, seconds, tensors, parameters); the driver measures peak RSS.

use std::path::Path;
use std::time::Instant;

use forge_ops::merge::files::merge_files;
use forge_ops::merge::technique::Technique;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [method, out, a, b, rest @ ..] = args.as_slice() else {
        eprintln!("usage: merge_files <linear|slerp|ties> OUT A B [BASE]");
        std::process::exit(2);
    };
    let technique = match method.as_str() {
        "linear" => Technique::Linear {
            weights: None,
            normalize: true,
        },
        "slerp" => Technique::Slerp { t: 0.5 },
        "ties" => Technique::Ties {
            weights: None,
            density: 0.5,
            lambda: 1.0,
            normalize: true,
        },
        other => {
            eprintln!("unknown method {other}");
            std::process::exit(2);
        }
    };
    let base = rest.first().map(Path::new);
    let t0 = Instant::now();
    let stats = merge_files(
        &technique,
        &[Path::new(a), Path::new(b)],
        base,
        Path::new(out),
        0,
    )
    .unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    println!(
        "{{\"tool\":\"forge\",\"method\":\"{method}\",\"seconds\":{:.4},\"tensors\":{},\"parameters\":{}}}",
        t0.elapsed().as_secs_f64(),
        stats.tensors,
        stats.parameters
    );
}
