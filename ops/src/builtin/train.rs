//! `train` (objective `lm`): train a `trm-titans-mag` language model on a dataset with a tokenizer,
//! optionally starting from an `init` model (the shared Phase-1 initialisation that later serves
//! as the merge base). `steps: 0` only initialises and saves, which is how that base is made.
//!
//! `objective: quiet-star` (Phase 3's second step) trains a baked `init` model, given a mixing
//! head, with Quiet-STaR ([`crate::train::quiet_star::QuietStar`]): the model, tokenizer and KL
//! reference all come from `init`, the anti-theater checks run every `quiet_star.check_every`
//! steps with the seed's interventions ([`crate::train::anti_theater::Checks`]), and the step
//! reports `rl/*` and `anti_theater/*` on held-out data ([`crate::bake::rl`]).
//!
//! Each batch is a pure function of (data seed, step), so a checkpoint (weights, optimizer state,
//! step, learning-rate factor) resumes bit-exactly after a kill. A non-finite loss rolls back to
//! the last checkpoint with the learning rate halved (an alert); the loss slope over the last 100
//! logged values and plateaus raise alerts. Outputs: `model.safetensors`, `config.json`,
//! `tokenizer.json`, `metrics.json` and `history.jsonl` in the `model` artifact.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::artifact::{
    ArtifactKind, InputArtifact, InputSignature, InputSpec, OutputSpec, StepInputs,
};
use crate::bake::rl::{self, QuietStarParams};
use crate::context::StepContext;
use crate::data::{Category, Corpus, Curriculum, Sampler, Stage};
use crate::device;
use crate::error::{OpError, ParamsError};
use crate::eval::{self, LmEvalSet, LmReport};
use crate::model::files::{self, ModelFiles};
use crate::model::{ModelConfig, Tables, TrmTitansMag, weights};
use crate::op::{StepOutcome, TypedOp, expand_preset};
use crate::optim::OptimizerConfig;
use crate::text::TextCodec;
use crate::train::quiet_star::QuietStar;
use crate::train::{Lm, LoopConfig, Reference, Run, Targets, Trained, anti_theater};

/// Parameters of `train`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Training objective: `lm` (next-token prediction with deep supervision) or `quiet-star`
    /// (Quiet-STaR on a baked `init` model, whose config is used: leave `model` unset).
    #[serde(default = "d::objective")]
    pub objective: String,
    /// Architecture and size: a `preset` (`tiny`, `25m`, …) and any keys that override it. With an
    /// `init` input it must describe that model (`objective: quiet-star` takes the model's own).
    #[serde(default)]
    pub model: ModelConfig,
    /// Muon × Grokfast (or AdamW) settings.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Optimizer steps (0: initialise and save only).
    #[serde(default = "d::steps")]
    pub steps: u64,
    /// Rows per optimizer step (per micro-batch of `grad_accum`).
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Memory budget in MiB: the rows of a step are split into the largest micro-batches whose
    /// estimated memory fits (gradients accumulate, so the step learns from the same data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget_mib: Option<u64>,
    /// Tokens per row (records are packed into rows of this length).
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "d::one")]
    pub grad_accum: usize,
    /// Linear warm-up steps (default: 5% of `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// Cosine decay floor as a fraction of the peak learning rate.
    #[serde(default = "d::min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Save a resumable checkpoint every this many optimizer steps (and at the end).
    #[serde(default = "d::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Record a row of the training history (loss, learning rate, …) every this many steps.
    #[serde(default = "d::log_every")]
    pub log_every: u64,
    /// Category sampling weights (default: equal over the categories in the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<BTreeMap<Category, f64>>,
    /// Curriculum stages (default: foundation → reasoning → advanced by difficulty).
    #[serde(default = "crate::data::default_curriculum")]
    pub curriculum: Vec<Stage>,
    /// Held-out records scored for `val/*` and, as many again from the test split, `test/*`
    /// perplexity (round-robin over categories; the same records for every model).
    #[serde(default = "d::eval_records")]
    pub eval_records: usize,
    /// Test-split math problems answered by greedy decoding for `test/math_accuracy`.
    #[serde(default = "d::math_eval")]
    pub math_eval: usize,
    /// Quiet-STaR's thoughts, checks and report (`objective: quiet-star` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_star: Option<QuietStarParams>,
}

