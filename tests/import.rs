//! `forge import mergekit`: mergekit configs of the shapes its examples use become pipelines
//! that plan and apply, with the arithmetic checked by hand on tiny models; what forge cannot
//! express is refused with every problem named.

mod common;

use std::collections::BTreeMap;

use common::{Project, stderr};
use forge::ops::merge::tensors::{StateDict, Tensor};

/// Write a one-tensor model (and an empty config) at `dir`.
fn model(p: &Project, dir: &str, values: &[f32]) {
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "layers.0.mlp.weight".to_string(),
        Tensor {
            shape: vec![values.len()],
            data: values.to_vec(),
        },
    );
    p.write(&format!("{dir}/config.json"), "{}");
    let path = p.path().join(dir).join("model.safetensors");
    std::fs::write(path, StateDict { tensors }.to_bytes()).unwrap();
}

fn import(p: &Project, config: &str) -> std::process::Output {
    p.write("mk.yml", config);
    p.run(&["import", "mergekit", "mk.yml"])
}

/// Import `config`, apply the pipeline, and return the merged tensor.
fn merged(p: &Project, config: &str) -> Vec<f32> {
    let out = import(p, config);
    assert!(out.status.success(), "{}", stderr(&out));
    p.write("merge.yaml", &String::from_utf8(out.stdout).unwrap());
    p.apply_ok("merge.yaml", &[]);
    let dir = format!("exp{}", p.path().read_dir().unwrap().count());
    let exported = p.run(&["export", "merge.merged", &dir]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let bytes = std::fs::read(p.path().join(&dir).join("model/model.safetensors")).unwrap();
    StateDict::from_bytes(&bytes).unwrap().tensors["layers.0.mlp.weight"]
        .data
        .clone()
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

fn three_models() -> Project {
    let p = Project::new();
    model(&p, "models/base", &[0.0, 0.0, 0.0, 0.0]);
    model(&p, "models/a", &[1.0, -2.0, 3.0, 0.0]);
    model(&p, "models/b", &[3.0, 2.0, -1.0, 0.0]);
    p
}

#[test]
fn linear_and_task_arithmetic_give_the_numbers_worked_by_hand() {
    let p = three_models();
    // (1·a + 3·b) / 4
    let linear = merged(
        &p,
        "models:\n  - model: ./models/a\n    parameters: { weight: 1.0 }\n  - model: ./models/b\n    parameters: { weight: 3.0 }\nmerge_method: linear\ndtype: float32\n",
    );
    close(&linear, &[2.5, 1.0, 0.0, 0.0]);
    // base + λ (0.5 τa + 0.5 τb), λ = 2, no normalisation (mergekit's default)
    let task = merged(
        &p,
        "models:\n  - model: ./models/a\n    parameters: { weight: 0.5 }\n  - model: ./models/b\n    parameters: { weight: 0.5 }\n  - model: ./models/base\nmerge_method: task_arithmetic\nbase_model: ./models/base\nparameters: { lambda: 2.0 }\n",
    );
    close(&task, &[4.0, 0.0, 2.0, 0.0]);
    // TIES, density 1: signs elected by the sum 0.5τa + 0.5τb = (2, 0, 1, 0) → +, +, +, +;
    // entry 1: τa = −2 disagrees, τb = 2 agrees → 2; entry 2: τb = −1 disagrees → 3.
    let ties = merged(
        &p,
        "models:\n  - model: ./models/a\n    parameters: { weight: 0.5, density: 1.0 }\n  - model: ./models/b\n    parameters: { weight: 0.5, density: 1.0 }\nmerge_method: ties\nbase_model: ./models/base\n",
    );
    close(&ties, &[2.0, 2.0, 3.0, 0.0]);
}

#[test]
fn a_ties_config_with_hub_models_converts_and_says_what_it_dropped() {
    let p = Project::new();
    let out = import(
        &p,
        r"
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: 0.5
      weight: 0.7
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: 0.3
  - model: TheBloke/Llama-2-13B-fp16
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!(format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    ));
    // The pipeline plans once the models are where its comments say.
    p.write("merge.yaml", &String::from_utf8(out.stdout).unwrap());
    for m in ["orca_mini_v3_13b", "platypus2-13b", "llama-2-13b-fp16"] {
        model(&p, &format!("models/{m}"), &[0.0]);
    }
    let plan = p.run(&["plan", "merge.yaml"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
}

#[test]
fn slerp_over_one_whole_slice_and_passthrough_slices_convert() {
    let p = three_models();
    // mergekit's slerp example shape: one slice, both models over the same layers, t = 0.25.
    let slerp = import(
        &p,
        "slices:\n  - sources:\n      - model: ./models/a\n        layer_range: [0, 1]\n      - model: ./models/b\n        layer_range: [0, 1]\nmerge_method: slerp\nbase_model: ./models/a\nparameters:\n  t: 0.25\ndtype: bfloat16\n",
    );
    assert!(slerp.status.success(), "{}", stderr(&slerp));
    let yaml = String::from_utf8(slerp.stdout.clone()).unwrap();
    assert!(
        yaml.contains("inputs: { models: [a, b] }")
            && yaml.contains("technique: { method: slerp, t: 0.25 }"),
        "{yaml}"
    );
    assert!(
        stderr(&slerp).contains("covers layers [0, 1]"),
        "{}",
        stderr(&slerp)
    );
    // Passthrough: layer ranges map to frankenmerge slices over the listed models.
    let pass = import(
        &p,
        "slices:\n  - sources:\n    - model: ./models/a\n      layer_range: [0, 24]\n  - sources:\n    - model: ./models/b\n      layer_range: [8, 32]\nmerge_method: passthrough\ndtype: float16\n",
    );
    assert!(pass.status.success(), "{}", stderr(&pass));
    let yaml = String::from_utf8(pass.stdout).unwrap();
    assert!(
        yaml.contains(
            "technique: { method: frankenmerge, rest_from: 0, slices: [{ layers: [0, 24], model: 0 }, { layers: [8, 32], model: 1 }] }"
        ),
        "{yaml}"
    );
}

#[test]
fn what_forge_cannot_express_is_refused_with_every_problem_named() {
    let p = Project::new();
    let out = import(
        &p,
        r"
slices:
  - sources:
      - model: a/x
        layer_range: [0, 32]
      - model: b/y
        layer_range: [0, 32]
merge_method: slerp
base_model: a/x
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - value: 0.5
",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("parameters.t: per-tensor `filter:` values cannot be expressed"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = import(
        &p,
        r"
models:
  - model: a/x+lora/y
    parameters: { density: [1, 0.7, 0.1], weight: 1.0 }
  - model: b/y
    parameters: { density: 0.5, weight: 0.5 }
  - model: c/z
    parameters: { density: 0.3, weight: 0.5 }
merge_method: ties
base_model: c/base
rope_scaling: 2
",
    );
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(stderr(&out));

    for (method, why) in [
        ("dare_ties", "no sign election"),
        ("model_stock", "no such technique"),
        ("frobnicate", "not a method forge knows"),
    ] {
        let out = import(
            &p,
            &format!(
                "models:\n  - model: a/x\n  - model: b/y\nmerge_method: {method}\nbase_model: a/x\n"
            ),
        );
        assert_eq!(out.status.code(), Some(2), "{method}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("merge_method `{method}` cannot be expressed"))
                && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn an_existing_output_file_is_not_overwritten() {
    let p = three_models();
    p.write(
        "mk.yml",
        "models:\n  - model: ./models/a\n  - model: ./models/b\nmerge_method: linear\n",
    );
    p.write("taken.yaml", "mine\n");
    let out = p.run(&["import", "mergekit", "mk.yml", "-o", "taken.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.path().join("taken.yaml")).unwrap(),
        "mine\n"
    );
    let out = p.run(&["import", "mergekit", "mk.yml", "-o", "new.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = p.run(&["plan", "new.yaml"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
}
