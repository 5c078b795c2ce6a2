//! The `train` op end to end through the CLI: the loss falls, a killed run resumes from its
//! checkpoint to a byte-identical artifact, variants' settings survive a shared initialisation,
//! and bad configurations fail at plan time.

mod common;

use std::time::Duration;

use common::{Project, stderr, steps_with};

fn pipeline(steps: u32) -> String {
    format!(
        r#"
version: 1
name: tr
phases:
  p:
    steps:
      corpus: {{ op: download, with: {{ source: "builtin:math", samples: 600 }} }}
      tok: {{ op: tokenizer, inputs: {{ data: corpus }}, with: {{ vocab_size: 320 }} }}
      model:
        op: train
        inputs: {{ data: corpus, tokenizer: tok }}
        with:
          model: {{ preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }}
          steps: {steps}
          batch_size: 4
          seq_len: 32
          log_every: 2
          checkpoint_every: 4
          math_eval: 2
          eval_records: 8
"#
    )
}

/// The digest of the whole `model` artifact of step `step`.
fn artifact(p: &Project, step: &str) -> String {
    let out = p.run(&["show", step, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["outputs"]["model"]["digest"].as_str().unwrap().to_owned()
}

fn weights(p: &Project) -> Vec<u8> {
    let out = p.run(&["export", "p.model", "exp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read(p.path().join("exp/model/model.safetensors")).unwrap()
}

/// One metric from every line of the exported model's `history.jsonl`.
fn history(p: &Project, key: &str) -> Vec<f64> {
    let hist = std::fs::read_to_string(p.path().join("exp/model/history.jsonl")).unwrap();
    hist.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} not reported"))
        })
        .collect()
}

#[test]
fn loss_falls_and_outputs_are_complete() {
    let p = Project::new();
    p.write("t.yaml", &pipeline(40));
    p.apply_ok("t.yaml", &[]);
    weights(&p);
    let losses = history(&p, "train/loss");
    assert!(losses.len() == 20, "{losses:?}");
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last < first - 0.5,
        "loss did not fall: {first:.3} → {last:.3}"
    );
    for f in [
        "config.json",
        "tokenizer.json",
        "metrics.json",
        "model.safetensors",
    ] {
        assert!(p.path().join("exp/model").join(f).exists(), "{f} missing");
    }
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("exp/model/metrics.json")).unwrap(),
    )
    .unwrap();
    for k in [
        "val/loss",
        "test/perplexity",
        "act/avg_halting_steps",
        "ltm/memory_usage",
        "test/math_accuracy",
        "diversity/inference_passes",
    ] {
        assert!(metrics[k].is_number(), "{k} missing from {metrics}");
    }
}

