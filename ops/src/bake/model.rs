//! A model artifact given the thinking tokens: its tokenizer extended, the tokens' embedding rows
//! initialised, and the `config.json` that lists them.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::tokens::{self, RowsReport};
use crate::error::OpError;
use crate::merge::tensors::StateDict;
use crate::model::ModelConfig;
use crate::model::files;
use crate::text::TextCodec;

/// The input model of a bake, extended.
pub struct Extended {
    pub cfg: ModelConfig,
    /// The input's tokenizer with the twelve tokens registered.
    pub codec: TextCodec,
    /// Safetensors bytes: the input's weights with the tokens' rows initialised.
    pub start: Vec<u8>,
    /// The input's weights as they came.
    pub original: Vec<u8>,
    /// Parameters of the input model.
    pub input_params: usize,
    /// Thinking tokens the input's tokenizer did not have at their ids yet (0 for a model baked
    /// before).
    pub tokens_added: usize,
    pub rows: RowsReport,
}

/// Read the model artifact at `dir` (made by step `from`) and give it the thinking tokens.
pub fn extend(dir: &Path, from: &str) -> Result<Extended, OpError> {
    let cfg = files::model_config(&files::read_config(dir)?, dir)?;
    let base = TextCodec::load(&dir.join("tokenizer.json"))?;
    let extended = tokens::add_thinking_tokens(&base.tokenizer)
        .map_err(|e| OpError::user(format!("{from}: {e}")))?;
    let path = dir.join("model.safetensors");
    let original = std::fs::read(&path).map_err(|e| OpError::io(&path, e))?;
    let mut sd = StateDict::from_bytes(&original)
        .map_err(|e| OpError::user(format!("{}: {e}", path.display())))?;
    let pause = base
        .tokenizer
        .encode(tokens::PAUSE_TEXT, false)
        .map_err(|e| OpError::internal(e.to_string()))?;
    let rows = tokens::init_thinking_rows(&mut sd, pause.get_ids())
        .map_err(|e| OpError::user(e.to_string()))?;
    let tokens_added = tokens::thinking_tokens()
        .iter()
        .enumerate()
        .filter(|(i, t)| base.tokenizer.token_to_id(t) != Some((tokens::FIRST_ID + i) as u32))
        .count();
    Ok(Extended {
        input_params: sd.numel(),
        tokens_added,
        cfg,
        codec: TextCodec {
            tokenizer: extended,
            bos: base.bos,
            eos: base.eos,
        },
        start: sd.to_bytes(),
        original,
        rows,
    })
}

/// `config.json` of a baked model: a trained model's, plus `thinking_tokens` (token → id).
pub fn config(cfg: &ModelConfig, params: usize, backend: &str, codec: &TextCodec) -> Value {
    let mut config = files::trained_config(cfg, params, backend, codec.bos, codec.eos);
    config["thinking_tokens"] = tokens::thinking_tokens()
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_string(), json!(tokens::FIRST_ID + i)))
        .collect::<Map<String, Value>>()
        .into();
    config
}
