//! `quantize` (Phase 4, BitNet b1.58) end to end through the CLI on a micro model: the
//! `quantized-model` artifact holds packed ternary weights and is smaller than its input, the
//! layer-by-layer pass reports every layer, the metrics carry the seed's names, the step is
//! deterministic, and `forge eval` / `forge generate` run the quantized model.

mod common;

use common::{Project, stderr};

const PIPELINE: &str = r#"
version: 1
name: q
phases:
  p:
    steps:
      corpus: { op: download, with: { source: "builtin:math", samples: 400 } }
      tok: { op: tokenizer, inputs: { data: corpus }, with: { vocab_size: 320 } }
      model:
        op: train
        inputs: { data: corpus, tokenizer: tok }
        with:
          model: { preset: tiny, vocab_size: 320, d_model: 64, heads: 2, layers: 2, d_ff: 128, ltm_slots: 8, max_seq: 64, window: 32 }
          steps: 30
          batch_size: 4
          seq_len: 32
          math_eval: 0
          eval_records: 8
      ternary:
        op: quantize
        inputs: { model: model, data: corpus }
        with: { calibration_samples: 8, eval_records: 16, seq_len: 32, batch_size: 8, timing_tokens: 4 }
"#;

fn json(path: std::path::PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn digest(p: &Project) -> String {
    let out = p.run(&["show", "p.ternary", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["outputs"]["model"]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn quantize_writes_a_smaller_ternary_model_that_eval_and_generate_run() {
    let p = Project::new();
    p.write("q.yaml", PIPELINE);
    p.apply_ok("q.yaml", &[]);
    let out = p.run(&["export", "p.ternary", "exp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = p.path().join("exp/model");
    let config = json(dir.join("config.json"));
    assert_eq!(config["quantization"]["method"], "bitnet-b1.58");
    let m = json(dir.join("metrics.json"));
    for k in [
        "evaluation/perplexity_before",
        "evaluation/perplexity_after",
        "evaluation/accuracy_before",
        "evaluation/accuracy_after",
        "evaluation/compression_ratio",
        "evaluation/sparsity_overall",
        "evaluation/zero_params",
        "evaluation/nonzero_params",
        "compression/blocks.0/sparsity",
        "compression/blocks.1/original_params",
        "final/compression_ratio",
    ] {
        assert!(m[k].is_number(), "{k} missing from {m}");
    }
    // Wall-clock numbers are in the step's record, not in the artifact.
    assert!(m.get("evaluation/inference_speedup").is_none());
    // Ternary weights: about a third are zero (BitNet's absmean on trained weights).
    let sparsity = m["evaluation/sparsity_overall"].as_f64().unwrap();
    assert!((0.2..0.5).contains(&sparsity), "{sparsity}");
    // The files as written are smaller: the embedding stays f16, the rest is 2 bits a weight.
    let ratio = m["evaluation/compression_ratio"].as_f64().unwrap();
    assert!(ratio > 2.0, "compression {ratio}");
    let before = std::fs::metadata(p.path().join("exp/model/model.safetensors"))
        .unwrap()
        .len();
    assert!(before > 0);
    // The packed file is a forge quantized model: U8 tensors with their scales.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["blocks.0.attn.wq.weight"]["dtype"], "U8");
    assert_eq!(
        header["blocks.0.attn.wq.weight"]["shape"],
        serde_json::json!([64, 32])
    );
    assert_eq!(header["blocks.0.attn.wq.weight.scale"]["dtype"], "F32");
    assert_eq!(header["embed"]["dtype"], "F16");

    // The README's layout is enough to unpack it: examples/unpack_ternary.py (numpy only)
    // recovers W_q, which equals BitNet's absmean quantization of the input's weights computed
    // independently in numpy.
    numpy_unpacks(&p, &dir);

    // forge eval and forge generate run it (dequantized through the same forward pass).
    let out = p.run(&[
        "eval",
        "p.ternary",
        "--data",
        "p.corpus",
        "--split",
        "test",
        "--limit",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["result"]["perplexity"]["value"]
            .as_f64()
            .unwrap()
            .is_finite()
    );
    let out = p.run(&[
        "generate",
        "p.ternary",
        "--prompt",
        "3 + 4 =",
        "--max-tokens",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The same pipeline gives the same artifact.
    let again = Project::new();
    again.write("q.yaml", PIPELINE);
    again.apply_ok("q.yaml", &[]);
    assert_eq!(digest(&again), digest(&p));
}

/// Run examples/unpack_ternary.py on the exported quantized model and check what it unpacks
/// against the input model's weights quantized in numpy (skipped without numpy, unless
/// `FORGE_REQUIRE_NUMPY=1`, which `.ci/install-numpy` sets).
fn numpy_unpacks(p: &Project, quantized: &std::path::Path) {
    let have = std::process::Command::new("python3")
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("FORGE_REQUIRE_NUMPY").is_err(),
            "numpy is required (FORGE_REQUIRE_NUMPY is set) but python3 cannot import it"
        );
        eprintln!("skipped: numpy is not installed (eval \"$(.ci/install-numpy)\")");
        return;
    }
    let out = p.run(&["export", "p.model", "fp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let check = format!(
        r#"
import json, struct, sys
import numpy as np
sys.path.insert(0, {example:?})
from unpack_ternary import read
meta, weights = read(sys.argv[1])
raw = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
assert weights, "no ternary tensors"
for name, (w, t) in weights.items():
    a, b = header[name]["data_offsets"]
    fp = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(header[name]["shape"])
    gamma = max(np.abs(fp).astype(np.float64).mean(), 1e-5)
    q = np.clip(np.round(fp / np.float32(gamma)), -1, 1).astype(np.int8)
    assert t.T.shape == q.shape, (name, t.shape, q.shape)
    assert np.array_equal(t.T, q), (name, int((t.T != q).sum()))
    assert np.allclose(w, q * np.float32(gamma), rtol=1e-6), name
print(len(weights))
"#,
        example = example.to_str().unwrap()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &check])
        .arg(quantized.join("model.safetensors"))
        .arg(p.path().join("fp/model/model.safetensors"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(
        n, 8,
        "the ternary tensors of the first block and the halting head"
    );
}

/// The evaluation metrics measure what their names say: they stay at exactly zero when no
/// weight that is scored changes (everything preserved in f32, or every block rolled back to
/// f32) and move when the weights become ternary.
#[test]
fn the_evaluation_metrics_move_only_when_the_weights_change() {
    let p = Project::new();
    let extra = r#"
      keep:
        op: quantize
        inputs: { model: model, data: corpus }
        with:
          preserve: [{ pattern: "*", precision: f32 }]
          calibration_samples: 8
          eval_records: 16
          seq_len: 32
          batch_size: 8
          timing_tokens: 2
      reverted:
        op: quantize
        inputs: { model: model, data: corpus }
        with:
          preserve: [{ pattern: "embed", precision: f32 }, { pattern: "head.weight", precision: f32 }, { pattern: "*norm*", precision: f32 }]
          max_layer_drop: 0
          revert_precision: f32
          calibration_samples: 8
          eval_records: 16
          seq_len: 32
          batch_size: 8
          timing_tokens: 2
      all:
        op: quantize
        inputs: { model: model, data: corpus }
        with: { max_layer_drop: 1000, max_perplexity_increase: 1000, calibration_samples: 8, eval_records: 16, seq_len: 32, batch_size: 8, timing_tokens: 2 }
"#;
    p.write("q.yaml", &format!("{PIPELINE}{extra}"));
    p.apply_ok("q.yaml", &[]);
    let metrics = |step: &str| {
        let out = p.run(&["export", &format!("p.{step}"), step]);
        assert!(out.status.success(), "{}", stderr(&out));
        json(p.path().join(step).join("model/metrics.json"))
    };
    let num = |m: &serde_json::Value, k: &str| {
        m[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing from {m}"))
    };
    for step in ["keep", "reverted"] {
        let m = metrics(step);
        for k in ["evaluation/perplexity_increase", "evaluation/accuracy_drop"] {
            assert_eq!(num(&m, k), 0.0, "{step}: {k} in {m}");
        }
        assert_eq!(
            num(&m, "evaluation/perplexity_before"),
            num(&m, "evaluation/perplexity_after")
        );
        // Nothing is smaller: the weights are the input's f32 ones again (but a 64-weight head).
        assert!(
            num(&m, "evaluation/compression_ratio") < 1.01,
            "{step}: {m}"
        );
    }
    let keep = metrics("keep");
    assert_eq!(num(&keep, "evaluation/zero_params"), 0.0);
    assert_eq!(num(&keep, "compression/quantized_params"), 0.0);
    // Every block raised perplexity, so every block went back to f32. The halting head does not
    // change the scored perplexity (an increase of exactly 0 is within a budget of 0), so it
    // stays ternary.
    let reverted = metrics("reverted");
    for block in ["blocks.0", "blocks.1"] {
        assert_eq!(
            num(&reverted, &format!("compression/{block}/reverted")),
            1.0
        );
    }
    assert_eq!(
        num(&reverted, "evaluation/reverted_layers"),
        2.0,
        "{reverted}"
    );
    let all = metrics("all");
    assert_eq!(num(&all, "evaluation/reverted_layers"), 0.0);
    assert!(num(&all, "evaluation/perplexity_increase") > 0.0, "{all}");
    assert!(num(&all, "evaluation/zero_params") > 0.0);
    assert!(num(&all, "evaluation/compression_ratio") > 2.0);
}

/// The micro pipeline with a fine-tuned quantization in place of the plain one.
fn fine_tuned(steps: u64) -> String {
    let plain = "with: { calibration_samples: 8, eval_records: 16, seq_len: 32, batch_size: 8, timing_tokens: 4 }";
    assert!(PIPELINE.contains(plain));
    PIPELINE.replace(
        plain,
        &format!(
            "with: {{ calibration_samples: 8, eval_records: 16, seq_len: 32, batch_size: 8, timing_tokens: 2, max_layer_drop: 1000, max_perplexity_increase: 1000, fine_tune_steps: {steps}, fine_tune: {{ batch_size: 4, seq_len: 32, checkpoint_every: 4, log_every: 2 }} }}"
        ),
    )
}

/// STE fine-tuning lowers the quantized model's held-out perplexity below quantizing the same
/// input as it is (the control the op measures beside it, same layers ternary), keeps its loss
/// curve in the artifact, and a run killed mid-way resumes to the same bytes.
#[test]
fn fine_tuning_beats_quantizing_as_is_and_resumes_bit_identically() {
    let whole = Project::new();
    whole.write("q.yaml", &fine_tuned(16));
    whole.apply_ok("q.yaml", &[]);
    let out = whole.run(&["export", "p.ternary", "exp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = whole.path().join("exp/model");
    let m = json(dir.join("metrics.json"));
    let num = |k: &str| {
        m[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing from {m}"))
    };
    assert_eq!(num("finetune/steps"), 16.0);
    assert_eq!(num("evaluation/reverted_layers"), 0.0, "{m}");
    assert!(
        num("finetune/perplexity") < num("finetune/ptq_perplexity"),
        "fine-tuned {} vs as-is {}",
        num("finetune/perplexity"),
        num("finetune/ptq_perplexity")
    );
    assert_eq!(
        num("finetune/perplexity"),
        num("evaluation/perplexity_after")
    );
    let history = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 8, "one row per 2 steps: {history}");
    assert!(history.contains("train/kl_divergence"), "{history}");
    let expected = digest(&whole);

    // The model first, so the only checkpoint written next is the fine-tuning's.
    let p = Project::new();
    let upstream = &PIPELINE[..PIPELINE.find("      ternary:").unwrap()];
    p.write("q.yaml", upstream);
    p.apply_ok("q.yaml", &[]);
    p.write("q.yaml", &fine_tuned(16));
    p.kill_when(
        &["apply", "q.yaml"],
        "checkpoint/progress.json",
        std::time::Duration::from_secs(300),
        "fine-tuning never checkpointed",
        |t| {
            serde_json::from_str::<serde_json::Value>(t)
                .is_ok_and(|v| v["step"].as_u64() >= Some(8))
        },
    );
    let out = p.run(&["-v", "--log-format", "json", "apply", "q.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = common::events(&out);
    assert!(
        evs.iter().any(|e| e["event"] == "log"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resuming from the checkpoint at step"))),
        "fine-tuning did not resume from its checkpoint"
    );
    assert_eq!(
        digest(&p),
        expected,
        "the resumed artifact differs from an uninterrupted run's"
    );
}
