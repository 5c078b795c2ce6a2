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

#[test]
fn forge_generate_talks_to_any_model_and_hides_thoughts_unless_asked() {
    let p = Project::new();
    p.write("b.yaml", &pipeline(4));
    p.apply_ok("b.yaml", &[]);
    let gen_json = |args: &[&str]| -> serde_json::Value {
        let out = p.run(&[&["generate"][..], args, &["--json"]].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let prompt = ["--prompt", "Tom has 3 apples and gets 4 more. How many?"];
    // What must repeat: the ids and halting steps (not the wall times).
    let ids = |g: &serde_json::Value| -> Vec<(u64, u64)> {
        g["result"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_u64().unwrap(),
                    t["halting_steps"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // The baked model (Phase 3) and the model it came from (Phase 1) both talk.
    for step in ["p.baked", "p.model"] {
        let args = [&[step][..], &prompt, &["--max-tokens", "12"]].concat();
        let g = gen_json(&args);
        let tokens = g["result"]["tokens"].as_array().unwrap();
        assert!(!tokens.is_empty() && tokens.len() <= 12, "{g}");
        for t in tokens {
            let h = t["halting_steps"].as_u64().unwrap();
            assert!(
                (1..=2).contains(&h),
                "ACT runs 1 to sup_steps recursions: {t}"
            );
        }
        assert!(g["result"]["tokens_per_s"].as_f64().unwrap() > 0.0);
        // Greedy decoding is deterministic; so is sampling with a seed.
        assert_eq!(ids(&gen_json(&args)), ids(&g));
        let sampled = [&args[..], &["--temperature", "1.0", "--seed", "5"]].concat();
        assert_eq!(ids(&gen_json(&sampled)), ids(&gen_json(&sampled)));
    }
    // Thoughts are generated but shown only when asked for.
    let args = [&["p.baked"][..], &prompt, &["--max-tokens", "24"]].concat();
    let hidden = gen_json(&args);
    let shown = gen_json(&[&args[..], &["--show-thoughts"]].concat());
    assert_eq!(ids(&hidden), ids(&shown));
    let thoughts = hidden["result"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["thought"] == true)
        .count();
    let text = |g: &serde_json::Value| g["result"]["text"].as_str().unwrap().to_owned();
    assert!(!text(&hidden).contains("[thinking]"), "{}", text(&hidden));
    if thoughts > 0 {
        assert!(text(&shown).contains("[thinking]"), "{}", text(&shown));
    }
    // Plain output streams the text to stdout and a summary to stderr.
    let out = p.run(&[&["generate"][..], &args].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("tokens/s"), "{}", stderr(&out));
    // A dataset is not a model; a negative temperature is not a temperature.
    let out = p.run(&["generate", "p.corpus", "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = p.run(&["generate", "p.baked", "--prompt", "x", "--temperature=-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn prompt_baking_lowers_the_held_out_kl_and_an_empty_prompt_changes_nothing() {
    let p = Project::new();
    let bake_step = |name: &str, prompt: &str| {
        format!(
            r#"      {name}:
        op: bake
        inputs: {{ model: model, data: traces }}
        with:
          method: prompt
          prompt: "{prompt}"
          optimizer: {{ preset: phase3-baking, lr: 1.0e-2, muon_lr: 0.05, weight_decay: 0 }}
          steps: 400
          batch_size: 8
          seq_len: 16
          eval_per_strategy: 1
          max_new_tokens: 4
          eval_records: 8
"#
        )
    };
    let yaml = pipeline(4)
        .split("      baked:")
        .next()
        .unwrap()
        .replace("steps: 0\n", "steps: 150\n")
        + &bake_step("told", "Think step by step.")
        + &bake_step("nothing", "");
    p.write("b.yaml", &yaml);
    p.apply_ok("b.yaml", &[]);
    let metrics = |step: &str| {
        let out = p.run(&["show", step, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["metrics"].clone()
    };
    let told = metrics("p.told");
    let (before, after) = (
        told["baking/prompt_kl_before"].as_f64().unwrap(),
        told["baking/prompt_kl_after"].as_f64().unwrap(),
    );
    assert!(before > 0.0, "{told}");
    // A 36k-parameter model hardly reads a prompt, so the KL is small and falls slowly here
    // (0.105 → 0.080 in 400 steps with flex's AVX-512 rounding; 200 steps, enough for
    // 0.103 → 0.072 with its AVX2 rounding, gave only 0.090); the objective's unit test shows the
    // large factor on a teacher the prompt really steers (2.29 → 0.016).
    assert!(
        after < 0.85 * before,
        "held-out KL fell only from {before} to {after}"
    );
    assert!(told["baking/weight_change_rms"].as_f64().unwrap() > 0.0);
    // An empty prompt: the teacher is the model itself, the KL and its gradient are exactly 0,
    // and (without weight decay) not one weight moves.
    let nothing = metrics("p.nothing");
    assert_eq!(nothing["baking/prompt_kl_before"], 0.0, "{nothing}");
    assert_eq!(nothing["baking/prompt_kl_after"], 0.0, "{nothing}");
    assert_eq!(nothing["baking/weight_change_rms"], 0.0, "{nothing}");
}
