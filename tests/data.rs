//! Built-in datasets through the CLI: byte-identical across stores for one seed, different for
//! another, with disjoint splits.

mod common;

use std::collections::HashSet;

use common::Project;

const PIPE: &str = "version: 1\nname: data\ndefaults: { seed: SEED }\nphases:\n  d:\n    steps:\n      corpus: { op: download, with: { source: \"builtin:mixed\", samples: 3000 } }\n";

fn digest(p: &Project) -> String {
    let out = p.run(&["show", "d.corpus", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["outputs"]["data"]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn builtin_data_is_deterministic_per_seed_with_disjoint_splits() {
    let a = Project::new();
    a.write("d.yaml", &PIPE.replace("SEED", "7"));
    a.apply_ok("d.yaml", &[]);
    let b = Project::new();
    b.write("d.yaml", &PIPE.replace("SEED", "7"));
    b.apply_ok("d.yaml", &[]);
    assert_eq!(digest(&a), digest(&b));
    let c = Project::new();
    c.write("d.yaml", &PIPE.replace("SEED", "8"));
    c.apply_ok("d.yaml", &[]);
    assert_ne!(digest(&a), digest(&c));

    a.run(&["export", "d.corpus", "exp"]);
    let mut seen = HashSet::new();
    let mut total = 0;
    for split in ["train", "val", "test"] {
        let text =
            std::fs::read_to_string(a.path().join(format!("exp/data/{split}.jsonl"))).unwrap();
        for line in text.lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(
                seen.insert(r["prompt"].as_str().unwrap().to_owned()),
                "prompt in two splits"
            );
            assert!(!r["answer"].as_str().unwrap().is_empty());
            total += 1;
        }
    }
    assert_eq!(total, 3000);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.path().join("exp/data/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["seed"], 7);
    assert_eq!(
        manifest["train"]["categories"].as_object().unwrap().len(),
        5
    );
}
