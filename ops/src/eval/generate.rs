//! `forge generate`: a model artifact continues a prompt, decoded incrementally
//! ([`Decoder`]) under ACT as deployed, greedy or sampled at a temperature from a seeded stream.
//!
//! Thoughts — the tokens from `[thinking]` through `[/endthinking]`, when the artifact's
//! tokenizer has them — are generated and attended to like any token but left out of the text
//! unless asked for, as Quiet-STaR's inference does: the user sees the answer, the model keeps
//! its reasoning.
//!
//! A model trained with `objective: quiet-star` (a mixing head, and `quiet_star` settings in its
//! `config.json`) also thinks *between* tokens, as it was trained to: before each token it
//! writes a thought of `thought_length` tokens after the last position (`[thinking]` … `[/endthinking]`,
//! attending to the text and never written into it), and the token comes from the mixing head's
//! blend of the states before and after the thought. `direct` turns that off.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use serde::Serialize;

use crate::bake::strategies::{END, START};
use crate::error::OpError;
use crate::model::decode::Decoder;
use crate::model::thoughts::Thoughts as ParallelThoughts;
use crate::model::{Tables, TrmTitansMag};
use crate::text::TextCodec;

/// How to continue a prompt.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0: greedy (argmax); above 0: sample from softmax(logits / temperature).
    pub temperature: f64,
    pub seed: u64,
    /// Print thought tokens (marked by their `[thinking]` … `[/endthinking]` tokens).
    pub show_thoughts: bool,
    /// Decode a Quiet-STaR model without its between-token thoughts.
    pub direct: bool,
    /// `cpu`, `cuda:N`, `auto`.
    pub device: String,
}

/// One generated token.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratedToken {
    pub id: i64,
    /// The token's text (special tokens by name).
    pub text: String,
    /// Recursions before the halting head stopped it.
    pub halting_steps: u32,
    /// Part of a thought (`[thinking]` … `[/endthinking]`, both included): one the model wrote
    /// into its text, or a Quiet-STaR thought before a token (never part of the text).
    pub thought: bool,
    /// Wall time of this token's decoding step.
    pub ms: f64,
}

/// What `forge generate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The continuation as shown: thoughts left out unless `show_thoughts`.
    pub text: String,
    pub tokens: Vec<GeneratedToken>,
    pub prompt_tokens: usize,
    /// Reading the prompt (one pass over it).
    pub prompt_ms: f64,
    /// Generating, after the prompt.
    pub generate_ms: f64,
    pub tokens_per_s: f64,
    /// Why generation stopped: `eos`, `max_tokens` or `max_seq`.
    pub stop: &'static str,
    pub act_threshold: f64,
    pub max_recursions: usize,
    /// Tokens of the Quiet-STaR thought before each text token (`None`: decoded directly).
    pub thought_length: Option<usize>,
}

/// How a Quiet-STaR model thinks before each token.
struct BetweenTokens {
    start: i64,
    end: i64,
    length: usize,
}

impl BetweenTokens {
    /// Positions one thought takes (start and end tokens included).
    fn span(&self) -> usize {
        self.length + 2
    }
}

/// The between-token thoughts of an artifact trained with `objective: quiet-star`, if it is one.
fn between_tokens(
    config: &serde_json::Value,
    model: &TrmTitansMag,
    start: Option<i64>,
    end: Option<i64>,
) -> Option<BetweenTokens> {
    let length = config["quiet_star"]["thought_length"].as_u64();
    match (model.talk.is_some(), length, start, end) {
        (true, Some(length), Some(start), Some(end)) if length > 0 => Some(BetweenTokens {
            start,
            end,
            length: length as usize,
        }),
        _ => None,
    }
}

