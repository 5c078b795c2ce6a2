//! Text ↔ token ids: the byte-level BPE tokenizer (Hugging Face `tokenizers`), its special
//! tokens, and training one. The `tokenizer` op trains and saves it; every op that runs a model
//! encodes text through [`TextCodec`].
//!
//! Ids 0–2 are `<pad>`, `<s>` (bos) and `</s>` (eos); ids 3–14 are reserved (`<|reserved_N|>`)
//! for the 12 thinking/strategy tokens Phase 3 adds, so adding them never changes a model's
//! shapes. Byte-level BPE has no unknown token: any text round-trips exactly.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::error::OpError;

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
            .map_err(|e| OpError::user(format!("loading `{}`: {e}", path.display())))?;
        let id_of = |t: &str| tokenizer.token_to_id(t).map(i64::from);
        let (Some(bos), Some(eos)) = (id_of(BOS), id_of(EOS)) else {
            return Err(OpError::user(
                "the tokenizer lacks the <s> and </s> special tokens",
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

    /// The text of `ids`, special tokens skipped (empty if the ids do not decode).
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer.decode(&ids, true).unwrap_or_default()
    }
}

/// The special tokens in id order.
pub fn special_tokens() -> Vec<String> {
    let mut v = vec![PAD.to_string(), BOS.to_string(), EOS.to_string()];
    v.extend((0..RESERVED).map(|i| format!("<|reserved_{i}|>")));
    v
}

type Trained = tokenizers::TokenizerImpl<
    BPE,
    tokenizers::NormalizerWrapper,
    ByteLevel,
    tokenizers::PostProcessorWrapper,
    ByteLevelDecoder,
>;

/// Train a BPE tokenizer of `vocab_size` tokens (special tokens included) on `texts`, merging
/// pairs seen at least `min_frequency` times.
pub fn train_bpe(
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
) -> Result<tokenizers::Tokenizer, OpError> {
    let specials: Vec<AddedToken> = special_tokens()
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
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
        .map_err(|e| OpError::internal(format!("building the tokenizer: {e}")))?;
    tk.train(&mut trainer, texts.iter().cloned())
        .map_err(|e| OpError::internal(format!("training BPE: {e}")))?;
    Ok(tokenizers::Tokenizer::from(tk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data;

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
        let tk = train_bpe(&corpus(), 600, 2).unwrap();
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
        let a = train_bpe(&corpus(), 500, 2)
            .unwrap()
            .to_string(false)
            .unwrap();
        let b = train_bpe(&corpus(), 500, 2)
            .unwrap()
            .to_string(false)
            .unwrap();
        assert_eq!(a, b);
    }
}
