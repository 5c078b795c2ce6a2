//! `tokenizer`: train a byte-level BPE tokenizer (Hugging Face `tokenizers`) on a dataset's
//! training split and save it as `tokenizer.json`, loadable from Python.
//!
//! Ids 0–2 are `<pad>`, `<s>` (bos) and `</s>` (eos); ids 3–14 are reserved (`<|reserved_N|>`)
//! for the 12 thinking/strategy tokens Phase 3 adds, so adding them never changes a model's
//! shapes. Byte-level BPE has no unknown token: any text round-trips exactly.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::artifact::{ArtifactKind, InputSignature, InputSpec, OutputSpec, StepInputs};
use crate::context::StepContext;
use crate::data;
use crate::op::{OpError, ParamsError, StepOutcome, TypedOp};

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
/// Ids kept free for Phase 3's thinking and strategy tokens.
pub const RESERVED: usize = 12;

/// A trained tokenizer and its `<s>`/`</s>` ids: how the ops that run a model (`train`,
/// `merge`'s fitness) turn text into ids.
pub struct TextCodec {
    pub tokenizer: tokenizers::Tokenizer,
    pub bos: i64,
    pub eos: i64,
}

impl TextCodec {
    /// From a `tokenizer.json`'s bytes (`path` names it in messages).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, OpError> {
        let tokenizer = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| OpError::Failed(format!("loading `{}`: {e}", path.display())))?;
        let id_of = |t: &str| tokenizer.token_to_id(t).map(i64::from);
        let (Some(bos), Some(eos)) = (id_of(BOS), id_of(EOS)) else {
            return Err(OpError::Failed(
                "the tokenizer lacks the <s> and </s> special tokens".into(),
            ));
        };
        Ok(Self {
            tokenizer,
            bos,
            eos,
        })
    }

    /// Read `path` (a `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Self, OpError> {
        Self::from_bytes(
            &std::fs::read(path).map_err(|e| OpError::io(path, e))?,
            path,
        )
    }

    /// `<s>`, the text's ids, `</s>`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut v = vec![self.bos];
        if let Ok(e) = self.tokenizer.encode(text, false) {
            v.extend(e.get_ids().iter().map(|&i| i64::from(i)));
        }
        v.push(self.eos);
        v
    }
}

/// The special tokens in id order.
pub fn special_tokens() -> Vec<String> {
    let mut v = vec![PAD.to_string(), BOS.to_string(), EOS.to_string()];
    v.extend((0..RESERVED).map(|i| format!("<|reserved_{i}|>")));
    v
}

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

type Trained = tokenizers::TokenizerImpl<
    BPE,
    tokenizers::NormalizerWrapper,
    ByteLevel,
    tokenizers::PostProcessorWrapper,
    ByteLevelDecoder,
>;

/// Train on `texts`.
pub fn train(texts: &[String], p: &TokenizerParams) -> Result<tokenizers::Tokenizer, OpError> {
    let specials: Vec<AddedToken> = special_tokens()
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(p.vocab_size)
        .min_frequency(p.min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut tk: Trained = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
        .with_post_processor(None)
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| OpError::Failed(format!("building the tokenizer: {e}")))?;
    tk.train(&mut trainer, texts.iter().cloned())
        .map_err(|e| OpError::Failed(format!("training BPE: {e}")))?;
    Ok(tokenizers::Tokenizer::from(tk))
}

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
            return Err(OpError::Failed(format!(
                "no training text found in the dataset from {}",
                from.join(", ")
            )));
        }
        ctx.log(format!(
            "training BPE (vocab {}) on {} records",
            p.vocab_size,
            train_texts.len()
        ));
        let tk = train(&train_texts, p)?;
        let out = ctx.output_dir("tokenizer")?;
        let path = out.join("tokenizer.json");
        tk.save(&path, true)
            .map_err(|e| OpError::Failed(format!("saving `{}`: {e}", path.display())))?;
        // How well it compresses held-out text.
        let val = texts(data::Split::Val).unwrap_or_default();
        let sample = if val.is_empty() { &train_texts } else { &val };
        let (mut chars, mut tokens) = (0usize, 0usize);
        for t in sample.iter().take(2000) {
            chars += t.chars().count();
            tokens += tk
                .encode(t.as_str(), false)
                .map_err(|e| OpError::Failed(e.to_string()))?
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

    fn corpus() -> Vec<String> {
        let spec = data::Spec {
            counts: data::Category::ALL.iter().map(|&c| (c, 200)).collect(),
            seed: 1,
            val_fraction: 0.0,
            test_fraction: 0.0,
        };
        data::generate(&spec, |_| {})
            .unwrap()
            .into_values()
            .flatten()
            .map(|r| r.text)
            .collect()
    }

    #[test]
    fn specials_have_fixed_ids_and_text_round_trips() {
        let p = TokenizerParams {
            vocab_size: 600,
            min_frequency: 2,
        };
        let tk = train(&corpus(), &p).unwrap();
        for (i, t) in special_tokens().iter().enumerate() {
            assert_eq!(tk.token_to_id(t), Some(i as u32), "{t}");
        }
        assert_eq!(tk.get_vocab_size(true), 600);
        for text in [
            "Ava has 12 apples. #### 12",
            "naïve café — 東京 🚀\n\ttabs",
            "<s>",
        ] {
            let enc = tk.encode(text, false).unwrap();
            assert_eq!(tk.decode(enc.get_ids(), false).unwrap(), text);
        }
        // Merges learned from the corpus compress it well below one token per character.
        let sample = "How many apples does Ava have now?";
        assert!(tk.encode(sample, false).unwrap().len() < sample.len() / 2);
    }

    #[test]
    fn training_is_deterministic() {
        let p = TokenizerParams {
            vocab_size: 500,
            min_frequency: 2,
        };
        let a = train(&corpus(), &p).unwrap().to_string(false).unwrap();
        let b = train(&corpus(), &p).unwrap().to_string(false).unwrap();
        assert_eq!(a, b);
    }
}
