//! A model artifact as a Hugging Face transformers model directory (`forge export STEP DIR
//! --format hf`): `config.json` with `model_type`, `architectures`, `auto_map` and the
//! hyperparameters flat; `model.safetensors` in PyTorch's layout (every dense weight transposed
//! to `[out, in]`, names unchanged); the tokenizer with a `<s>` post-processor, its
//! `tokenizer_config.json` and `special_tokens_map.json`; and `configuration_forge.py` /
//! `modeling_forge.py`, a PyTorch implementation of the forward pass
//! (`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`).
//!
//! A quantized (BitNet b1.58) model is exported dequantized: each ternary weight becomes its
//! value × the tensor's scale in f32. The PyTorch model then computes with f32 activations
//! where forge's ternary kernel quantizes them to int8 per token, so its logits are close to
//! forge's but not equal; `config.json` says so under `forge.quantization`.

use std::path::Path;

use serde_json::{Value, json};

use super::ModelConfig;
use super::files::read_config;
use crate::error::OpError;
use crate::merge::tensors::{StateDict, TensorFile};
use crate::quant::model::QuantizedModel;

/// The `model_type` transformers knows these models by.
pub const MODEL_TYPE: &str = "forge-trm-titans-mag";
/// The causal-LM class in `modeling_forge.py`.
pub const ARCHITECTURE: &str = "ForgeTrmTitansMagForCausalLM";

const CONFIGURATION_PY: &str = include_str!("hf/configuration_forge.py");
const MODELING_PY: &str = include_str!("hf/modeling_forge.py");

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct HfExport {
    pub tensors: usize,
    /// The model was quantized and is written dequantized.
    pub dequantized: bool,
    /// Tensors left out (Quiet-STaR's mixing head, which plain next-token logits never use).
    pub skipped: Vec<String>,
}

/// Write the Hugging Face directory for the model artifact at `model_dir` into `out` (which
/// must not hold files of the same names; it is created if missing).
pub fn export(model_dir: &Path, out: &Path) -> Result<HfExport, OpError> {
    let forge_config = read_config(model_dir)?;
    let cfg: ModelConfig = serde_json::from_value(forge_config["model"].clone()).map_err(|e| {
        OpError::user(format!(
            "{}: not a trm-titans-mag model config: {e}",
            model_dir.join("config.json").display()
        ))
    })?;
    let weights = model_dir.join("model.safetensors");
    let quantized = forge_config
        .get("quantization")
        .is_some_and(|q| !q.is_null());
    let state = if quantized {
        QuantizedModel::from_file(&weights)
            .map_err(|e| OpError::user(format!("{}: {e}", weights.display())))?
            .dequantize()
    } else {
        TensorFile::open(&weights)
            .map_err(|e| OpError::user(format!("{}: {e}", weights.display())))?
            .load()
    };
    let (state, skipped) = pytorch_layout(state);
    std::fs::create_dir_all(out).map_err(|e| OpError::io(out, e))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| OpError::io(&p, e))
    };
    write("model.safetensors", &state.to_bytes())?;
    let pretty = |v: &Value| {
        let mut s = serde_json::to_vec_pretty(v).expect("json");
        s.push(b'\n');
        s
    };
    write(
        "config.json",
        &pretty(&hf_config(&cfg, &forge_config, quantized)),
    )?;
    write(
        "generation_config.json",
        &pretty(&generation_config(&forge_config)),
    )?;
    write("configuration_forge.py", CONFIGURATION_PY.as_bytes())?;
    write("modeling_forge.py", MODELING_PY.as_bytes())?;
    let tk_path = model_dir.join("tokenizer.json");
    let tokenizer: Value =
        serde_json::from_slice(&std::fs::read(&tk_path).map_err(|e| OpError::io(&tk_path, e))?)
            .map_err(|e| OpError::user(format!("{}: {e}", tk_path.display())))?;
    let (tokenizer, tokenizer_config, special) = tokenizer_files(tokenizer, cfg.max_seq)?;
    write("tokenizer.json", &pretty(&tokenizer))?;
    write("tokenizer_config.json", &pretty(&tokenizer_config))?;
    write("special_tokens_map.json", &pretty(&special))?;
    Ok(HfExport {
        tensors: state.tensors.len(),
        dequantized: quantized,
        skipped,
    })
}

