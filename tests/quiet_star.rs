//! Quiet-STaR (`train` with `objective: quiet-star`) end to end through the CLI on a baked micro
//! model: the step adds a mixing head, trains with thoughts under the anti-theater checks (whose
//! failures roll back with tightened knobs, or fail the step), reports `rl/*` and
//! `anti_theater/*`, and a killed step resumes to a byte-identical artifact.

mod common;

use std::time::Duration;

use common::{Project, stderr, steps_with};

fn pipeline(steps: u32, on_failure: &str, max_interventions: u32) -> String {
    format!(
        r#"
version: 1
name: qs
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
          model: {{ preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 160, window: 32 }}
          steps: 0
          math_eval: 0
          eval_records: 4
          seq_len: 32
      baked:
        op: bake
        inputs: {{ model: model, data: traces }}
        with:
          optimizer: {{ preset: phase3-baking, lr: 3.0e-3 }}
          steps: 8
          batch_size: 4
          seq_len: 64
          eval_per_strategy: 1
          max_new_tokens: 6
          eval_records: 8
      thinking:
        op: train
        inputs: {{ init: baked, data: traces }}
        with:
          objective: quiet-star
          optimizer: {{ preset: phase3-rl, muon_lr: 0.002 }}
          steps: {steps}
          batch_size: 2
          seq_len: 64
          log_every: 2
          checkpoint_every: 2
          quiet_star:
            num_thoughts: 2
            thought_length: 5
            n_true: 2
            check_every: 4
            max_interventions: {max_interventions}
            on_failure: {on_failure}
            check_rows: 2
            check_prompts: 2
            check_max_tokens: 6
            eval_rows: 2
            eval_per_strategy: 1
            max_new_tokens: 6
"#
    )
}

