//! Quiet-STaR training of a baked model (`train` with `objective: quiet-star`, the seed's step
//! 2): its settings, the baked model given a mixing head, the held-out sets the anti-theater
//! checks (validation split) and the final report (test split) read, and the `rl/*` report.
//!
//! What the report measures, all on test-split data the step never trained or selected on:
//! - `rl/mixed_nll` — the next-token NLL of the trained model's mixed prediction after its own
//!   sampled thoughts; `rl/direct_nll` — the same model without thoughts; `rl/baked_nll` — the
//!   baked input model (no thoughts), on the same tokens. `rl/improvement_over_baked` is
//!   `1 − mixed / baked`: positive when thinking leaves the model better than the baked one.
//! - `rl/answer_accuracy` and `rl/baked_answer_accuracy` — final answers right by direct greedy
//!   decoding of the same test prompts (thoughts are not used by direct decoding).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::eval as bake_eval;
use super::tokens::{self, FIRST_ID};
use crate::data::Corpus;
use crate::error::OpError;
use crate::eval::{Decoding, eval_batches};
use crate::model::files;
use crate::model::{ModelConfig, Tables, TrmTitansMag, weights};
use crate::text::TextCodec;
use crate::train::Targets;
use crate::train::anti_theater::CheckSet;
use crate::train::quiet_star::{Drawn, ThoughtSettings, direct_nll, think};

/// What a failed anti-theater check does once the interventions are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Fail the step with the check's numbers (the seed's behaviour).
    #[default]
    Fail,
    /// Raise an alert and train on; the final `anti_theater/*_passed` metrics say what failed.
    Warn,
}

/// Quiet-STaR's settings (`quiet_star:` of `train` with `objective: quiet-star`). Defaults are
/// the authors' (`n_ahead` 12, `n_ahead_talk` 4, `n_passes` 2) and the seed's checks (every 1000
/// steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietStarParams {
    /// Thoughts sampled after each position (REINFORCE compares them; at least 2).
    #[serde(default = "d::num_thoughts")]
    pub num_thoughts: usize,
    /// Tokens between `[thinking]` and `[/endthinking]`.
    #[serde(default = "d::thought_length")]
    pub thought_length: usize,
    /// True tokens after a thought that score it.
    #[serde(default = "d::n_true")]
    pub n_true: usize,
    /// Sampling temperature of thought tokens.
    #[serde(default = "d::temperature")]
    pub temperature: f64,
    /// Nats by which a thought must beat its siblings' mean to be reinforced (× 1.5 per
    /// intervention).
    #[serde(default = "d::reward_threshold")]
    pub reward_threshold: f64,
    /// Steps between anti-theater checks (and one at the end).
    #[serde(default = "d::check_every")]
    pub check_every: u64,
    /// Interventions (roll back, KL × 2, reward threshold × 1.5) before `on_failure` applies.
    #[serde(default = "d::max_interventions")]
    pub max_interventions: u32,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Validation rows the checks think about (all positions of each).
    #[serde(default = "d::check_rows")]
    pub check_rows: usize,
    /// Validation prompts the divergence check answers with and without thoughts.
    #[serde(default = "d::check_prompts")]
    pub check_prompts: usize,
    /// Tokens generated per check prompt.
    #[serde(default = "d::check_max_tokens")]
    pub check_max_tokens: usize,
    /// Test rows of the final report's NLLs.
    #[serde(default = "d::eval_rows")]
    pub eval_rows: usize,
    /// Test prompts per strategy of the final answer accuracies.
    #[serde(default = "d::eval_per_strategy")]
    pub eval_per_strategy: usize,
    /// Tokens generated per answer.
    #[serde(default = "d::max_new_tokens")]
    pub max_new_tokens: usize,
}

mod d {
    pub fn num_thoughts() -> usize {
        2
    }
    pub fn thought_length() -> usize {
        12
    }
    pub fn n_true() -> usize {
        4
    }
    pub fn temperature() -> f64 {
        1.0
    }
    pub fn reward_threshold() -> f64 {
        0.05
    }
    pub fn check_every() -> u64 {
        1000
    }
    pub fn max_interventions() -> u32 {
        3
    }
    pub fn check_rows() -> usize {
        8
    }
    pub fn check_prompts() -> usize {
        16
    }
    pub fn check_max_tokens() -> usize {
        32
    }
    pub fn eval_rows() -> usize {
        16
    }
    pub fn eval_per_strategy() -> usize {
        10
    }
    pub fn max_new_tokens() -> usize {
        144
    }
}

impl Default for QuietStarParams {
    fn default() -> Self {
        serde_json::from_value(json!({})).expect("defaults")
    }
}