/// Dense weights (`…​.weight`, 2-D, stored `[in, out]` for `x @ W`) transposed to PyTorch's
/// `[out, in]`; Quiet-STaR's mixing head (`talk.*`) left out.
fn pytorch_layout(mut state: StateDict) -> (StateDict, Vec<String>) {
    let skipped: Vec<String> = state
        .tensors
        .keys()
        .filter(|k| k.starts_with("talk."))
        .cloned()
        .collect();
    for k in &skipped {
        state.tensors.remove(k);
    }
    for (name, t) in &mut state.tensors {
        if name.ends_with(".weight") && t.shape.len() == 2 {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let mut out = vec![0f32; t.data.len()];
            for r in 0..rows {
                for c in 0..cols {
                    out[c * rows + r] = t.data[r * cols + c];
                }
            }
            t.data = out;
            t.shape = vec![cols, rows];
        }
    }
    (state, skipped)
}

fn hf_config(cfg: &ModelConfig, forge: &Value, quantized: bool) -> Value {
    let special = &forge["special_tokens"];
    let id = |k: &str, default: i64| special[k].as_i64().unwrap_or(default);
    let mut forge_notes = json!({
        "architecture": "trm-titans-mag",
        "num_parameters": forge["num_parameters"],
    });
    if quantized {
        forge_notes["quantization"] = json!({
            "method": forge["quantization"]["method"],
            "exported": "dequantized to float32: ternary values × their scale; activations are not quantized to int8 as in forge's kernel, so logits are close to forge's, not equal",
        });
    }
    json!({
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURE],
        "auto_map": {
            "AutoConfig": "configuration_forge.ForgeConfig",
            "AutoModelForCausalLM": format!("modeling_forge.{ARCHITECTURE}"),
        },
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "d_ff": cfg.d_ff,
        "window": cfg.window,
        "max_seq": cfg.max_seq,
        "rope_theta": cfg.rope_theta,
        "memory_layers": cfg.memory_layers,
        "ltm_slots": cfg.ltm_slots,
        "mem_chunk": cfg.mem_chunk,
        "n_inner": cfg.n_inner,
        "cycles": cfg.cycles,
        "sup_steps": cfg.sup_steps,
        "act_threshold": cfg.act_threshold,
        "tie_embeddings": cfg.tie_embeddings,
        "pad_token_id": id("pad", 0),
        "bos_token_id": id("bos", 1),
        "eos_token_id": id("eos", 2),
        "torch_dtype": "float32",
        "forge": forge_notes,
    })
}

fn generation_config(forge: &Value) -> Value {
    let special = &forge["special_tokens"];
    json!({
        "bos_token_id": special["bos"].as_i64().unwrap_or(1),
        "eos_token_id": special["eos"].as_i64().unwrap_or(2),
        "pad_token_id": special["pad"].as_i64().unwrap_or(0),
        "use_cache": false,
    })
}