/// The objectives `train` knows.
const OBJECTIVES: &str = "lm, quiet-star";

mod d {
    pub fn objective() -> String {
        "lm".into()
    }
    pub fn steps() -> u64 {
        200
    }
    pub fn batch_size() -> usize {
        16
    }
    pub fn seq_len() -> usize {
        128
    }
    pub fn one() -> usize {
        1
    }
    pub fn min_lr_ratio() -> f64 {
        0.1
    }
    pub fn checkpoint_every() -> u64 {
        25
    }
    pub fn log_every() -> u64 {
        10
    }
    pub fn eval_records() -> usize {
        128
    }
    pub fn math_eval() -> usize {
        24
    }
}

pub struct Train;

impl TypedOp for Train {
    type Params = TrainParams;
    const NAME: &'static str = "train";
    /// 2: fused softmax, log-softmax and SiLU (different float rounding in the backward pass).
    /// 3: weights and batches from the `rng` streams of the step's seed.
    /// 4: post-norm recursion, fixed initial states, Muon's fan-out scaling, QK-clip over every
    /// pass, gates after `init`, evaluation under ACT, the whole history kept across a resume.
    const VERSION: u32 = 5;
    const DESCRIPTION: &'static str =
        "Train a trm-titans-mag language model (Muon × Grokfast, deep supervision, ACT)";

    fn prepare_raw(&self, mut raw: Value) -> Result<Value, ParamsError> {
        expand_preset(
            &mut raw,
            "model",
            |n| ModelConfig::preset(n).map(|c| serde_json::to_value(c).expect("config")),
            "tiny, 25m",
        )?;
        expand_preset(
            &mut raw,
            "optimizer",
            |n| OptimizerConfig::preset(n).map(|c| serde_json::to_value(c).expect("config")),
            "phase1, phase3-baking, phase3-rl",
        )?;
        Ok(raw)
    }

    fn check(&self, p: &TrainParams) -> Result<(), ParamsError> {
        if !OBJECTIVES.split(", ").any(|o| o == p.objective) {
            return Err(ParamsError::at(
                &["objective"],
                format!("unknown objective `{}`", p.objective),
            )
            .with_hint(format!("available: {OBJECTIVES}")));
        }
        if p.objective == "quiet-star" {
            if p.model != ModelConfig::default() {
                return Err(ParamsError::at(
                    &["model"],
                    "objective quiet-star trains the `init` model as it is: its config comes from the model",
                )
                .with_hint("remove `model:`"));
            }
            if let Some((at, problem)) = p.quiet_star.clone().unwrap_or_default().problem() {
                return Err(ParamsError::at(&["quiet_star", at], problem));
            }
        } else if p.quiet_star.is_some() {
            return Err(ParamsError::at(
                &["quiet_star"],
                "`quiet_star` settings apply to `objective: quiet-star` only",
            ));
        }
        if let Some(problem) = p.model.problems().into_iter().next() {
            return Err(ParamsError::at(&["model"], problem));
        }
        // The untrained halting head says σ(−2) ≈ 0.12 for every token: a threshold at or below
        // it halts everything at the first recursion whatever the model learns.
        let untrained = crate::model::trm::INITIAL_HALT_PROBABILITY;
        if p.model.act_threshold <= untrained {
            return Err(ParamsError::at(
                &["model", "act_threshold"],
                format!(
                    "act_threshold {} is at or below the untrained halting head's output ({untrained:.3}): every token would halt at the first recursion whatever the model learns",
                    p.model.act_threshold
                ),
            )
            .with_hint("use a threshold the head must learn to reach, e.g. 0.5"));
        }
        if let Some(problem) = p.optimizer.problems().into_iter().next() {
            return Err(ParamsError::at(&["optimizer"], problem));
        }
        if p.seq_len == 0 || p.seq_len > p.model.max_seq {
            return Err(ParamsError::at(
                &["seq_len"],
                format!(
                    "seq_len must be in 1..={} (the model's max_seq)",
                    p.model.max_seq
                ),
            ));
        }
        if p.batch_size == 0 || p.grad_accum == 0 || p.checkpoint_every == 0 || p.log_every == 0 {
            return Err(ParamsError::at(
                &["batch_size"],
                "batch_size, grad_accum, checkpoint_every and log_every must be positive",
            ));
        }
        if p.memory_budget_mib == Some(0) {
            return Err(ParamsError::at(
                &["memory_budget_mib"],
                "the memory budget must be at least 1 MiB",
            ));
        }
        let mut last = 0.0;
        for (i, s) in p.curriculum.iter().enumerate() {
            if !(s.until > last && s.until <= 1.0) {
                return Err(ParamsError::at(
                    &["curriculum", &i.to_string(), "until"],
                    "stage ends must increase and stay within (0, 1]",
                ));
            }
            last = s.until;
        }
        if !p.curriculum.is_empty() && last < 1.0 {
            return Err(ParamsError::at(
                &["curriculum"],
                "the last stage must end at `until: 1.0`",
            ));
        }
        Ok(())
    }