impl QuietStarParams {
    /// The first thing wrong with these settings, if any.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.num_thoughts < 2 {
            return Some((
                "num_thoughts",
                "REINFORCE compares a thought with its siblings: num_thoughts must be at least 2"
                    .into(),
            ));
        }
        if self.thought_length == 0 || self.n_true == 0 {
            return Some((
                "thought_length",
                "thought_length and n_true must be positive".into(),
            ));
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Some(("temperature", "the temperature must be positive".into()));
        }
        if self.reward_threshold < 0.0 {
            return Some(("reward_threshold", "must not be negative".into()));
        }
        if self.check_every == 0 || self.check_rows == 0 || self.check_prompts == 0 {
            return Some((
                "check_every",
                "check_every, check_rows and check_prompts must be positive".into(),
            ));
        }
        None
    }

    /// The thought settings these parameters give, for a tokenizer whose `<s>` is `bos`. A
    /// thought is scored on a trace's tokens and its answer (from `[thinking]` to the record's
    /// end), not on the question, as baking trained them.
    pub fn thoughts(&self, bos: i64) -> ThoughtSettings {
        ThoughtSettings {
            num_thoughts: self.num_thoughts,
            thought_length: self.thought_length,
            n_true: self.n_true,
            temperature: self.temperature,
            start: tokens::START_ID,
            end: tokens::END_ID,
            reward_threshold: self.reward_threshold,
            targets: Targets::FromToken {
                bos,
                start: tokens::START_ID,
            },
        }
    }
}

/// The baked input model, read for Quiet-STaR.
pub struct Baked {
    /// Its config with the mixing head.
    pub cfg: ModelConfig,
    pub codec: TextCodec,
    /// Its weights as they came.
    pub weights: Vec<u8>,
    /// The input has a mixing head already (a Quiet-STaR model trained further).
    pub had_head: bool,
}

/// Read the baked model artifact at `dir` (from step `from`): it must know the thinking tokens.
pub fn read_baked(dir: &std::path::Path, from: &str) -> Result<Baked, OpError> {
    let mut cfg = files::model_config(&files::read_config(dir)?, dir)?;
    let codec = TextCodec::load(&dir.join("tokenizer.json"))?;
    for (i, t) in tokens::thinking_tokens().iter().enumerate() {
        if codec.tokenizer.token_to_id(t) != Some((FIRST_ID + i) as u32) {
            return Err(OpError::user(format!(
                "{from}: the model does not know the thinking token `{t}` at id {}",
                FIRST_ID + i
            ))
            .with_hint("Quiet-STaR trains a baked model: give `init` a `bake` step's model"));
        }
    }
    let had_head = cfg.mixing_head;
    cfg.mixing_head = true;
    let path = dir.join("model.safetensors");
    let weights = std::fs::read(&path).map_err(|e| OpError::io(&path, e))?;
    Ok(Baked {
        cfg,
        codec,
        weights,
        had_head,
    })
}

impl Baked {
    /// The baked model with a mixing head (new, from `seed`, unless the input has one).
    pub fn with_head(
        &self,
        seed: u64,
        device: &burn::tensor::Device,
    ) -> Result<(TrmTitansMag, Vec<String>), OpError> {
        let mut model = TrmTitansMag::new(&self.cfg, seed, device);
        let report = weights::load_into(&mut model, self.weights.clone(), "the baked model")
            .map_err(|e| OpError::user(e.to_string()))?;
        Ok((model, report.initialized))
    }

    /// The input model as it came, on `device` (an inference device: no autodiff).
    pub fn reference(&self, device: &burn::tensor::Device) -> Result<TrmTitansMag, OpError> {
        let cfg = ModelConfig {
            mixing_head: self.had_head,
            ..self.cfg.clone()
        };
        let mut model = TrmTitansMag::new(&cfg, 0, device);
        weights::load_exact(&mut model, self.weights.clone(), "the baked model")
            .map_err(|e| OpError::user(e.to_string()))?;
        Ok(model)
    }
}

/// The anti-theater checks' held-out set, from the validation split: rows of whole records (up
/// to what a thought leaves of `max_seq`), and prompts with room for their answer and a thought
/// within `max_seq`.
pub fn check_set(
    corpus: &Corpus,
    codec: &TextCodec,
    p: &QuietStarParams,
    seq: usize,
    max_seq: usize,
) -> CheckSet {
    let span = p.thoughts(codec.bos).span();
    // Whole records where they fit, as in the report.
    let seq = seq.max(max_seq - span - 1);
    let rows = eval_batches(&corpus.val, codec, p.check_rows, seq, p.check_rows)
        .into_iter()
        .next()
        .map(|b| b.rows)
        .unwrap_or_default();
    let per_strategy = p.check_prompts.div_ceil(tokens::STRATEGIES.len());
    let prompts = bake_eval::eval_records(&corpus.val, per_strategy)
        .into_iter()
        .map(|(_, r)| bake_eval::question(codec, &r.prompt))
        .filter(|q| q.len() + p.check_max_tokens + span < max_seq)
        .take(p.check_prompts)
        .collect();
    CheckSet {
        rows,
        prompts,
        max_new: p.check_max_tokens,
        random_ids: (
            (FIRST_ID + tokens::thinking_tokens().len()) as i64,
            codec.tokenizer.get_vocab_size(true) as i64,
        ),
    }
}

