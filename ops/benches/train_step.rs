//! Train-step throughput of `trm-titans-mag` with Muon × Grokfast on this build's backends.
//!
//! One step = `forward_train` (deep supervision + ACT loss) + backward + optimizer step, the same
//! work `bench/trm_torch.py` times in PyTorch. `bench/train.sh` runs both on the same machine with
//! the same threads and batch and writes bench/RESULTS.md.
//!
//!     cargo bench -p forge-ops --bench train_step -- --preset tiny --batch 8 --seq 128 --steps 10
//!
//! The backend is the one `device: cpu` resolves to (`FORGE_CPU_BACKEND=flex|libtorch` in a `tch`
//! build), or `--device cuda:0`. Prints one JSON line.

use std::time::Instant;

use burn::optim::GradientsParams;
use forge_ops::model::{ModelConfig, Tables, TrmTitansMag};
use forge_ops::optim::{MuonGrokfast, OptimizerConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut preset, mut batch, mut seq, mut steps, mut warmup, mut device) = (
        "tiny".to_string(),
        8usize,
        128usize,
        10usize,
        2usize,
        "cpu".to_string(),
    );
    let mut threads = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--preset" => preset = val(),
            "--batch" => batch = val().parse().expect("--batch"),
            "--seq" => seq = val().parse().expect("--seq"),
            "--steps" => steps = val().parse().expect("--steps"),
            "--warmup" => warmup = val().parse().expect("--warmup"),
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
    let dev = backend.device.clone();
    let tables = Tables::new(&cfg, &dev);
    let mut model = TrmTitansMag::new(&cfg, 0, &dev);
    let params = model.num_params();
    let mut opt = MuonGrokfast::new(OptimizerConfig::preset("phase1").expect("preset"));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut times = Vec::new();
    // Mean seconds of the forward pass, the backward pass and the optimizer step (CPU backends
    // run eagerly, so the clocks between phases are honest there).
    let mut phases = [0.0f64; 3];
    let mut last_loss = 0.0;
    for step in 0..warmup + steps {
        let rows: Vec<Vec<i64>> = (0..batch)
            .map(|_| {
                (0..=seq)
                    .map(|_| rng.random_range(3..cfg.vocab_size as i64))
                    .collect()
            })
            .collect();
        let t = Instant::now();
        let (x, y) = forge_ops::model::to_tensors(&rows, &dev);
        let out = model.forward_train(x, y, cfg.sup_steps, cfg.act_weight, &tables);
        let t_fwd = Instant::now();
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let t_bwd = Instant::now();
        let (m, _) = opt.step(model, grads, 1.0);
        model = m;
        // Reading the loss waits for the step to finish on asynchronous backends.
        last_loss = out.ce.into_scalar::<f32>();
        if step >= warmup {
            let end = Instant::now();
            times.push((end - t).as_secs_f64());
            for (acc, d) in phases
                .iter_mut()
                .zip([t_fwd - t, t_bwd - t_fwd, end - t_bwd])
            {
                *acc += d.as_secs_f64() / steps as f64;
            }
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": format!("forge-{}", backend.class),
            "preset": preset, "params": params, "batch": batch, "seq": seq,
            "threads": threads, "steps": steps, "step_seconds": mean,
            "tokens_per_second": (batch * seq) as f64 / mean, "last_loss": last_loss,
            "forward_seconds": phases[0], "backward_seconds": phases[1],
            "optimizer_seconds": phases[2],
        })
    );
}
