//! The `merge` op end to end through the CLI, on three small Phase-1 models: the eight combos
//! give eight different models, an evolution reports its log, lineage and honest improvement and
//! its champion trains on, fitness results are reused across runs by weight digest, and a killed
//! evolution resumes at its last generation to the same champion bytes.

mod common;

use std::time::Duration;

use common::{Project, stderr, steps_with};

const MODEL: &str = "{ preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 3, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }";

fn pipeline(merge: &str) -> String {
    format!(
        r#"
version: 1
name: mg
phases:
  p:
    steps:
      corpus: {{ op: download, with: {{ source: "builtin:mixed", samples: 600 }} }}
      tok: {{ op: tokenizer, inputs: {{ data: corpus }}, with: {{ vocab_size: 320 }} }}
      init:
        op: train
        inputs: {{ data: corpus, tokenizer: tok }}
        with: {{ model: {MODEL}, steps: 4, batch_size: 4, seq_len: 32, math_eval: 0, eval_records: 4 }}
      model:
        op: train
        inputs: {{ data: corpus, tokenizer: tok, init: init }}
        matrix: {{ seed: [1, 2, 3] }}
        seed: "${{matrix.seed}}"
        with:
          model: {MODEL}
          steps: 6
          batch_size: 4
          seq_len: 32
          math_eval: 0
          eval_records: 4
{merge}
"#
    )
}

fn evolve(generations: u32) -> String {
    format!(
        r"      champion:
        op: merge
        inputs: {{ models: model, base: init, data: corpus, control: init }}
        with:
          strategy: evolve
          evolve: {{ generations: {generations}, population: 4, patience: 10 }}
          fitness: {{ eval_records: 12, batch_size: 4, seq_len: 32, math_eval: 2 }}"
    )
}

fn export(p: &Project, step: &str, dir: &str) -> std::path::PathBuf {
    let out = p.run(&["export", step, dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    p.path().join(dir)
}

#[test]
fn all_eight_combos_of_real_models_differ() {
    let p = Project::new();
    let merge = r#"      combo:
        op: merge
        inputs: { models: model, base: init }
        matrix: { id: ["000", "001", "010", "011", "100", "101", "110", "111"] }
        with: { strategy: combo, combo: "${matrix.id}" }"#;
    p.write("m.yaml", &pipeline(merge));
    p.apply_ok("m.yaml", &["--jobs", "2"]);
    let mut seen = std::collections::BTreeMap::new();
    for id in ["000", "001", "010", "011", "100", "101", "110", "111"] {
        let dir = export(&p, &format!("p.combo[id={id}]"), &format!("c{id}"));
        let bytes = std::fs::read(dir.join("model/model.safetensors")).unwrap();
        if let Some(other) = seen.insert(*blake3::hash(&bytes).as_bytes(), id) {
            panic!("combos {other} and {id} gave identical weights");
        }
    }
}

#[test]
fn evolution_reports_and_its_champion_trains_on() {
    let p = Project::new();
    let yaml = pipeline(&format!(
        "{}\n      tuned:\n        op: train\n        inputs: {{ data: corpus, tokenizer: tok, init: champion }}\n        with: {{ model: {MODEL}, steps: 2, batch_size: 4, seq_len: 32, math_eval: 0, eval_records: 4 }}",
        evolve(3)
    ));
    p.write("m.yaml", &yaml);
    let evs = p.apply_ok("m.yaml", &["--jobs", "2"]);
    assert!(steps_with(&evs, "finished").contains(&"p.tuned".to_string()));
    let dir = export(&p, "p.champion", "ch").join("model");
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "metrics.json",
        "evolution_log.json",
        "lineage.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
    for k in [
        "final/best_fitness",
        "parents/avg_fitness",
        "evolution/improvement_over_parents",
        "final/perplexity",
        "lmc/max_barrier",
        "base/perplexity",
        // Once on the test split, beside the parents, the base and the control, with intervals.
        "final/test_perplexity",
        "final/test_perplexity_lo",
        "final/test_perplexity_hi",
        "parents/2/test_perplexity",
        "control/test_perplexity",
        "final/test_vs/control",
        "final/test_vs/control_lo",
        "final/test_vs/parents/0_hi",
        "final/test_math_accuracy",
        "final/test_rows",
    ] {
        assert!(m[k].is_number(), "{k} missing in {m}");
    }
    let (lo, v, hi) = (
        m["final/test_perplexity_lo"].as_f64().unwrap(),
        m["final/test_perplexity"].as_f64().unwrap(),
        m["final/test_perplexity_hi"].as_f64().unwrap(),
    );
    assert!(lo <= v && v <= hi, "{lo} {v} {hi}");
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("evolution_log.json")).unwrap()).unwrap();
    let gens = log["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 4, "generation 0 and three more");
    assert_eq!(gens[0]["candidates"], 18, "the generation-0 pool");
    for g in gens {
        assert!(g["best_fitness"].as_f64().unwrap() >= g["worst_fitness"].as_f64().unwrap());
    }
    let lineage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("lineage.json")).unwrap()).unwrap();
    assert!(lineage["champion"]["recipe"].is_object(), "{lineage}");
    assert_eq!(lineage["inputs"].as_array().unwrap().len(), 3);
}