/// The final report on the test split (see the module's doc): the trained model beside the
/// baked input model.
#[allow(clippy::too_many_arguments)]
pub fn report(
    trained: &TrmTitansMag,
    baked: &TrmTitansMag,
    cfg: &ModelConfig,
    codec: &TextCodec,
    corpus: &Corpus,
    p: &QuietStarParams,
    seq: usize,
    seed: u64,
    device: &burn::tensor::Device,
    progress: &mut dyn FnMut(usize, usize) -> Result<(), OpError>,
) -> Result<Vec<(String, Value)>, OpError> {
    let tables = Tables::new(cfg, device);
    let st = p.thoughts(codec.bos);
    let head = trained.talk.as_ref().expect("a mixing head");
    let mut rng = crate::rng::stream(seed, crate::rng::Stream::TheaterCheck { step: u64::MAX });
    let (mut mixed, mut direct, mut before, mut n) = (0.0, 0.0, 0.0, 0.0);
    // Whole records where they fit: a question leaves little of a short row to its trace.
    let seq = seq.max(cfg.max_seq - st.span() - 1);
    for batch in eval_batches(&corpus.test, codec, p.eval_rows, seq, p.eval_rows.min(8)) {
        let t = think(
            trained,
            head,
            &batch.rows,
            cfg,
            &tables,
            &st,
            Drawn::Sampled,
            &mut rng,
            device,
        );
        let (b_sum, count) = direct_nll(baked, cfg, &tables, &batch.rows, st.targets, device);
        mixed += t.mixed_nll_next * count;
        direct += t.base_nll_next * count;
        before += b_sum;
        n += count;
    }
    let n = n.max(1.0);
    let (mixed, direct, before) = (mixed / n, direct / n, before / n);
    let set = bake_eval::eval_records(&corpus.test, p.eval_per_strategy);
    let decode = |ids: &[i64]| codec.decode(ids);
    let d = Decoding {
        cfg,
        eos: codec.eos,
        tables: &tables,
        device,
        decode: &decode,
    };
    let right = |model: &TrmTitansMag,
                 progress: &mut dyn FnMut(usize, usize) -> Result<(), OpError>| {
        bake_eval::run(model, &set, codec, p.max_new_tokens, 16, &d, progress)
            .map(|j| j.iter().filter(|j| j.answer).count())
    };
    let after_right = right(trained, progress)?;
    let baked_right = right(baked, progress)?;
    let share = |k: usize| k as f64 / set.len().max(1) as f64;
    Ok(vec![
        ("rl/mixed_nll".into(), json!(mixed)),
        ("rl/direct_nll".into(), json!(direct)),
        ("rl/baked_nll".into(), json!(before)),
        (
            "rl/improvement_over_baked".into(),
            json!(1.0 - mixed / before),
        ),
        ("rl/scored_tokens".into(), json!(n)),
        ("rl/answer_accuracy".into(), json!(share(after_right))),
        ("rl/baked_answer_accuracy".into(), json!(share(baked_right))),
        ("rl/answers_evaluated".into(), json!(set.len())),
    ])
}

/// Every metric a Quiet-STaR step writes, as patterns.
pub const METRICS: &[&str] = &["rl/*", "anti_theater/*"];

/// The run's own `rl/*` numbers: rewards and KL from the logged history, the last check under
/// the seed's `rl/*` names, and the interventions.
pub fn run_metrics(trained: &crate::train::Trained) -> Vec<(String, Value)> {
    let series = |k: &str| -> Vec<f64> {
        trained
            .history
            .iter()
            .filter_map(|r| r.get(k).and_then(Value::as_f64))
            .collect()
    };
    let last = |k: &str| series(k).last().copied();
    let rewards = series("rl/reward");
    let mut out = vec![
        (
            "rl/avg_reward".to_string(),
            json!(
                (!rewards.is_empty()).then(|| rewards.iter().sum::<f64>() / rewards.len() as f64)
            ),
        ),
        ("rl/final_reward".into(), json!(last("rl/reward"))),
        (
            "rl/final_kl_divergence".into(),
            json!(last("rl/kl_divergence")),
        ),
        (
            "rl/final_mixing_weight".into(),
            json!(last("rl/mixing_weight")),
        ),
        (
            "rl/final_thinking_gain".into(),
            json!(last("rl/thinking_gain")),
        ),
        ("rl/final_loss".into(), json!(trained.final_loss)),
        ("rl/interventions".into(), json!(trained.interventions)),
        ("rl/kl_scale".into(), json!(trained.knobs.kl_scale)),
        (
            "rl/reward_threshold_scale".into(),
            json!(trained.knobs.reward_threshold_scale),
        ),
    ];
    if let Some(c) = &trained.last_check {
        let get = |k: &str| c.metrics.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        for (name, from) in [
            ("rl/divergence_from_direct", "anti_theater/divergence"),
            ("rl/ablation_accuracy_drop", "anti_theater/ablation"),
            ("rl/avg_thought_length", "anti_theater/length"),
            ("rl/thought_diversity", "anti_theater/diversity"),
            (
                "rl/reward_correctness_correlation",
                "anti_theater/correlation",
            ),
        ] {
            out.push((name.into(), json!(get(from))));
        }
        out.extend(c.metrics.iter().map(|(k, v)| (k.clone(), json!(v))));
    }
    out
}