    fn inputs(&self, p: &TrainParams) -> InputSignature {
        let lm = p.objective == "lm";
        InputSignature::Fixed(vec![
            InputSpec::many("data", &[ArtifactKind::Dataset]),
            // Quiet-STaR's tokenizer is the baked `init` model's.
            InputSpec::one("tokenizer", &[ArtifactKind::Tokenizer]).required(lm),
            InputSpec::one("init", &[ArtifactKind::Model]).required(!lm),
            // The frozen model of the KL term: required exactly when the term is on (Quiet-STaR's
            // defaults to `init`).
            InputSpec::one("reference", &[ArtifactKind::Model])
                .required(lm && p.optimizer.kl_coef > 0.0),
        ])
    }

    fn outputs(&self, _p: &TrainParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "model".into(),
            kind: ArtifactKind::Model,
        }]
    }

    fn metrics(&self, p: &TrainParams) -> Option<Vec<String>> {
        let own = crate::train::trainer::TRAINED_METRICS.iter();
        if p.objective == "quiet-star" {
            return Some(own.chain(rl::METRICS).map(|m| (*m).to_string()).collect());
        }
        Some(
            own.chain(eval::LM_REPORT_METRICS)
                .map(|m| (*m).to_string())
                .collect(),
        )
    }

    fn backend_class(&self, _p: &TrainParams, device: &str) -> Option<String> {
        Some(device::key_class(device))
    }

    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        p: &TrainParams,
    ) -> Result<StepOutcome, OpError> {
        let backend = device::resolve(ctx.device()).map_err(|e| OpError::user(e.to_string()))?;
        ctx.log(format!("backend {}", backend.class));
        if p.objective == "quiet-star" {
            return quiet_star(ctx, inputs, p, &backend);
        }
        let (cfg, dev) = (&p.model, &backend.device);
        let tk_path = inputs["tokenizer"][0].path.join("tokenizer.json");
        let codec = TextCodec::load(&tk_path)?;
        check_vocab(&codec, cfg)?;
        let (corpus, curriculum) = p.data(inputs, &codec)?;
        let seed = ctx.seed();
        let sampler = p.sampler(&corpus, &curriculum, seed);
        let tables = Tables::new(cfg, dev);
        let reference = match inputs.get("reference").and_then(|v| v.first()) {
            Some(r) if p.optimizer.kl_coef > 0.0 => Some(input_model(cfg, r, "reference", dev)?),
            _ => None,
        };
        let objective = Lm {
            targets: Targets::All,
            sup_steps: cfg.sup_steps,
            act_weight: cfg.act_weight,
            tables: &tables,
            device: dev,
            reference: reference.as_ref().map(|model| Reference {
                model,
                kl_coef: p.optimizer.kl_coef,
                data_weight: 1.0,
            }),
        };
        let init = inputs.get("init").and_then(|v| v.first());
        let start = || match init {
            Some(i) => {
                let mut model = input_model(cfg, i, "init", dev)?;
                // A variant's own memory gates replace the shared initialisation's.
                if let Some(gates) = cfg.mem_gates {
                    model.set_memory_gates(gates);
                }
                Ok(model)
            }
            None => Ok(TrmTitansMag::new(cfg, seed, dev)),
        };
        let settings = p.loop_config();
        let run = Run {
            ctx,
            model: cfg,
            optimizer: &p.optimizer,
            settings: &settings,
            device: dev,
            monitor: None,
        };
        let trained = run.train(&start, &sampler, &objective)?;

        let report = evaluate(ctx, p, &trained, &corpus, &curriculum, &codec, dev)?;
        write_model(ctx, p, &trained, &report, &codec, &tk_path, backend.class)
    }
}