fn json(path: std::path::PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn digest(p: &Project) -> String {
    let out = p.run(&["show", "p.thinking", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["outputs"]["model"]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn quiet_star_trains_the_baked_model_under_the_checks_and_reports_them() {
    let p = Project::new();
    p.write("q.yaml", &pipeline(8, "warn", 1));
    p.apply_ok("q.yaml", &[]);
    let out = p.run(&["export", "p.thinking", "exp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = p.path().join("exp/model");
    let config = json(dir.join("config.json"));
    assert_eq!(config["model"]["mixing_head"], true);
    assert_eq!(config["quiet_star"]["thought_length"], 5);
    assert_eq!(config["thinking_tokens"]["[thinking]"], 3);
    let m = json(dir.join("metrics.json"));
    for k in [
        "rl/avg_reward",
        "rl/final_kl_divergence",
        "rl/divergence_from_direct",
        "rl/ablation_accuracy_drop",
        "rl/avg_thought_length",
        "rl/thought_diversity",
        "rl/mixed_nll",
        "rl/baked_nll",
        "rl/improvement_over_baked",
        "rl/answer_accuracy",
        "rl/baked_answer_accuracy",
        "anti_theater/divergence_passed",
        "anti_theater/ablation_passed",
        "anti_theater/length_passed",
        "anti_theater/diversity_passed",
        "anti_theater/correlation_passed",
        "anti_theater/all_passed",
    ] {
        assert!(m[k].is_number(), "{k} missing from {m}");
    }
    // The checks measured thoughts at trace positions; thoughts of 5 tokens are at most 5 long.
    assert!(m["anti_theater/positions"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["anti_theater/length"].as_f64().unwrap() <= 5.0);
    // The history has the checks (at steps 4 and 8, and again after a rollback) and every
    // intervention, and the knobs say how many there were.
    let history: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let checks = history
        .iter()
        .filter(|r| r.get("anti_theater/all_passed").is_some())
        .count();
    let interventions: Vec<&serde_json::Value> = history
        .iter()
        .filter(|r| r.get("intervention").is_some())
        .collect();
    assert_eq!(checks, 2 + interventions.len(), "{history:?}");
    assert_eq!(m["rl/interventions"], interventions.len());
    assert_eq!(
        m["rl/kl_scale"].as_f64().unwrap(),
        2f64.powi(interventions.len() as i32)
    );
    // A micro model does not learn to think in 8 steps: the first failure is an intervention.
    assert_eq!(interventions.len(), 1, "{history:?}");
    assert_eq!(interventions[0]["rolled_back_to"], 0);
    assert_eq!(m["anti_theater/all_passed"], 0.0);

    // `forge generate` thinks before every token, as the model was trained to, unless told not to.
    let generate = |extra: &[&str]| -> serde_json::Value {
        let args = [
            "generate",
            "p.thinking",
            "--prompt",
            "3 + 4 =",
            "--max-tokens",
            "3",
        ];
        let out = p.run(&[&args[..], extra, &["--json"]].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let tokens = |g: &serde_json::Value| -> Vec<(u64, bool)> {
        g["result"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_u64().unwrap(), t["thought"] == true))
            .collect()
    };
    let thinking = generate(&[]);
    assert_eq!(thinking["result"]["thought_length"], 5);
    let t = tokens(&thinking);
    // Before each written token, a thought of [thinking], 5 tokens and [/endthinking] (eos may
    // end it after a last thought); at most 3 written tokens.
    assert!(
        !t.is_empty() && t.len() <= 3 * 8 && matches!(t.len() % 8, 0 | 7),
        "{t:?}"
    );
    for group in t.chunks(8) {
        assert_eq!((group[0].0, group[6].0), (3, 4), "{t:?}");
        assert!(group[..7].iter().all(|(_, thought)| *thought), "{t:?}");
    }
    let hidden = thinking["result"]["text"].as_str().unwrap();
    assert!(!hidden.contains("[thinking]"), "{hidden}");
    let shown = generate(&["--show-thoughts"]);
    assert_eq!(tokens(&shown), t, "showing thoughts changes nothing else");
    let shown = shown["result"]["text"].as_str().unwrap();
    assert!(shown.starts_with("[thinking]"), "{shown}");
    assert_eq!(
        tokens(&generate(&[])),
        t,
        "greedy thinking is deterministic"
    );
    let direct = generate(&["--direct"]);
    assert!(direct["result"]["thought_length"].is_null());
    let direct = tokens(&direct);
    assert!(!direct.is_empty() && direct.len() <= 3, "{direct:?}");
}

#[test]
fn theater_fails_the_step_with_its_numbers_once_interventions_run_out() {
    let p = Project::new();
    p.write("q.yaml", &pipeline(4, "fail", 0));
    let out = p.run(&["apply", "q.yaml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("theater at step 4 after 0 interventions"),
        "{err}"
    );
    assert!(
        err.contains("divergence") && err.contains("FAILED"),
        "{err}"
    );
}

#[test]
fn killed_quiet_star_resumes_bit_identically() {
    let whole = Project::new();
    whole.write("q.yaml", &pipeline(8, "warn", 1));
    whole.apply_ok("q.yaml", &[]);
    let expected = digest(&whole);

    let p = Project::new();
    p.write("q.yaml", &pipeline(8, "warn", 1));
    // Killed after the rollback (its progress has an intervention): the resumed run must carry
    // the tightened knobs and the state it rolled back to.
    p.kill_when(
        &["apply", "q.yaml"],
        "checkpoint/progress.json",
        Duration::from_secs(300),
        "quiet-star never checkpointed after an intervention",
        |t| {
            serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| {
                v["interventions"].as_u64() >= Some(1) && v["step"].as_u64() >= Some(2)
            })
        },
    );
    let out = p.run(&["-v", "--log-format", "json", "apply", "q.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = common::events(&out);
    assert!(steps_with(&evs, "started").contains(&"p.thinking".to_string()));
    assert!(
        evs.iter().any(|e| e["event"] == "log"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resuming from the checkpoint at step"))),
        "quiet-star did not resume from its checkpoint"
    );
    assert_eq!(
        digest(&p),
        expected,
        "the resumed artifact differs from an uninterrupted run's"
    );
}
