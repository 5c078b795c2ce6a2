//! `forge export STEP DIR --format hf`: the directory loads in Hugging Face transformers
//! (`AutoModelForCausalLM` and `AutoTokenizer` with `trust_remote_code=True`), its logits equal
//! forge's own on the same tokens to 1e-4, `generate()` runs, and the tokenizer adds `<s>` and
//! round-trips text.
//!
//! Needs Python with `torch` and `transformers`: `$FORGE_HF_PYTHON`, installed by
//! `.ci/install-transformers` (which also sets `FORGE_REQUIRE_TRANSFORMERS=1`, so CI fails rather
//! than skips without it).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Project, stderr};

/// The Python to run the check with, or `None` (skipped) when none has torch and transformers.
fn python() -> Option<String> {
    common::python_with(
        "FORGE_HF_PYTHON",
        "torch, transformers",
        "FORGE_REQUIRE_TRANSFORMERS",
        ".ci/install-transformers",
    )
}

const CHECK: &str = r#"
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

hf_dir, expected_path = sys.argv[1], sys.argv[2]
expected = json.load(open(expected_path))
model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True)
model.eval()
tok = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)

text = expected["text"]
enc = tok(text)["input_ids"]
assert enc == expected["ids"], f"token ids {enc} != forge's {expected['ids']}"
assert enc[0] == tok.bos_token_id == 1, (enc[:3], tok.bos_token_id)
assert (tok.eos_token, tok.pad_token) == ("</s>", "<pad>"), (tok.eos_token, tok.pad_token)
assert tok.decode(enc, skip_special_tokens=True) == text, tok.decode(enc, skip_special_tokens=True)

with torch.no_grad():
    logits = model(torch.tensor([enc])).logits[0]
want = torch.tensor(expected["logits"]).reshape(logits.shape)
diff = (logits - want).abs().max().item()
print(json.dumps({"max_abs_diff": diff, "positions": len(enc), "vocab": logits.shape[-1]}))
assert diff < 1e-4, f"logits differ from forge's by {diff}"

out = model.generate(torch.tensor([enc]), max_new_tokens=4, do_sample=False)
assert out.shape[1] == len(enc) + 4 or int(out[0, -1]) == tok.eos_token_id, out.shape
# Greedy generation continues with forge's argmax at the last position.
assert int(out[0, len(enc)]) == int(want[-1].argmax()), (out[0, len(enc):], int(want[-1].argmax()))
print("ok")
"#;

fn pipeline(steps: u32) -> String {
    format!(
        r#"
version: 1
name: hf
phases:
  p:
    steps:
      corpus: {{ op: download, with: {{ source: "builtin:mixed", samples: 400 }} }}
      tok: {{ op: tokenizer, inputs: {{ data: corpus }}, with: {{ vocab_size: 320 }} }}
      model:
        op: train
        inputs: {{ data: corpus, tokenizer: tok }}
        with:
          model: {{ preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, memory_layers: [1], ltm_slots: 8, mem_chunk: 4, window: 8, max_seq: 64, act_threshold: 0.5 }}
          steps: {steps}
          batch_size: 4
          seq_len: 32
          eval_records: 8
          math_eval: 0
"#
    )
}

fn check(p: &Project, hf: &Path, model: &Path, python: &str) {
    let text = "Ava has 12 apples and eats 5. How many are left? #### 7";
    let (ids, logits) = forge::ops::eval::logits_of_text(model, text).unwrap();
    let expected = serde_json::json!({ "text": text, "ids": ids, "logits": logits });
    let exp_path = p.path().join("expected.json");
    std::fs::write(&exp_path, expected.to_string()).unwrap();
    let script = p.write("check.py", CHECK);
    let out = Command::new(python)
        .arg(&script)
        .arg(hf)
        .arg(&exp_path)
        // The venv's own packages, not the ones .ci/run puts on PYTHONPATH for other tests.
        .env_remove("PYTHONPATH")
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn an_exported_model_gives_forges_logits_in_transformers() {
    let p = Project::new();
    p.write("hf.yaml", &pipeline(6));
    p.apply_ok("hf.yaml", &[]);
    let out = p.run(&["export", "p.model", "hf", "--format", "hf"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "configuration_forge.py",
        "modeling_forge.py",
    ] {
        assert!(p.path().join("hf").join(f).exists(), "{f}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path().join("hf/config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "forge-trm-titans-mag");
    assert_eq!(config["d_model"], 32);
    // Exporting twice into the same directory is refused.
    let again = p.run(&["export", "p.model", "hf", "--format", "hf"]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let Some(python) = python() else { return };
    let files = p.run(&["export", "p.model", "files"]);
    assert!(files.status.success(), "{}", stderr(&files));
    let (hf, model) = (p.path().join("hf"), p.path().join("files/model"));
    check(&p, &hf, &model, &python);
    // With a threshold every token reaches after its first recursion (the fresh halting head
    // says about 0.12), ACT stops early: both sides must stop at the same point.
    for path in [hf.join("config.json"), model.join("config.json")] {
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if c.get("model").is_some() {
            c["model"]["act_threshold"] = serde_json::json!(0.05);
        } else {
            c["act_threshold"] = serde_json::json!(0.05);
        }
        std::fs::write(&path, c.to_string()).unwrap();
    }
    check(&p, &hf, &model, &python);
}