/// `objective: quiet-star`: the baked `init` model with a mixing head, trained with Quiet-STaR
/// under the anti-theater checks, then measured on the test split beside the baked model.
fn quiet_star(
    ctx: &StepContext,
    inputs: &StepInputs,
    p: &TrainParams,
    backend: &device::Backend,
) -> Result<StepOutcome, OpError> {
    let dev = &backend.device;
    let inner = dev.clone().inner();
    if inputs.get("tokenizer").is_some_and(|v| !v.is_empty()) {
        return Err(OpError::user(
            "objective quiet-star reads its tokenizer from the `init` model",
        )
        .with_hint("remove the `tokenizer` input"));
    }
    let qs = p.quiet_star.clone().unwrap_or_default();
    let init = &inputs["init"][0];
    let baked = rl::read_baked(&init.path, &init.from_step)?;
    let (cfg, codec) = (&baked.cfg, &baked.codec);
    let st = qs.thoughts(codec.bos);
    if p.seq_len + st.span() > cfg.max_seq {
        return Err(OpError::user(format!(
            "seq_len {} and a thought with its scored tokens ({} positions) exceed the model's max_seq {}",
            p.seq_len,
            st.span(),
            cfg.max_seq
        ))
        .with_hint("lower `seq_len`, `quiet_star.thought_length` or `quiet_star.n_true`"));
    }
    let (corpus, curriculum) = p.data(inputs, codec)?;
    let seed = ctx.seed();
    let sampler = p.sampler(&corpus, &curriculum, seed);
    // The KL reference: the baked model as it came (or the `reference` input), frozen.
    let reference = match inputs.get("reference").and_then(|v| v.first()) {
        Some(r) => rl::read_baked(&r.path, &r.from_step)?.reference(&inner)?,
        None => baked.reference(&inner)?,
    };
    let tables = Tables::new(cfg, dev);
    let objective = QuietStar {
        settings: st.clone(),
        cfg,
        tables: &tables,
        device: dev,
        reference: (p.optimizer.kl_coef > 0.0).then_some(Reference {
            model: &reference,
            kl_coef: p.optimizer.kl_coef,
            data_weight: 1.0,
        }),
        seed,
    };
    let check_tables = Tables::new(cfg, &inner);
    let set = rl::check_set(&corpus, codec, &qs, p.seq_len, cfg.max_seq);
    if set.rows.is_empty() || set.prompts.is_empty() {
        return Err(OpError::user(
            "the data has no validation records for the anti-theater checks (or no prompt leaves room for an answer and a thought within max_seq)",
        )
        .with_hint("lower `quiet_star.check_max_tokens` or `quiet_star.thought_length`"));
    }
    let checks = anti_theater::Checks {
        cfg,
        tables: &check_tables,
        settings: &st,
        set: &set,
        eos: codec.eos,
        seed,
        every: qs.check_every,
        max_interventions: qs.max_interventions,
        fail_when_exhausted: qs.on_failure == rl::OnFailure::Fail,
        device: &inner,
    };
    let (initial, fresh) = baked.with_head(seed, dev)?;
    ctx.log(format!(
        "mixing head added ({}); {} thoughts of {} tokens after every position, scored on {} true tokens",
        fresh.join(", "),
        st.num_thoughts,
        st.thought_length,
        st.n_true
    ));
    let start = || Ok(initial.clone());
    if p.optimizer.qk_clip > 0.0 {
        ctx.log(
            "QK-clip is off: Quiet-STaR's incremental reads do not record attention logits yet",
        );
    }
    let settings = p.loop_config();
    let run = Run {
        ctx,
        model: cfg,
        optimizer: &p.optimizer,
        settings: &settings,
        device: dev,
        monitor: Some(&checks),
    };
    let trained = run.train(&start, &sampler, &objective)?;
    let model = trained.eval_model();
    let progress = &mut |i: usize, n: usize| {
        ctx.progress(i as u64, Some(n as u64), "test answers");
        ctx.check_cancelled()
    };
    let measured = rl::report(
        &model, &reference, cfg, codec, &corpus, &qs, p.seq_len, seed, &inner, progress,
    )?;
    let params = trained.model.num_params();
    let mut metrics = trained.metrics();
    metrics.extend(rl::run_metrics(&trained));
    metrics.extend(measured);
    let mut config = crate::bake::model::config(cfg, params, backend.class, codec);
    config["quiet_star"] = json!({
        "num_thoughts": st.num_thoughts,
        "thought_length": st.thought_length,
        "n_true": st.n_true,
        "temperature": st.temperature,
    });
    files::write(
        &ctx.output_dir("model")?,
        &ModelFiles {
            weights: Some(&trained.weights()?),
            config: &config,
            tokenizer: Some(&init.path.join("tokenizer.json")),
            metrics: &metrics,
            extra: &[("history.jsonl", trained.history_jsonl())],
        },
    )?;
    metrics.insert(
        "system/tokens_per_second".into(),
        json!(trained.tokens_per_second),
    );
    Ok(StepOutcome { metrics })
}