/// Continue `prompt` with the model artifact in `model_dir`; `on_text` receives the visible text
/// as it grows (for streaming).
pub fn generate(
    model_dir: &Path,
    prompt: &str,
    o: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, OpError> {
    let super::Loaded {
        config,
        cfg,
        codec,
        model,
        device,
    } = super::load_artifact(model_dir, &o.device)?;
    let tables = Tables::new(&cfg, &device);

    let mut ids = codec.encode(prompt);
    ids.pop(); // the continuation follows the prompt, not its end
    let keep = ids.len().min(cfg.max_seq.saturating_sub(1)).max(1);
    let ids = ids.split_off(ids.len() - keep);
    let marker = |t: &str| codec.tokenizer.token_to_id(t).map(i64::from);
    let (start, end) = (marker(START), marker(END));

    let thinking = if o.direct {
        None
    } else {
        between_tokens(&config, &model, start, end)
    };

    let mut dec = Decoder::new(&model, &cfg, &tables, 1, &device);
    if thinking.is_some() {
        dec = dec.record_memory();
    }
    let t0 = Instant::now();
    let first = dec.extend(row(&ids, &device));
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut logits = last_logits(first.logits);
    let mut before = first.state.narrow(1, ids.len() - 1, 1);
    let mut rng = crate::rng::stream(o.seed, crate::rng::Stream::Generate);
    let mut tokens: Vec<GeneratedToken> = Vec::new();
    let mut thoughts = Thoughts {
        start,
        end,
        inside: false,
    };
    let mut shown: Vec<i64> = Vec::new();
    let mut text = String::new();
    let mut show = |shown: &[i64], text: &mut String| {
        let now = codec
            .tokenizer
            .decode(
                &shown.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                !o.show_thoughts,
            )
            .unwrap_or_default();
        if let Some(new) = now.strip_prefix(text.as_str()) {
            on_text(new);
        }
        *text = now;
    };
    let t1 = Instant::now();
    let mut stop = "max_tokens";
    let mut written = 0;
    while written < o.max_tokens {
        if let Some(b) = &thinking {
            if dec.len() + b.span() >= cfg.max_seq {
                stop = "max_seq";
                break;
            }
            let mut th = ParallelThoughts::from(&dec, dec.len() - 1);
            let mut thought = Vec::with_capacity(b.span());
            let mut id = b.start;
            for i in 0..b.span() {
                let step = Instant::now();
                let out = th.step(row(&[id], &device));
                thought.push(token(
                    &codec,
                    id,
                    out.halting[0],
                    true,
                    step.elapsed().as_secs_f64() * 1e3,
                ));
                if i + 1 == b.span() {
                    let head = model.talk.as_ref().expect("a Quiet-STaR model");
                    let (mixed, _) = head.mix(before.clone(), out.state);
                    logits = last_logits(model.logits_of(mixed));
                } else if i + 2 == b.span() {
                    id = b.end;
                } else {
                    id = pick(&last_logits(out.logits), o.temperature, &mut rng);
                }
            }
            if o.show_thoughts {
                shown.extend(thought.iter().map(|t| t.id));
                show(&shown, &mut text);
            }
            tokens.extend(thought);
        }
        let id = pick(&logits, o.temperature, &mut rng);
        if id == codec.eos {
            stop = "eos";
            break;
        }
        written += 1;
        let thought = thoughts.next(id);
        if !thought || o.show_thoughts {
            shown.push(id);
            show(&shown, &mut text);
        }
        if dec.room() == 0 {
            tokens.push(token(&codec, id, 0, thought, 0.0));
            stop = "max_seq";
            break;
        }
        let step = Instant::now();
        let out = dec.extend(row(&[id], &device));
        let halting = out.halting_steps[0][0];
        logits = last_logits(out.logits);
        before = out.state;
        tokens.push(token(
            &codec,
            id,
            halting,
            thought,
            step.elapsed().as_secs_f64() * 1e3,
        ));
    }
    let generate_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(Generation {
        text,
        prompt_tokens: ids.len(),
        prompt_ms,
        generate_ms,
        tokens_per_s: tokens.len() as f64 / (generate_ms / 1e3).max(1e-9),
        tokens,
        stop,
        act_threshold: cfg.act_threshold,
        max_recursions: cfg.sup_steps,
        thought_length: thinking.map(|b| b.length),
    })
}

/// Which tokens belong to a thought: from the start token through the end token.
struct Thoughts {
    start: Option<i64>,
    end: Option<i64>,
    inside: bool,
}

impl Thoughts {
    /// Whether `id`, the next token, is part of a thought.
    fn next(&mut self, id: i64) -> bool {
        let thought = self.inside || Some(id) == self.start;
        self.inside = thought && Some(id) != self.end;
        thought
    }
}

fn row(ids: &[i64], device: &burn::tensor::Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device)
}

/// The last position's logits as f64.
fn last_logits(logits: Tensor<3>) -> Vec<f64> {
    let [_, n, v] = logits.dims();
    logits
        .narrow(1, n - 1, 1)
        .reshape([v])
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("f64 logits")
}

/// The argmax at temperature 0, else a draw from softmax(logits / temperature).
fn pick(logits: &[f64], temperature: f64, rng: &mut impl Rng) -> i64 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 { (i, l) } else { best }
            })
            .0 as i64
    };
    if temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|l| ((l - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as i64;
        }
        u -= w;
    }
    argmax()
}

fn token(codec: &TextCodec, id: i64, halting_steps: u32, thought: bool, ms: f64) -> GeneratedToken {
    GeneratedToken {
        id,
        text: codec.tokenizer.id_to_token(id as u32).unwrap_or_default(),
        halting_steps,
        thought,
        ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn thoughts_run_from_the_start_token_through_the_end_token() {
        let mut t = Thoughts {
            start: Some(3),
            end: Some(4),
            inside: false,
        };
        let ids = [20, 3, 5, 21, 4, 22, 4, 3, 23];
        let flags: Vec<bool> = ids.iter().map(|&i| t.next(i)).collect();
        assert_eq!(
            flags,
            [false, true, true, true, true, false, false, true, true]
        );
        // A tokenizer without thinking tokens has no thoughts.
        let mut none = Thoughts {
            start: None,
            end: None,
            inside: false,
        };
        assert!(ids.iter().all(|&i| !none.next(i)));
    }

    #[test]
    fn temperature_zero_is_the_argmax_and_sampling_follows_the_softmax() {
        let logits = [0.0, 2.0, 1.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(pick(&logits, 0.0, &mut rng), 1);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[pick(&logits, 1.0, &mut rng) as usize] += 1;
        }
        // softmax([0, 2, 1]) = [0.090, 0.665, 0.245]
        let share = |i: usize| counts[i] as f64 / 20_000.0;
        assert!((share(0) - 0.090).abs() < 0.01, "{counts:?}");
        assert!((share(1) - 0.665).abs() < 0.01, "{counts:?}");
        assert!((share(2) - 0.245).abs() < 0.01, "{counts:?}");
        // A cold temperature concentrates on the argmax.
        let cold = (0..1000)
            .filter(|_| pick(&logits, 0.05, &mut rng) == 1)
            .count();
        assert_eq!(cold, 1000);
    }
}
