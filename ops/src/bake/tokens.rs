//! The twelve thinking tokens: `[thinking]`, `[/endthinking]` and ten strategy tokens, at the
//! ids 3–14 every forge tokenizer reserves for them ([`crate::text::special_tokens`]), so adding
//! them changes no model's shapes.
//!
//! [`add_thinking_tokens`] renames the reserved special tokens of a trained `tokenizer.json`:
//! they stay *special added tokens*, matched before the byte-level BPE, so `[thinking]` anywhere
//! in a text is one id (in forge and in Python `tokenizers` alike), and decoding with special
//! tokens skipped hides them — thoughts are not shown at inference.
//!
//! [`init_thinking_rows`] initialises their embedding rows (and output-head columns when the
//! head is untied) as Quiet-STaR's code does for its start/end-of-thought tokens: from the
//! embedding of `---`, a pause-like text (the mean of its BPE tokens' rows when it is more than
//! one). The ten strategy tokens, which Quiet-STaR does not have, start from the mean embedding
//! of the ordinary vocabulary (every id after the specials): a neutral point that favours no
//! existing token.

use std::collections::BTreeMap;

use serde_json::Value;
use thiserror::Error;

pub use super::strategies::{END, START, STRATEGIES, Strategy, thinking_tokens};
use crate::merge::tensors::StateDict;
use crate::text::{RESERVED, special_tokens};

/// The text whose embedding the start and end tokens start from (Quiet-STaR's choice).
pub const PAUSE_TEXT: &str = "---";
/// The id of [`START`]; the others follow in [`thinking_tokens`] order.
pub const FIRST_ID: usize = 3;
/// The ids of [`START`] (`[thinking]`) and [`END`] (`[/endthinking]`).
pub const START_ID: i64 = FIRST_ID as i64;
pub const END_ID: i64 = FIRST_ID as i64 + 1;

#[derive(Debug, Error)]
pub enum TokensError {
    #[error("the tokenizer is not a forge tokenizer.json: {0}")]
    Format(String),
    #[error(
        "id {id} of the tokenizer is `{found}`, not the reserved slot `{expected}` or `{token}`"
    )]
    NotReserved {
        id: usize,
        found: String,
        expected: String,
        token: String,
    },
    #[error("the model has no `{0}` tensor of shape [vocab, d]")]
    NoEmbedding(String),
    #[error("`{PAUSE_TEXT}` encodes to no ordinary token")]
    NoPauseToken,
}

/// `tokenizer` with its reserved ids 3–14 renamed to the thinking tokens (still special added
/// tokens). A tokenizer that already has them is returned unchanged.
pub fn add_thinking_tokens(
    tokenizer: &tokenizers::Tokenizer,
) -> Result<tokenizers::Tokenizer, TokensError> {
    let json = tokenizer
        .to_string(false)
        .map_err(|e| TokensError::Format(e.to_string()))?;
    let mut v: Value =
        serde_json::from_str(&json).map_err(|e| TokensError::Format(e.to_string()))?;
    let renames: BTreeMap<usize, (String, &str)> = special_tokens()
        .into_iter()
        .enumerate()
        .skip(FIRST_ID)
        .take(RESERVED)
        .zip(thinking_tokens())
        .map(|((id, reserved), token)| (id, (reserved, token)))
        .collect();
    let added = v["added_tokens"]
        .as_array_mut()
        .ok_or_else(|| TokensError::Format("no `added_tokens` list".into()))?;
    for entry in added.iter_mut() {
        let Some(id) = entry["id"].as_u64().map(|i| i as usize) else {
            continue;
        };
        let Some((reserved, token)) = renames.get(&id) else {
            continue;
        };
        let found = entry["content"].as_str().unwrap_or_default().to_string();
        if found != *reserved && found != *token {
            return Err(TokensError::NotReserved {
                id,
                found,
                expected: reserved.clone(),
                token: (*token).to_string(),
            });
        }
        entry["content"] = Value::from(*token);
        entry["special"] = Value::from(true);
    }
    let vocab = v["model"]["vocab"]
        .as_object_mut()
        .ok_or_else(|| TokensError::Format("no `model.vocab` map".into()))?;
    for (id, (reserved, token)) in &renames {
        if let Some(old) = vocab.remove(reserved.as_str()) {
            vocab.insert((*token).to_string(), old);
        }
        if vocab.get(*token).and_then(Value::as_u64) != Some(*id as u64) {
            return Err(TokensError::Format(format!(
                "`{token}` is not id {id} in the BPE vocabulary"
            )));
        }
    }
    let out: tokenizers::Tokenizer = v
        .to_string()
        .parse()
        .map_err(|e: tokenizers::Error| TokensError::Format(e.to_string()))?;
    // What the rename must give: each token one id, matched before the BPE.
    for (i, token) in thinking_tokens().into_iter().enumerate() {
        let ids = out
            .encode(token, false)
            .map_err(|e| TokensError::Format(e.to_string()))?;
        if ids.get_ids() != [(FIRST_ID + i) as u32] {
            return Err(TokensError::Format(format!(
                "`{token}` encodes to {:?}, not [{}]",
                ids.get_ids(),
                FIRST_ID + i
            )));
        }
    }
    Ok(out)
}