/// The trained model on held-out data: the same records for every model, math problems as hard
/// as the curriculum got.
fn evaluate(
    ctx: &StepContext,
    p: &TrainParams,
    trained: &Trained,
    corpus: &Corpus,
    curriculum: &Curriculum,
    codec: &TextCodec,
    dev: &burn::tensor::Device,
) -> Result<LmReport, OpError> {
    let rows =
        |records| eval::eval_batches(records, codec, p.eval_records, p.seq_len, p.batch_size);
    let (val, test) = (rows(&corpus.val), rows(&corpus.test));
    let set = LmEvalSet {
        val: &val,
        test: &test,
        test_records: &corpus.test,
        math_limit: p.math_eval,
        math_max_difficulty: curriculum.max_difficulty(),
    };
    let progress = &mut |i: usize, n: usize| {
        ctx.progress(i as u64, Some(n as u64), "math problems");
        ctx.check_cancelled()
    };
    let model = trained.eval_model();
    eval::lm_report(
        &model,
        &p.model,
        &set,
        codec,
        &dev.clone().inner(),
        progress,
    )
}

/// The `model` artifact: weights, config, tokenizer, metrics and the loss history.
fn write_model(
    ctx: &StepContext,
    p: &TrainParams,
    trained: &Trained,
    report: &LmReport,
    codec: &TextCodec,
    tokenizer: &std::path::Path,
    backend: &str,
) -> Result<StepOutcome, OpError> {
    let (cfg, params) = (&p.model, trained.model.num_params());
    let config = files::trained_config(cfg, params, backend, codec.bos, codec.eos);
    let mut metrics = trained.metrics();
    metrics.extend(
        report
            .metrics(cfg, params)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    let weights = trained.weights()?;
    let files = ModelFiles {
        weights: Some(&weights),
        config: &config,
        tokenizer: Some(tokenizer),
        metrics: &metrics,
        extra: &[("history.jsonl", trained.history_jsonl())],
    };
    files::write(&ctx.output_dir("model")?, &files)?;
    // Timings go to the step's recorded metrics (forge show), not into the artifact.
    metrics.insert(
        "diversity/inference_time_ms".into(),
        json!(report.inference_ms_per_token()),
    );
    metrics.insert(
        "system/tokens_per_second".into(),
        json!(trained.tokens_per_second),
    );
    Ok(StepOutcome { metrics })
}

impl TrainParams {
    /// The `data` inputs read with `codec`, and their curriculum over `steps`.
    fn data(
        &self,
        inputs: &StepInputs,
        codec: &TextCodec,
    ) -> Result<(Corpus, Curriculum), OpError> {
        let corpus = Corpus::load(&inputs["data"], |t| codec.encode(t))?;
        let curriculum = corpus.curriculum(&self.curriculum, self.mix.as_ref(), self.steps)?;
        Ok((corpus, curriculum))
    }

    /// The training rows: `batch_size` rows of `seq_len` per step from `corpus` by `curriculum`.
    fn sampler<'a>(
        &self,
        corpus: &'a Corpus,
        curriculum: &'a Curriculum,
        seed: u64,
    ) -> Sampler<'a> {
        Sampler {
            pool: &corpus.pool,
            curriculum,
            seed,
            rows: self.batch_size,
            seq: self.seq_len,
        }
    }

    /// The loop settings of these parameters.
    fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            grad_accum: self.grad_accum,
            warmup_steps: self.warmup_steps.unwrap_or(self.steps / 20),
            min_lr_ratio: self.min_lr_ratio,
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            memory_budget_mib: self.memory_budget_mib,
        }
    }
}

