//! Quiet-STaR training throughput of `trm-titans-mag` on this build's backends: text tokens per
//! second of one optimizer step that thinks after every position (the thoughts' cost included).
//!
//! One step = `QuietStar::step` (the text read once, `num_thoughts` thoughts of `thought_length`
//! tokens sampled after every position in one batched pass per thought token, the mixed
//! predictions of `n_true` true tokens, REINFORCE, the KL to a frozen reference) + backward +
//! Muon × Grokfast (the `phase3-rl` preset), as `train` runs it with `objective: quiet-star`.
//!
//!     cargo bench -p forge-ops --bench quiet_star_step -- --preset tiny --batch 4 --seq 64 --steps 3
//!
//! Prints one JSON line. The backend is the one `device: cpu` resolves to
//! (`FORGE_CPU_BACKEND=flex|libtorch` in a `tch` build), or `--device cuda:0`.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use forge_ops::model::{ModelConfig, Tables, TrmTitansMag};
use forge_ops::optim::{MuonGrokfast, OptimizerConfig};
use forge_ops::train::quiet_star::{QuietStar, ThoughtSettings};
use forge_ops::train::{Draw, Objective, Reference, Targets};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut preset, mut batch, mut seq, mut steps, mut warmup, mut device) = (
        "tiny".to_string(),
        4usize,
        64usize,
        3usize,
        1usize,
        "cpu".to_string(),
    );
    let (mut thoughts, mut length, mut n_true) = (2usize, 12usize, 4usize);
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
            "--num-thoughts" => thoughts = val().parse().expect("--num-thoughts"),
            "--thought-length" => length = val().parse().expect("--thought-length"),
            "--n-true" => n_true = val().parse().expect("--n-true"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(n) = threads {
        forge_ops::device::set_threads(n);
    }
    let backend = forge_ops::device::resolve(&device).unwrap_or_else(|e| panic!("{e}"));
    let cfg = ModelConfig {
        mixing_head: true,
        ..ModelConfig::preset(&preset).unwrap_or_else(|| panic!("unknown preset {preset}"))
    };
    let dev = backend.device.clone();
    let tables = Tables::new(&cfg, &dev);
    let mut model = TrmTitansMag::new(&cfg, 0, &dev);
    let reference = model.clone().valid();
    let params = model.num_params();
    let settings = ThoughtSettings {
        num_thoughts: thoughts,
        thought_length: length,
        n_true,
        temperature: 1.0,
        start: 3,
        end: 4,
        reward_threshold: 0.05,
        targets: Targets::All,
    };
    assert!(
        seq + settings.span() <= cfg.max_seq,
        "seq + thought span exceeds max_seq"
    );
    let optimizer = OptimizerConfig::preset("phase3-rl").expect("preset");
    let objective = QuietStar {
        settings,
        cfg: &cfg,
        tables: &tables,
        device: &dev,
        reference: Some(Reference {
            model: &reference,
            kl_coef: optimizer.kl_coef,
            data_weight: 1.0,
        }),
        seed: 1,
    };
    let mut opt = MuonGrokfast::new(optimizer);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut times = Vec::new();
    let mut last_loss = 0.0;
    for step in 0..warmup + steps {
        let rows: Vec<Vec<i64>> = (0..batch)
            .map(|_| {
                (0..=seq)
                    .map(|_| rng.random_range(15..cfg.vocab_size as i64))
                    .collect()
            })
            .collect();
        let t = Instant::now();
        let at = Draw {
            step: step as u64,
            ..Draw::default()
        };
        let out = objective.step(&model, &rows, at);
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let (m, _) = opt.step(model, grads, 1.0);
        model = m;
        last_loss = out.reported;
        if step >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": format!("forge-{}", backend.class),
            "preset": preset, "params": params, "batch": batch, "seq": seq,
            "num_thoughts": thoughts, "thought_length": length, "n_true": n_true,
            "threads": threads, "steps": steps, "step_seconds": mean,
            "text_tokens_per_second": (batch * seq) as f64 / mean, "last_loss": last_loss,
        })
    );
}