/// What [`init_thinking_rows`] set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsReport {
    /// Parameters written: 12 rows of the embedding (and 12 head columns when untied).
    pub params_initialised: usize,
    /// The ids of [`PAUSE_TEXT`] the start and end rows are the mean of.
    pub pause_ids: Vec<u32>,
}

/// Set the thinking tokens' rows of `weights` (a `trm-titans-mag` state dict): `[thinking]` and
/// `[/endthinking]` to the mean embedding of `pause_ids` (the ids of [`PAUSE_TEXT`]), the ten
/// strategy tokens to the mean embedding of the ordinary vocabulary. The untied output head
/// (`head.weight`, burn's `[d, vocab]` layout) gets the same treatment column by column.
pub fn init_thinking_rows(
    weights: &mut StateDict,
    pause_ids: &[u32],
) -> Result<RowsReport, TokensError> {
    let first_ordinary = special_tokens().len();
    let pause: Vec<usize> = pause_ids
        .iter()
        .map(|&i| i as usize)
        .filter(|&i| i >= first_ordinary)
        .collect();
    if pause.is_empty() {
        return Err(TokensError::NoPauseToken);
    }
    let mut written = 0;
    let embed = weights
        .tensors
        .get_mut("embed")
        .filter(|t| t.shape.len() == 2)
        .ok_or_else(|| TokensError::NoEmbedding("embed".into()))?;
    let [vocab, d] = [embed.shape[0], embed.shape[1]];
    written += set_rows(&mut embed.data, vocab, d, &pause, first_ordinary, |t, c| {
        t * d + c
    });
    if let Some(head) = weights.tensors.get_mut("head.weight") {
        if head.shape != [d, vocab] {
            return Err(TokensError::NoEmbedding("head.weight".into()));
        }
        written += set_rows(&mut head.data, vocab, d, &pause, first_ordinary, |t, c| {
            c * vocab + t
        });
    }
    Ok(RowsReport {
        params_initialised: written,
        pause_ids: pause.iter().map(|&i| i as u32).collect(),
    })
}

