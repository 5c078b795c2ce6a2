//! The ternary × int8 kernel (`quant::kernel`) against the f32 product of this build's backend,
//! on the same matrices: GEMV (one token) and GEMM (`--tokens` tokens), at the 25m preset's
//! shapes and at 4096×4096. Time per call includes quantizing the activations (what an inference
//! step pays); the f32 product's includes nothing but the matmul.
//!
//!     cargo bench -p forge-ops --bench ternary_kernel -- --threads 1 --tokens 32
//!
//! Prints one JSON line per shape and product.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use forge_ops::quant::kernel::{Activations, matmul};
use forge_ops::quant::{PackedTernary, quantize_weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seconds per call of `f`, timed over at least 0.3 s after one warm-up call.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let (mut n, t0) = (0u32, Instant::now());
    while n < 3 || t0.elapsed().as_secs_f64() < 0.3 {
        f();
        n += 1;
    }
    t0.elapsed().as_secs_f64() / f64::from(n)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut threads, mut tokens) = (1usize, 32usize);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--threads" => threads = val().parse().expect("--threads"),
            "--tokens" => tokens = val().parse().expect("--tokens"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    forge_ops::device::set_threads(threads);
    let backend = forge_ops::device::resolve("cpu").unwrap_or_else(|e| panic!("{e}"));
    let dev = backend.device.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // (out, in): rows are output features, as the packed format stores them.
    for (out_f, in_f) in [(512, 512), (1536, 512), (512, 1536), (4096, 4096)] {
        let w: Vec<f32> = (0..out_f * in_f)
            .map(|_| rng.random_range(-0.05..0.05))
            .collect();
        let q = quantize_weights(&w);
        let packed = PackedTernary::pack(&q.values, out_f, in_f, q.scale);
        // burn's layout: [in, out].
        let mut w_t = vec![0f32; in_f * out_f];
        for o in 0..out_f {
            for i in 0..in_f {
                w_t[i * out_f + o] = w[o * in_f + i];
            }
        }
        let wt: Tensor<2> = Tensor::from_data(TensorData::new(w_t, [in_f, out_f]), &dev);
        for n in [1, tokens] {
            let x: Vec<f32> = (0..n * in_f).map(|_| rng.random_range(-1.0..1.0)).collect();
            let ternary = time(|| {
                let a = Activations::quantize(&x, in_f);
                std::hint::black_box(matmul(&packed, &a));
            });
            let xt: Tensor<2> = Tensor::from_data(TensorData::new(x.clone(), [n, in_f]), &dev);
            let f32_s = time(|| {
                let y = xt.clone().matmul(wt.clone());
                std::hint::black_box(y.into_data());
            });
            println!(
                "{}",
                serde_json::json!({
                    "impl": format!("forge-{}", backend.class),
                    "shape": [out_f, in_f], "tokens": n, "threads": threads,
                    "ternary_ms": ternary * 1e3, "f32_ms": f32_s * 1e3,
                    "speedup": f32_s / ternary,
                    "ternary_bytes": packed.stored_bytes(), "f32_bytes": out_f * in_f * 4,
                })
            );
        }
    }
}