/// The tokenizer and the model must agree on the vocabulary.
fn check_vocab(codec: &TextCodec, cfg: &ModelConfig) -> Result<(), OpError> {
    let n = codec.tokenizer.get_vocab_size(true);
    if n == cfg.vocab_size {
        return Ok(());
    }
    Err(OpError::user(format!(
        "the tokenizer has {n} tokens but model.vocab_size is {}",
        cfg.vocab_size
    ))
    .with_hint(format!("set `model: {{ vocab_size: {n} }}`")))
}

/// A model of `cfg` with the weights of the input artifact `input` (its `role` in this step).
fn input_model(
    cfg: &ModelConfig,
    input: &InputArtifact,
    role: &str,
    device: &burn::tensor::Device,
) -> Result<TrmTitansMag, OpError> {
    let path = input.path.join("model.safetensors");
    let what = format!("the {role} model from {}", input.from_step);
    weights::model_from_file(cfg, &path, &what, device).map_err(|e| OpError::user(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

    #[test]
    fn presets_expand_and_explicit_keys_win() {
        let p = Train
            .parse_params(&json!({ "model": { "preset": "tiny", "d_model": 64 }, "optimizer": { "preset": "phase1" } }))
            .unwrap();
        let typed = p.typed::<TrainParams>().unwrap();
        assert_eq!(typed.model.d_model, 64);
        assert_eq!(typed.model.layers, ModelConfig::tiny().layers);
        assert_eq!(
            typed.optimizer.lr,
            OptimizerConfig::preset("phase1").unwrap().lr
        );
        let e = Train
            .parse_params(&json!({ "model": { "preset": "huge" } }))
            .unwrap_err();
        assert_eq!(e.path, ["model", "preset"]);
        assert!(e.hint.unwrap().contains("tiny"));
    }

    #[test]
    fn the_kl_term_needs_a_reference_input_and_bad_settings_fail_at_plan_time() {
        let with_kl = Train
            .parse_params(&json!({ "optimizer": { "preset": "phase3-baking" } }))
            .unwrap();
        let InputSignature::Fixed(specs) = Op::inputs(&Train, &with_kl) else {
            panic!("fixed inputs")
        };
        let reference = specs.iter().find(|s| s.name == "reference").unwrap();
        assert_eq!(
            reference.required,
            with_kl["optimizer"]["kl_coef"].as_f64().unwrap() > 0.0
        );
        for (bad, at) in [
            (json!({ "seq_len": 100_000 }), "seq_len"),
            (json!({ "memory_budget_mib": 0 }), "memory_budget_mib"),
            (json!({ "curriculum": [{ "until": 0.5 }] }), "curriculum"),
            (json!({ "objective": "rl" }), "objective"),
            // Below the untrained halting head's σ(−2): every token would halt at once.
            (json!({ "model": { "act_threshold": 0.1 } }), "model"),
        ] {
            let e = Train.parse_params(&bad).unwrap_err();
            assert_eq!(e.path[0], at, "{bad}: {}", e.message);
        }
    }
}
