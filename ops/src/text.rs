//! Text ↔ token ids: the byte-level BPE tokenizer (Hugging Face `tokenizers`), its special
//! tokens, and training one (with progress and cancellation). The `tokenizer` op trains and saves it; every op that runs a model
//! encodes text through [`TextCodec`].
//!
//! Ids 0–2 are `<pad>`, `<s>` (bos) and `</s>` (eos); ids 3–14 are reserved (`<|reserved_N|>`)
//! for the 12 thinking/strategy tokens Phase 3 adds, so adding them never changes a model's
//! shapes. Byte-level BPE has no unknown token: any text round-trips exactly.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainer, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder, Trainer};

use crate::context::StepContext;
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

/// How a long training reports what it has done and learns that it should stop. The `tokenizer`
/// op passes its [`StepContext`]; [`Unwatched`] ignores both.
pub trait Watch: Sync {
    /// `done` of `total` `unit`s (e.g. records counted), or a phase with no total.
    fn progress(&self, done: u64, total: Option<u64>, unit: &str);
    /// Whether the work should stop.
    fn cancelled(&self) -> bool;
}

impl Watch for StepContext {
    fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        StepContext::progress(self, done, total, unit);
    }
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }
}

/// No progress, never cancelled.
pub struct Unwatched;

impl Watch for Unwatched {
    fn progress(&self, _: u64, _: Option<u64>, _: &str) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// How often, at most, the merge phase looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Train a BPE tokenizer of `vocab_size` tokens (special tokens included) on `texts`, merging
/// pairs seen at least `min_frequency` times.
pub fn train_bpe(
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
) -> Result<tokenizers::Tokenizer, OpError> {
    train_bpe_watched(texts, vocab_size, min_frequency, &Unwatched)
}

/// [`train_bpe`], reporting the records counted and the merge phase to `watch` and stopping
/// within ~0.1 s of its cancellation with `OpError::Cancelled`. Counting words stops at the next
/// record; the merges (one call into `tokenizers`, which has no way to interrupt it) run on a
/// worker thread that is left to finish on its own, its result discarded, when cancelled —
/// after an early stop it has only the words counted so far to merge.
pub fn train_bpe_watched(
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
    watch: &dyn Watch,
) -> Result<tokenizers::Tokenizer, OpError> {
    let specials: Vec<AddedToken> = special_tokens()
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut trainer = WatchedTrainer {
        inner: Mutex::new(Some(trainer)),
        watch,
        total: texts.len() as u64,
    };
    let mut tk: Trained = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
        .with_post_processor(None)
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| OpError::internal(format!("building the tokenizer: {e}")))?;
    let trained = tk.train(&mut trainer, texts.iter());
    if watch.cancelled() {
        return Err(OpError::Cancelled(
            "cancelled while training the tokenizer".into(),
        ));
    }
    trained.map_err(|e| OpError::internal(format!("training BPE: {e}")))?;
    Ok(tokenizers::Tokenizer::from(tk))
}

/// A `BpeTrainer` that `tokenizers` drives as usual (so its pre-tokenization and special tokens
/// are the library's own), with progress and cancellation around the two phases.
struct WatchedTrainer<'w> {
    /// Taken by the merge phase's worker thread.
    inner: Mutex<Option<BpeTrainer>>,
    watch: &'w dyn Watch,
    total: u64,
}

/// The error `tokenizers` hands back when the watch cancelled the training.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
struct Stopped;

impl Trainer for WatchedTrainer<'_> {
    type Model = BPE;

    fn should_show_progress(&self) -> bool {
        false
    }

    fn feed<I, S, F>(&mut self, iterator: I, process: F) -> tokenizers::Result<()>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
        F: Fn(&str) -> tokenizers::Result<Vec<String>> + Sync,
    {
        let (watch, total) = (self.watch, self.total);
        let every = (total / 100).max(1000);
        let mut counted = 0u64;
        let records = iterator
            .take_while(|_| !watch.cancelled())
            .inspect(move |_| {
                counted += 1;
                if counted.is_multiple_of(every) || counted == total {
                    watch.progress(counted, Some(total), "records counted");
                }
            });
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        inner
            .as_mut()
            .expect("fed before training")
            .feed(records, process)
    }

    fn train(&self, model: &mut BPE) -> tokenizers::Result<Vec<AddedToken>> {
        if self.watch.cancelled() {
            return Err(Stopped.into());
        }
        let trainer = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("trained once");
        self.watch.progress(0, None, "learning merges");
        let (tx, rx) = mpsc::channel();
        let mut fresh = model.clone();
        std::thread::Builder::new()
            .name("bpe-merges".into())
            .spawn(move || {
                let r = trainer.train(&mut fresh);
                // The receiver is gone when the training was cancelled: nothing to hand back.
                let _ = tx.send((r, fresh));
            })?;
        loop {
            match rx.recv_timeout(CANCEL_POLL) {
                Ok((r, trained)) => {
                    *model = trained;
                    return r;
                }
                Err(RecvTimeoutError::Timeout) if self.watch.cancelled() => {
                    return Err(Stopped.into());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the BPE merge thread panicked".into());
                }
            }
        }
    }
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
        data::generate(&spec, |_| true)
            .unwrap()
            .into_values()
            .flatten()
            .map(|r| r.text)
            .collect()
    }

    /// Cancels once a progress report's unit contains `at`; remembers the units it saw.
    struct CancelAt {
        at: &'static str,
        cancelled: std::sync::atomic::AtomicBool,
        units: Mutex<Vec<String>>,
    }

    impl Watch for CancelAt {
        fn progress(&self, _: u64, _: Option<u64>, unit: &str) {
            self.units.lock().unwrap().push(unit.into());
            if unit.contains(self.at) {
                self.cancelled
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        fn cancelled(&self) -> bool {
            self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn training_reports_both_phases_and_stops_when_cancelled_in_either() {
        let texts = corpus();
        let never = CancelAt {
            at: "nothing",
            cancelled: false.into(),
            units: Mutex::default(),
        };
        let watched = train_bpe_watched(&texts, 500, 2, &never).unwrap();
        assert_eq!(
            *never.units.lock().unwrap(),
            ["records counted", "learning merges"]
        );
        // Watching changes nothing in the result.
        assert_eq!(
            watched.to_string(false).unwrap(),
            train_bpe(&texts, 500, 2).unwrap().to_string(false).unwrap()
        );
        for (at, units) in [
            ("records", vec!["records counted"]),
            ("merges", vec!["records counted", "learning merges"]),
        ] {
            let w = CancelAt {
                at,
                cancelled: false.into(),
                units: Mutex::default(),
            };
            let r = train_bpe_watched(&texts, 500, 2, &w);
            assert!(matches!(r, Err(OpError::Cancelled(_))), "cancelled at {at}");
            assert_eq!(*w.units.lock().unwrap(), units, "cancelled at {at}");
        }
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
