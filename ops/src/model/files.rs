//! The files of a `model` artifact: `model.safetensors` (canonical F32), `config.json` (the
//! architecture, the `ModelConfig` under `model`, sizes, the tokenizer's special ids),
//! `tokenizer.json`, `metrics.json`, and whatever an op adds (`history.jsonl`,
//! `evolution_log.json`, `lineage.json`). Every op that produces a model writes it through
//! [`write`], and reads one through [`read_config`].

use std::path::Path;

use serde_json::{Map, Value, json};

use super::{ModelConfig, size_category};
use crate::error::OpError;

/// What one model artifact holds.
pub struct ModelFiles<'a> {
    /// Canonical safetensors bytes (`None`: `model.safetensors` is already in place, e.g.
    /// streamed there by a merge).
    pub weights: Option<&'a [u8]>,
    pub config: &'a Value,
    /// The `tokenizer.json` to copy in.
    pub tokenizer: Option<&'a Path>,
    pub metrics: &'a Map<String, Value>,
    /// Further files: (name, bytes).
    pub extra: &'a [(&'a str, Vec<u8>)],
}

/// Write `files` into the artifact directory `dir`.
pub fn write(dir: &Path, files: &ModelFiles<'_>) -> Result<(), OpError> {
    if let Some(w) = files.weights {
        write_file(&dir.join("model.safetensors"), w)?;
    }
    write_file(&dir.join("config.json"), &pretty(files.config))?;
    if let Some(tk) = files.tokenizer {
        std::fs::copy(tk, dir.join("tokenizer.json")).map_err(|e| OpError::io(tk, e))?;
    }
    for (name, bytes) in files.extra {
        write_file(&dir.join(name), bytes)?;
    }
    write_file(
        &dir.join("metrics.json"),
        &pretty(&Value::Object(files.metrics.clone())),
    )
}

/// The `config.json` of a model trained here.
pub fn trained_config(
    cfg: &ModelConfig,
    params: usize,
    backend: &str,
    bos: i64,
    eos: i64,
) -> Value {
    json!({
        "architecture": "trm-titans-mag",
        "model": cfg,
        "num_parameters": params,
        "size_category": size_category(params),
        "backend": backend,
        "special_tokens": { "pad": 0, "bos": bos, "eos": eos },
        "weights_layout": "burn: dense weights are [in, out]",
    })
}

/// A model artifact's `config.json`.
pub fn read_config(dir: &Path) -> Result<Value, OpError> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| OpError::io(&path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| OpError::user(format!("{}: not a model config: {e}", path.display())))
}

/// The `ModelConfig` under a `config.json`'s `model` key.
pub fn model_config(config: &Value, dir: &Path) -> Result<ModelConfig, OpError> {
    serde_json::from_value(config["model"].clone()).map_err(|e| {
        OpError::user(format!(
            "{}: `model` is not a trm-titans-mag config: {e}",
            dir.join("config.json").display()
        ))
    })
}

fn pretty(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("json")
}

/// Write one file of an artifact.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), OpError> {
    std::fs::write(path, bytes).map_err(|e| OpError::io(path, e))
}