/// A tiny run on the curriculum's foundation stage (one-operation problems) answers held-out
/// math problems by greedy decoding better than always giving the most common answer.
#[test]
fn math_accuracy_beats_the_majority_baseline() {
    let p = Project::new();
    p.write(
        "m.yaml",
        r#"
version: 1
name: math
phases:
  p:
    steps:
      corpus: { op: download, with: { source: "builtin:math", samples: 4000 } }
      tok: { op: tokenizer, inputs: { data: corpus }, with: { vocab_size: 512 } }
      model:
        op: train
        inputs: { data: corpus, tokenizer: tok }
        with:
          model: { preset: tiny, vocab_size: 512, d_model: 64, heads: 2, layers: 2, d_ff: 192, ltm_slots: 16, max_seq: 96, window: 96, cycles: 1, sup_steps: 1 }
          steps: 300
          batch_size: 16
          seq_len: 96
          curriculum: [ { until: 1.0, max_difficulty: 1 } ]
          math_eval: 60
          eval_records: 8
"#,
    );
    p.apply_ok("m.yaml", &[]);
    let out = p.run(&["show", "p.model", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["metrics"];
    let (acc, base) = (
        m["test/math_accuracy"].as_f64().unwrap(),
        m["test/math_majority_baseline"].as_f64().unwrap(),
    );
    assert_eq!(m["test/math_evaluated"].as_u64(), Some(60), "{m}");
    assert_eq!(m["test/math_max_difficulty"].as_u64(), Some(1), "{m}");
    assert!(
        acc > base + 0.1,
        "math accuracy {acc:.3} does not beat the majority baseline {base:.3}"
    );
}

/// A memory budget splits each step's rows into micro-batches with accumulated gradients: the
/// step learns from the same data, so the loss matches the unsplit run's up to rounding.
#[test]
fn a_memory_budget_splits_steps_into_micro_batches() {
    let metrics = |budget: &str| {
        let p = Project::new();
        p.write(
            "t.yaml",
            &pipeline(6).replace(
                "          batch_size: 4\n",
                &format!("          batch_size: 4\n{budget}"),
            ),
        );
        p.apply_ok("t.yaml", &[]);
        let out = p.run(&["show", "p.model", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["metrics"].clone()
    };
    let whole = metrics("");
    let split = metrics("          memory_budget_mib: 4\n");
    assert_eq!(whole["train/micro_batch_size"].as_u64(), Some(4), "{whole}");
    assert_eq!(split["train/micro_batch_size"].as_u64(), Some(2), "{split}");
    let (a, b) = (
        whole["train/loss"].as_f64().unwrap(),
        split["train/loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-3 * a.abs(), "unsplit {a} vs split {b}");
}

#[test]
fn two_runs_produce_the_same_bytes() {
    let digest = |p: &Project| {
        let out = p.run(&["show", "p.model", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["outputs"]["model"]["digest"].as_str().unwrap().to_owned()
    };
    let a = Project::new();
    a.write("t.yaml", &pipeline(6));
    a.apply_ok("t.yaml", &[]);
    let b = Project::new();
    b.write("t.yaml", &pipeline(6));
    b.apply_ok("t.yaml", &[]);
    assert_eq!(
        digest(&a),
        digest(&b),
        "same pipeline and seed must give the same model artifact"
    );
}

#[test]
fn killed_training_resumes_bit_identically() {
    let whole = Project::new();
    whole.write("t.yaml", &pipeline(24));
    whole.apply_ok("t.yaml", &[]);
    let expected = weights(&whole);
    let expected_artifact = artifact(&whole, "p.model");

    let p = Project::new();
    p.write("t.yaml", &pipeline(24));
    p.kill_when(
        &["apply", "t.yaml"],
        "checkpoint/progress.json",
        Duration::from_secs(120),
        "training never checkpointed",
        |t| {
            serde_json::from_str::<serde_json::Value>(t)
                .is_ok_and(|v| v["step"].as_u64() >= Some(8))
        },
    );
    let out = p.run(&["-v", "--log-format", "json", "apply", "t.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = common::events(&out);
    assert!(steps_with(&evs, "started").contains(&"p.model".to_string()));
    let resumed = evs.iter().any(|e| {
        e["event"] == "log"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resuming from the checkpoint at step"))
    });
    assert!(resumed, "training did not resume from its checkpoint");
    assert!(
        weights(&p) == expected,
        "resumed weights differ from an uninterrupted run"
    );
    // The whole artifact, the loss history logged before the checkpoint included.
    assert_eq!(
        artifact(&p, "p.model"),
        expected_artifact,
        "the resumed artifact differs from an uninterrupted run's"
    );
    assert_eq!(
        history(&p, "step").len(),
        12,
        "every logged step is in the history"
    );
}

#[test]
fn a_variants_memory_gates_replace_those_of_its_shared_initialisation() {
    let p = Project::new();
    let yaml = pipeline(2).replace(
        "      model:\n        op: train\n        inputs: { data: corpus, tokenizer: tok }",
        "      base:\n        op: train\n        inputs: { data: corpus, tokenizer: tok }\n        with: { model: { preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }, steps: 0, math_eval: 0, eval_records: 4, seq_len: 32 }\n      model:\n        op: train\n        inputs: { data: corpus, tokenizer: tok, init: base }\n        matrix: { gates: [[0.9, 0.1, 0.05], [0.5, 0.6, 0.3]] }",
    ).replace(
        "window: 32 }\n          steps: 2",
        "window: 32, mem_gates: \"${matrix.gates}\" }\n          steps: 2",
    );
    p.write("t.yaml", &yaml);
    p.apply_ok("t.yaml", &[]);
    // Read the memory gate bias of each instance's weights: σ(bias) starts at its own gates (and
    // 2 steps of training move it only a little).
    let gates = |step: &str| -> Vec<f64> {
        let dir = p.path().join(format!("exp-{step}"));
        let out = p.run(&["export", step, dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let bytes = std::fs::read(dir.join("model/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("blocks.1.memory.gate_bias").unwrap();
        t.data()
            .chunks(4)
            .map(|b| 1.0 / (1.0 + (-f64::from(f32::from_le_bytes(b.try_into().unwrap()))).exp()))
            .collect()
    };
    let a = gates("p.model[gates=0]");
    let b = gates("p.model[gates=1]");
    for (got, want) in a
        .iter()
        .zip([0.9, 0.1, 0.05])
        .chain(b.iter().zip([0.5, 0.6, 0.3]))
    {
        assert!((got - want).abs() < 0.05, "gates {a:?} and {b:?}");
    }
}

#[test]
fn kl_term_to_a_reference_model_is_trained_and_reported() {
    let p = Project::new();
    let yaml = pipeline(6).replace(
        "      model:\n        op: train\n        inputs: { data: corpus, tokenizer: tok }",
        "      base:\n        op: train\n        inputs: { data: corpus, tokenizer: tok }\n        with: { model: { preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }, steps: 0, math_eval: 0, eval_records: 8, seq_len: 32 }\n      model:\n        op: train\n        inputs: { data: corpus, tokenizer: tok, init: base, reference: base }",
    ).replace("          steps: 6\n", "          steps: 6\n          optimizer: { kl_coef: 0.5 }\n");
    p.write("t.yaml", &yaml);
    p.apply_ok("t.yaml", &[]);
    weights(&p);
    let kls = history(&p, "train/kl_divergence");
    assert!(kls.iter().all(|k| k.is_finite() && *k >= -1e-6), "{kls:?}");
    assert!(
        kls.last().unwrap() > &0.0,
        "the model never moved away from its reference: {kls:?}"
    );
}

#[test]
fn forge_eval_scores_a_model_on_a_dataset_split_or_a_file_deterministically() {
    let p = Project::new();
    p.write("t.yaml", &pipeline(4));
    p.apply_ok("t.yaml", &[]);
    let eval = |args: &[&str]| {
        let out = p.run(&[&["eval", "p.model"][..], args].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    let args = [
        "--data",
        "p.corpus",
        "--split",
        "test",
        "--limit",
        "16",
        "--answers",
        "3",
        "--json",
    ];
    let doc = eval(&args);
    let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    let r = &v["result"];
    assert_eq!(r["rows"], 16);
    assert!(r["tokens"].as_u64().unwrap() > 16, "{r}");
    let ppl = &r["perplexity"];
    assert!(
        ppl["lo"].as_f64() <= ppl["value"].as_f64() && ppl["value"].as_f64() <= ppl["hi"].as_f64()
    );
    assert_eq!(r["answers_checked"], 3, "math records carry answers");
    // The same again, byte for byte.
    assert_eq!(eval(&args), doc);
    // A plain file of records, and the human report.
    p.write(
        "r.jsonl",
        "{\"prompt\": \"Ann has 2 pens and buys 3 more. How many pens?\", \"answer\": \"5\"}\n",
    );
    let text = String::from_utf8(eval(&["--data", "r.jsonl"])).unwrap();
    assert!(
        text.contains("perplexity") && text.contains("1 rows"),
        "{text}"
    );
    // A split that does not exist is the user's to fix.
    let out = p.run(&["eval", "p.model", "--data", "p.corpus", "--split", "dev"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