/// The tokenizer with a post-processor that puts `<s>` first (as forge encodes every row), its
/// `tokenizer_config.json` and `special_tokens_map.json` (bos, eos, pad and the 12 tokens at
/// ids 3–14: Phase 3's thinking tokens, or the reserved tokens that keep their ids).
fn tokenizer_files(mut tk: Value, max_seq: usize) -> Result<(Value, Value, Value), OpError> {
    let added = tk["added_tokens"].as_array().cloned().unwrap_or_default();
    let content = |id: u64| {
        added
            .iter()
            .find(|t| t["id"].as_u64() == Some(id))
            .and_then(|t| t["content"].as_str())
            .map(str::to_owned)
    };
    let (Some(pad), Some(bos), Some(eos)) = (content(0), content(1), content(2)) else {
        return Err(OpError::user(
            "the tokenizer lacks the special tokens at ids 0–2 (<pad>, <s>, </s>)",
        ));
    };
    let extra: Vec<String> = (3..3 + crate::text::RESERVED as u64)
        .filter_map(content)
        .collect();
    tk["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [
            { "SpecialToken": { "id": bos, "type_id": 0 } },
            { "Sequence": { "id": "A", "type_id": 0 } }
        ],
        "pair": [
            { "SpecialToken": { "id": bos, "type_id": 0 } },
            { "Sequence": { "id": "A", "type_id": 0 } },
            { "SpecialToken": { "id": bos, "type_id": 1 } },
            { "Sequence": { "id": "B", "type_id": 1 } }
        ],
        "special_tokens": { bos.clone(): { "id": bos, "ids": [1], "tokens": [bos] } }
    });
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "additional_special_tokens": extra,
        "model_max_length": max_seq,
        "clean_up_tokenization_spaces": false,
    });
    let special = json!({
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "additional_special_tokens": extra,
    });
    Ok((tk, config, special))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::tensors::Tensor;

    #[test]
    fn a_quantized_model_is_exported_dequantized_in_pytorch_layout() {
        let cfg = ModelConfig {
            vocab_size: 300,
            d_model: 16,
            heads: 2,
            layers: 1,
            d_ff: 32,
            memory_layers: vec![],
            ..ModelConfig::tiny()
        };
        let device = crate::device::resolve("cpu").unwrap().device.inner();
        let model = crate::model::TrmTitansMag::new(&cfg, 3, &device);
        let sd = StateDict::from_bytes(&crate::model::weights::to_bytes(&model).unwrap()).unwrap();
        let q = QuantizedModel::quantize(
            &sd,
            &crate::quant::model::default_preserve(),
            &Default::default(),
            crate::quant::model::Precision::F16,
        );
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("model");
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(model_dir.join("model.safetensors"), q.to_bytes()).unwrap();
        let config = json!({
            "model": cfg,
            "special_tokens": { "pad": 0, "bos": 1, "eos": 2 },
            "quantization": { "method": "bitnet-b1.58" },
        });
        std::fs::write(model_dir.join("config.json"), config.to_string()).unwrap();
        let texts: Vec<String> = (0..50)
            .map(|i| format!("record {i} has {} apples", i * 7))
            .collect();
        crate::text::train_bpe(&texts, 300, 2)
            .unwrap()
            .save(model_dir.join("tokenizer.json"), false)
            .unwrap();
        let out = dir.path().join("hf");
        let done = export(&model_dir, &out).unwrap();
        assert!(done.dequantized);
        let exported = TensorFile::open(&out.join("model.safetensors"))
            .unwrap()
            .load();
        let (want, _) = pytorch_layout(q.dequantize());
        assert_eq!(exported, want);
        // A ternary tensor exported: three distinct values at most (−s, 0, +s).
        let wq = &exported.tensors["blocks.0.attn.wq.weight"];
        let mut distinct: Vec<u32> = wq.data.iter().map(|x| x.to_bits()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() <= 3, "{} values", distinct.len());
        let hf: Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert!(
            hf["forge"]["quantization"]["exported"]
                .as_str()
                .unwrap()
                .contains("dequantized")
        );
        let tk: Value =
            serde_json::from_slice(&std::fs::read(out.join("special_tokens_map.json")).unwrap())
                .unwrap();
        assert_eq!(tk["bos_token"], "<s>");
        assert_eq!(
            tk["additional_special_tokens"].as_array().unwrap().len(),
            12
        );
    }

    #[test]
    fn dense_weights_are_transposed_and_everything_else_kept() {
        let mut sd = StateDict::default();
        let t = |shape: Vec<usize>, data: Vec<f32>| Tensor { shape, data };
        // [in = 2, out = 3]: x @ W with rows of W per input.
        sd.tensors.insert(
            "blocks.0.attn.wq.weight".into(),
            t(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]),
        );
        sd.tensors
            .insert("embed".into(), t(vec![2, 2], vec![1., 2., 3., 4.]));
        sd.tensors
            .insert("norm_out.gain".into(), t(vec![2], vec![1., 1.]));
        sd.tensors
            .insert("talk.hidden.weight".into(), t(vec![2, 2], vec![0.; 4]));
        let (out, skipped) = pytorch_layout(sd);
        assert_eq!(skipped, ["talk.hidden.weight"]);
        let wq = &out.tensors["blocks.0.attn.wq.weight"];
        assert_eq!(wq.shape, [3, 2]);
        // Row o of the PyTorch weight is output o's weights over the inputs.
        assert_eq!(wq.data, [1., 4., 2., 5., 3., 6.]);
        assert_eq!(out.tensors["embed"].data, [1., 2., 3., 4.]);
        assert_eq!(out.tensors.len(), 3);
    }
}