/// Write the twelve tokens' vectors of a `[vocab × d]` table whose element (token `t`,
/// component `c`) is at `at(t, c)`; returns the number of values written.
fn set_rows(
    data: &mut [f32],
    vocab: usize,
    d: usize,
    pause: &[usize],
    first_ordinary: usize,
    at: impl Fn(usize, usize) -> usize,
) -> usize {
    let mean_of = |ids: &mut dyn Iterator<Item = usize>, data: &[f32]| {
        let mut sum = vec![0f64; d];
        let mut n = 0usize;
        for t in ids {
            for (c, s) in sum.iter_mut().enumerate() {
                *s += f64::from(data[at(t, c)]);
            }
            n += 1;
        }
        sum.into_iter()
            .map(|s| (s / n.max(1) as f64) as f32)
            .collect::<Vec<f32>>()
    };
    let pause_vec = mean_of(&mut pause.iter().copied(), data);
    let mean_vec = mean_of(&mut (first_ordinary..vocab), data);
    for k in 0..RESERVED {
        let v = if k < 2 { &pause_vec } else { &mean_vec };
        for (c, x) in v.iter().enumerate() {
            data[at(FIRST_ID + k, c)] = *x;
        }
    }
    RESERVED * d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::tensors::Tensor;
    use crate::text::train_bpe;

    fn trained() -> tokenizers::Tokenizer {
        let texts: Vec<String> = (0..300)
            .map(|i| format!("Step {i}: 12 + {i} = {} --- then think. #### {i}", 12 + i))
            .collect();
        train_bpe(&texts, 400, 2).unwrap()
    }

    #[test]
    fn the_twelve_tokens_take_ids_3_to_14_and_are_never_split() {
        let tk = add_thinking_tokens(&trained()).unwrap();
        let tokens = thinking_tokens();
        assert_eq!(tokens.len(), 12);
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(tk.token_to_id(t), Some((3 + i) as u32), "{t}");
        }
        // Inside text, each is one id, and the text around it is untouched.
        let text = "Q: 2+2?[thinking]<step>2 plus 2 is 4[/endthinking]4";
        let ids = tk.encode(text, false).unwrap().get_ids().to_vec();
        for (t, id) in [(START, 3), ("<step>", 5), (END, 4)] {
            assert_eq!(ids.iter().filter(|&&i| i == id).count(), 1, "{t}");
        }
        assert_eq!(tk.decode(&ids, false).unwrap(), text);
        // Skipping special tokens hides the thought markers, not the text.
        assert_eq!(tk.decode(&ids, true).unwrap(), "Q: 2+2?2 plus 2 is 44");
        // The vocabulary and the other specials are as they were.
        let before = trained();
        assert_eq!(tk.get_vocab_size(true), before.get_vocab_size(true));
        for t in ["<pad>", "<s>", "</s>"] {
            assert_eq!(tk.token_to_id(t), before.token_to_id(t));
        }
        // Adding them twice changes nothing.
        let again = add_thinking_tokens(&tk).unwrap();
        assert_eq!(
            again.to_string(false).unwrap(),
            tk.to_string(false).unwrap()
        );
    }

    #[test]
    fn python_tokenizers_reads_the_twelve_tokens_as_single_ids() {
        // The saved tokenizer.json, read by Hugging Face's Python `tokenizers` (installed by
        // `.ci/install-python-tokenizers`; CI requires it), encodes each token as forge does.
        let python = std::process::Command::new("python3")
            .args(["-c", "import tokenizers"])
            .output();
        if !python.is_ok_and(|o| o.status.success()) {
            assert!(
                std::env::var_os("FORGE_REQUIRE_PYTHON_TOKENIZERS").is_none(),
                "Python `tokenizers` is required (FORGE_REQUIRE_PYTHON_TOKENIZERS) but not importable"
            );
            eprintln!(
                "skipped: no Python `tokenizers` (eval \"$(.ci/install-python-tokenizers)\")"
            );
            return;
        }
        let tk = add_thinking_tokens(&trained()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tk.save(&path, true).unwrap();
        let text = "Q: 7-3?[thinking]<falsify>7-3 is 5? no, 4[/endthinking]4";
        let script = format!(
            "import json, sys\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\n\
             toks = {tokens:?}\nprint(json.dumps([t.encode(x, add_special_tokens=False).ids for x in toks + [{text:?}]]))",
            tokens = thinking_tokens(),
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &script, path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
        for (i, ids) in got.iter().take(12).enumerate() {
            assert_eq!(ids, &vec![(3 + i) as u32], "{}", thinking_tokens()[i]);
        }
        assert_eq!(got[12], tk.encode(text, false).unwrap().get_ids());
    }

    #[test]
    fn a_tokenizer_without_the_reserved_slots_is_refused() {
        // Id 3 holds another special token (in the added tokens and the BPE vocabulary).
        let mut v: Value = serde_json::from_str(&trained().to_string(false).unwrap()).unwrap();
        for entry in v["added_tokens"].as_array_mut().unwrap() {
            if entry["id"] == 3 {
                entry["content"] = Value::from("<mask>");
            }
        }
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab.remove("<|reserved_0|>").unwrap();
        vocab.insert("<mask>".into(), id);
        let tk: tokenizers::Tokenizer = v.to_string().parse().unwrap();
        let err = add_thinking_tokens(&tk).unwrap_err();
        assert!(
            matches!(err, TokensError::NotReserved { id: 3, ref found, .. } if found == "<mask>"),
            "{err}"
        );
    }

    fn weights(vocab: usize, d: usize, untied: bool) -> StateDict {
        let table = |seed: usize| -> Vec<f32> {
            (0..vocab * d)
                .map(|i| ((i * 7 + seed) % 13) as f32 - 6.0)
                .collect()
        };
        let mut sd = StateDict::default();
        sd.tensors.insert(
            "embed".into(),
            Tensor {
                shape: vec![vocab, d],
                data: table(1),
            },
        );
        if untied {
            sd.tensors.insert(
                "head.weight".into(),
                Tensor {
                    shape: vec![d, vocab],
                    data: table(5),
                },
            );
        }
        sd.tensors.insert(
            "norm".into(),
            Tensor {
                shape: vec![d],
                data: vec![1.0; d],
            },
        );
        sd
    }

    #[test]
    fn thought_rows_start_at_the_pause_embedding_and_strategy_rows_at_the_mean() {
        let (vocab, d) = (20, 3);
        let before = weights(vocab, d, true);
        let mut sd = before.clone();
        // `---` as two BPE tokens, 16 and 18; the special id 1 among them is ignored.
        let report = init_thinking_rows(&mut sd, &[16, 1, 18]).unwrap();
        assert_eq!(report.pause_ids, vec![16, 18]);
        assert_eq!(report.params_initialised, 2 * 12 * d);
        let e = |sd: &StateDict, t: usize, c: usize| sd.tensors["embed"].data[t * d + c];
        let h = |sd: &StateDict, t: usize, c: usize| sd.tensors["head.weight"].data[c * vocab + t];
        for c in 0..d {
            // By hand: start/end = (row 16 + row 18) / 2; strategies = mean of rows 15..20.
            let pause = (e(&before, 16, c) + e(&before, 18, c)) / 2.0;
            let mean = (15..20).map(|t| e(&before, t, c)).sum::<f32>() / 5.0;
            for t in [3, 4] {
                assert!((e(&sd, t, c) - pause).abs() < 1e-6);
            }
            for t in 5..15 {
                assert!((e(&sd, t, c) - mean).abs() < 1e-6);
            }
            let head_pause = (h(&before, 16, c) + h(&before, 18, c)) / 2.0;
            assert!((h(&sd, 3, c) - head_pause).abs() < 1e-6);
            // Every other row and tensor is untouched.
            for t in (0..3).chain(15..vocab) {
                assert_eq!(e(&sd, t, c), e(&before, t, c));
                assert_eq!(h(&sd, t, c), h(&before, t, c));
            }
        }
        assert_eq!(sd.tensors["norm"], before.tensors["norm"]);
        // A tied model has no head: only the embedding's 12 rows are written.
        let mut tied = weights(vocab, d, false);
        assert_eq!(
            init_thinking_rows(&mut tied, &[16])
                .unwrap()
                .params_initialised,
            12 * d
        );
        assert!(matches!(
            init_thinking_rows(&mut tied, &[1, 2]),
            Err(TokensError::NoPauseToken)
        ));
    }
}