#[test]
fn fitness_is_cached_by_weight_digest_across_runs() {
    let p = Project::new();
    p.write("m.yaml", &pipeline(&evolve(1)));
    p.apply_ok("m.yaml", &["--jobs", "2"]);
    // Another evolution of the same models: the parents and generation 0 are not re-run.
    p.write("m.yaml", &pipeline(&evolve(2)));
    let evs = p.apply_ok("m.yaml", &["--jobs", "2"]);
    let hits: f64 = evs
        .iter()
        .filter(|e| e["event"] == "metric" && e["name"] == "evolution/fitness_cache_hits")
        .map(|e| e["value"].as_f64().unwrap())
        .sum();
    assert!(
        hits >= 18.0,
        "the 18 candidates of generation 0 should hit the cache, got {hits}"
    );
}

#[test]
fn killed_evolution_resumes_bit_identically() {
    let whole = Project::new();
    whole.write("m.yaml", &pipeline(&evolve(4)));
    whole.apply_ok("m.yaml", &["--jobs", "2"]);
    let expected =
        std::fs::read(export(&whole, "p.champion", "ch").join("model/model.safetensors")).unwrap();
    let expected_artifact = artifact(&whole, "p.champion");

    let p = Project::new();
    p.write("m.yaml", &pipeline(&evolve(4)));
    p.kill_when(
        &["apply", "m.yaml", "--jobs", "2"],
        "checkpoint/evolve.json",
        Duration::from_secs(600),
        "the evolution never checkpointed",
        |t| {
            serde_json::from_str::<serde_json::Value>(t)
                .is_ok_and(|v| v["generation"].as_u64() >= Some(2))
        },
    );
    let out = p.run(&[
        "-v",
        "--log-format",
        "json",
        "apply",
        "m.yaml",
        "--jobs",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = common::events(&out);
    let resumed = evs.iter().any(|e| {
        e["event"] == "log"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resuming the evolution after generation"))
    });
    assert!(resumed, "the evolution did not resume from its checkpoint");
    let got =
        std::fs::read(export(&p, "p.champion", "ch").join("model/model.safetensors")).unwrap();
    assert!(
        got == expected,
        "resumed champion differs from an uninterrupted run"
    );
    // The whole artifact: metrics, evolution log and lineage included.
    assert_eq!(artifact(&p, "p.champion"), expected_artifact);
}

/// The digest of the whole `model` artifact of step `step`.
fn artifact(p: &Project, step: &str) -> String {
    let out = p.run(&["show", step, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["outputs"]["model"]["digest"].as_str().unwrap().to_owned()
}
