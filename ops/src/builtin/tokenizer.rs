//! `tokenizer`: train a byte-level BPE tokenizer (Hugging Face `tokenizers`) on a dataset's
//! training split and save it as `tokenizer.json`, loadable from Python.
//!
//! Ids 0–2 are `<pad>`, `<s>` (bos) and `</s>` (eos); ids 3–14 are reserved (`<|reserved_N|>`)
//! for the 12 thinking/strategy tokens Phase 3 adds, so adding them never changes a model's
//! shapes. Byte-level BPE has no unknown token: any text round-trips exactly.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifact::{ArtifactKind, InputSignature, InputSpec, OutputSpec, StepInputs};
use crate::context::StepContext;
use crate::data;
use crate::error::{OpError, ParamsError};
use crate::op::{StepOutcome, TypedOp};
use crate::text::{special_tokens, train_bpe_watched};

/// Parameters of `tokenizer`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizerParams {
    /// Vocabulary size, special tokens included.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// A pair must occur this often to be merged.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
}

fn default_vocab() -> usize {
    4096
}
fn default_min_frequency() -> u64 {
    2
}

pub struct Tokenizer;

impl TypedOp for Tokenizer {
    type Params = TokenizerParams;
    const NAME: &'static str = "tokenizer";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Train a byte-level BPE tokenizer on a dataset's training split";

    fn check(&self, p: &TokenizerParams) -> Result<(), ParamsError> {
        let min = special_tokens().len() + 256;
        if p.vocab_size < min {
            return Err(ParamsError::at(
                &["vocab_size"],
                format!(
                    "vocab_size must be at least {min} (256 bytes + {} special tokens)",
                    min - 256
                ),
            ));
        }
        Ok(())
    }

    fn inputs(&self, _p: &TokenizerParams) -> InputSignature {
        InputSignature::Fixed(vec![InputSpec::many("data", &[ArtifactKind::Dataset])])
    }

    fn metrics(&self, _p: &TokenizerParams) -> Option<Vec<String>> {
        Some(vec![
            "tokenizer/vocab_size".into(),
            "tokenizer/chars_per_token".into(),
        ])
    }

    fn outputs(&self, _p: &TokenizerParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "tokenizer".into(),
            kind: ArtifactKind::Tokenizer,
        }]
    }

    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        p: &TokenizerParams,
    ) -> Result<StepOutcome, OpError> {
        let texts = |split| -> Result<Vec<String>, OpError> {
            let mut out = Vec::new();
            for d in &inputs["data"] {
                ctx.check_cancelled()?;
                out.extend(data::read_texts(&d.path, split)?);
            }
            Ok(out)
        };
        let train_texts = texts(data::Split::Train)?;
        if train_texts.is_empty() {
            let from: Vec<&str> = inputs["data"]
                .iter()
                .map(|d| d.from_step.as_str())
                .collect();
            return Err(OpError::user(format!(
                "no training text found in the dataset from {}",
                from.join(", ")
            )));
        }
        ctx.log(format!(
            "training BPE (vocab {}) on {} records",
            p.vocab_size,
            train_texts.len()
        ));
        // Progress (records counted, then the merge phase) and Ctrl-C within ~0.1 s.
        // (A cancellation says why: the step context's reason, e.g. Ctrl-C.)
        let tk = train_bpe_watched(&train_texts, p.vocab_size, p.min_frequency, ctx).map_err(
            |e| match e {
                OpError::Cancelled(_) => ctx.cancellation(),
                e => e,
            },
        )?;
        let out = ctx.output_dir("tokenizer")?;
        let path = out.join("tokenizer.json");
        tk.save(&path, true)
            .map_err(|e| OpError::infra(format!("saving `{}`: {e}", path.display())))?;
        // How well it compresses held-out text.
        let val = texts(data::Split::Val).unwrap_or_default();
        let sample = if val.is_empty() { &train_texts } else { &val };
        let (mut chars, mut tokens) = (0usize, 0usize);
        for t in sample.iter().take(2000) {
            chars += t.chars().count();
            tokens += tk
                .encode(t.as_str(), false)
                .map_err(|e| OpError::internal(e.to_string()))?
                .len();
        }
        let mut metrics = serde_json::Map::new();
        metrics.insert(
            "tokenizer/vocab_size".into(),
            tk.get_vocab_size(true).into(),
        );
        metrics.insert(
            "tokenizer/chars_per_token".into(),
            (chars as f64 / tokens.max(1) as f64).into(),
        );
        write_metrics(&out, &metrics)?;
        Ok(StepOutcome { metrics })
    }
}

fn write_metrics(
    dir: &Path,
    m: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), OpError> {
    let path = dir.join("metrics.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(m).expect("metrics serialize"),
    )
    .map_err(|e| OpError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;
    use serde_json::json;

    #[test]
    fn a_vocabulary_without_room_for_the_bytes_and_special_tokens_is_refused() {
        let e = Tokenizer
            .parse_params(&json!({ "vocab_size": 200 }))
            .unwrap_err();
        assert_eq!(e.path, ["vocab_size"]);
        assert!(e.message.contains("271"), "{}", e.message);
        let ok = Tokenizer.parse_params(&json!({})).unwrap();
        assert_eq!(ok["vocab_size"], json!(4096));
    }
}
