//! The `bake` op end to end through the CLI: the thinking tokens land in the tokenizer and the
//! config, training on traces lowers the trace loss, the `baking/*` metrics are written, and a
//! killed bake resumes from its checkpoint to a byte-identical artifact.

mod common;

use std::time::Duration;

use common::{Project, stderr, steps_with};

fn pipeline(steps: u32) -> String {
    format!(
        r#"
version: 1
name: bk
phases:
  p:
    steps:
      corpus: {{ op: download, with: {{ source: "builtin:math", samples: 400 }} }}
      traces: {{ op: download, with: {{ source: "builtin:reasoning", samples: 600 }} }}
      tok: {{ op: tokenizer, inputs: {{ data: [corpus, traces] }}, with: {{ vocab_size: 320 }} }}
      model:
        op: train
        inputs: {{ data: corpus, tokenizer: tok }}
        with:
          model: {{ preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }}
          steps: 0
          math_eval: 0
          eval_records: 4
          seq_len: 32
      baked:
        op: bake
        inputs: {{ model: model, data: traces }}
        with:
          optimizer: {{ preset: phase3-baking, lr: 3.0e-3 }}
          steps: {steps}
          batch_size: 4
          seq_len: 64
          log_every: 2
          checkpoint_every: 4
          eval_per_strategy: 1
          max_new_tokens: 6
          eval_records: 8
"#
    )
}

fn export(p: &Project) -> std::path::PathBuf {
    let out = p.run(&["export", "p.baked", "exp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    p.path().join("exp/model")
}

fn json(path: std::path::PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn digest(p: &Project) -> String {
    let out = p.run(&["show", "p.baked", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["outputs"]["model"]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn baking_adds_the_thinking_tokens_and_learns_the_traces() {
    let p = Project::new();
    p.write("b.yaml", &pipeline(24));
    p.apply_ok("b.yaml", &[]);
    let dir = export(&p);
    // The tokens are special added tokens at 3–14, and the config lists them.
    let tk = json(dir.join("tokenizer.json"));
    let added = tk["added_tokens"].as_array().unwrap();
    for (id, token) in [
        (3, "[thinking]"),
        (4, "[/endthinking]"),
        (5, "<step>"),
        (14, "<uncertain>"),
    ] {
        let entry = added.iter().find(|a| a["id"] == id).unwrap();
        assert_eq!(entry["content"], token);
        assert_eq!(entry["special"], true);
    }
    let config = json(dir.join("config.json"));
    assert_eq!(config["thinking_tokens"]["[thinking]"], 3);
    assert_eq!(config["thinking_tokens"]["<correct>"], 13);
    // The loss on trace tokens falls.
    let losses: Vec<f64> = std::fs::read_to_string(dir.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["train/loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 12);
    assert!(
        losses[losses.len() - 1] < losses[0] - 0.5,
        "trace loss did not fall: {losses:?}"
    );
    let m = json(dir.join("metrics.json"));
    for k in [
        "baking/loss",
        "baking/val_loss",
        "baking/accuracy_overall",
        "baking/accuracy_chain_of_thought",
        "baking/answer_accuracy_bayesian",
        "baking/input_answer_accuracy_mece",
        "baking/thinking_token_usage",
        "baking/strategy_token_usage",
        "baking/params_initialised",
    ] {
        assert!(m[k].is_number(), "{k} missing from {m}");
    }
    assert_eq!(m["baking/evaluated"], 10, "one test prompt per strategy");
    assert_eq!(m["baking/tokens_added"], 12);
}

#[test]
fn killed_baking_resumes_bit_identically() {
    let whole = Project::new();
    whole.write("b.yaml", &pipeline(16));
    whole.apply_ok("b.yaml", &[]);
    let expected = digest(&whole);

    let p = Project::new();
    p.write("b.yaml", &pipeline(16));
    p.kill_when(
        &["apply", "b.yaml"],
        "checkpoint/progress.json",
        Duration::from_secs(180),
        "baking never checkpointed",
        |t| {
            serde_json::from_str::<serde_json::Value>(t)
                .is_ok_and(|v| v["step"].as_u64() >= Some(8))
        },
    );
    let out = p.run(&["-v", "--log-format", "json", "apply", "b.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = common::events(&out);
    assert!(steps_with(&evs, "started").contains(&"p.baked".to_string()));
    assert!(
        evs.iter().any(|e| e["event"] == "log"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resuming from the checkpoint at step"))),
        "baking did not resume from its checkpoint"
    );
    assert_eq!(
        digest(&p),
        expected,
        "the resumed artifact differs from an uninterrupted run's"
    );
}
