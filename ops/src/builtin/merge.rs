//! `merge`: Phase 2 (EvoMerge). Three strategies over `models` (forge model artifacts):
//!
//! - `merge`: one technique (`technique: { method: linear | slerp | ties | dare | frankenmerge
//!   | dfs, … }`), streamed file to file (see `merge::files`);
//! - `combo`: one of the eight three-stage combos (`combo: "101"`) of exactly three models over
//!   the `base` (the Phase-1 shared initialisation);
//! - `evolve`: the genetic loop of `merge::evolve`, seeded with the eight combos, with *real*
//!   fitness: every candidate is loaded into the model and run on the held-out `val` split of
//!   `data`.
//!
//! Fitness is the seed plan's composite with its size-adaptive weights,
//! `w_p / perplexity + w_a · accuracy + w_s / latency + w_m / size_MB`, where perplexity is
//! exp(cross-entropy) on fixed validation batches, accuracy the fraction of held-out records
//! whose whole answer span the model predicts token for token (argmax, teacher-forced — what
//! greedy decoding of the answer would produce), latency the block passes per token the model
//! spends under ACT at inference (measured by running it; a deterministic cost, so fitness and
//! hence the champion are reproducible — wall-clock times go to events only), and size the
//! weights in MB. Results are cached in the store's memo table `fitness/` by the blake3 digest
//! of the candidate's weights and of everything the evaluation depends on, so a candidate seen
//! again — in a later generation or another run — is not re-evaluated. Candidates are evaluated
//! on up to `resources.cpus` threads.
//!
//! The evolution checkpoints after every generation (population weights + state), so a killed
//! step resumes at its last finished generation and produces the same champion.
//!
//! Output `model`: `model.safetensors` (canonical F32), `config.json` (the first model's, with
//! the merge recorded; layer counts updated when a frankenmerge changes depth), `tokenizer.json`,
//! `metrics.json`, and for `evolve` also `evolution_log.json` (per generation: best/avg/worst
//! fitness, std, diversity, combo counts, champion combo) and `lineage.json` (the champion's
//! ancestry: which candidates and combos produced it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::artifact::{
    ArtifactKind, InputArtifact, InputSignature, InputSpec, OutputSpec, StepInputs,
};
use crate::context::StepContext;
use crate::data::{Record, Split};
use crate::merge::combo::{self, ComboSettings};
use crate::merge::evolve::{self, EvolveConfig, EvolveState, FitnessReport};
use crate::merge::files::{Technique, merge_files};
use crate::merge::methods::Rescale;
use crate::merge::tensors::StateDict;
use crate::model::{ModelConfig, Tables, TrmTitansMag};
use crate::op::{OpError, ParamsError, StepOutcome, TypedOp};
use crate::train;

/// How `merge` combines its models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// One technique, given by `technique`.
    Merge,
    /// One of the eight combos, given by `combo`.
    Combo,
    /// The EvoMerge genetic loop.
    #[default]
    Evolve,
}

/// Parameters of `merge`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeParams {
    #[serde(default)]
    pub strategy: Strategy,
    /// The technique of `strategy: merge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technique: Option<Technique>,
    /// The combo of `strategy: combo`, three bits: interpolation (0 linear, 1 slerp), task
    /// arithmetic (0 dare, 1 ties), selection (0 frankenmerge, 1 dfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combo: Option<String>,
    /// Combo stage 2: fraction of each task vector kept (TIES trim, DARE keep probability).
    #[serde(default = "d::density")]
    pub density: f64,
    /// Combo stage 2: scale of the merged task vector.
    #[serde(default = "d::one")]
    pub lambda: f64,
    /// Combo stage 2: DARE rescaling.
    #[serde(default)]
    pub rescale: Rescale,
    #[serde(default)]
    pub evolve: EvolveConfig,
    #[serde(default)]
    pub fitness: FitnessConfig,
    /// Seed of DARE masks, DFS routings, mutations (default: the pipeline seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// How `evolve` measures a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FitnessConfig {
    /// Validation batches for perplexity.
    #[serde(default = "d::eval_batches")]
    pub eval_batches: usize,
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    #[serde(default = "d::seq_len")]
    pub seq_len: usize,
    /// Held-out records whose answers are checked for accuracy.
    #[serde(default = "d::answers")]
    pub answers: usize,
    /// Most ACT recursions when measuring latency.
    #[serde(default = "d::act_max_steps")]
    pub act_max_steps: usize,
    /// Weights of perplexity, accuracy, speed and memory (default: by model size, as in the
    /// seed plan: < 100 MB 0.5/0.3/0.1/0.1, < 1 GB 0.4/0.3/0.2/0.1, else 0.4/0.3/0.15/0.15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<[f64; 4]>,
}

impl Default for FitnessConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

mod d {
    pub fn density() -> f64 {
        0.5
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn eval_batches() -> usize {
        2
    }
    pub fn batch_size() -> usize {
        8
    }
    pub fn seq_len() -> usize {
        128
    }
    pub fn answers() -> usize {
        48
    }
    pub fn act_max_steps() -> usize {
        4
    }
}

/// The seed plan's size-adaptive fitness weights.
pub fn fitness_weights(size_mb: f64) -> [f64; 4] {
    if size_mb < 100.0 {
        [0.5, 0.3, 0.1, 0.1]
    } else if size_mb < 1000.0 {
        [0.4, 0.3, 0.2, 0.1]
    } else {
        [0.4, 0.3, 0.15, 0.15]
    }
}

/// The composite fitness.
pub fn composite(w: [f64; 4], perplexity: f64, accuracy: f64, latency: f64, size_mb: f64) -> f64 {
    w[0] / perplexity + w[1] * accuracy + w[2] / latency.max(1e-9) + w[3] / size_mb.max(1e-9)
}

fn parse_combo(s: &str) -> Option<u8> {
    (s.len() == 3 && s.bytes().all(|b| b == b'0' || b == b'1'))
        .then(|| u8::from_str_radix(s, 2).ok())
        .flatten()
}

pub struct Merge;

impl TypedOp for Merge {
    type Params = MergeParams;
    const NAME: &'static str = "merge";
    /// 2: the model's fused ops change fitness rounding on libtorch (at::silu).
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str = "Merge models: one technique, one of the eight EvoMerge combos, or an evolution with real fitness";

    fn check(&self, p: &MergeParams) -> Result<(), ParamsError> {
        match p.strategy {
            Strategy::Merge => {
                let Some(t) = &p.technique else {
                    return Err(ParamsError::at(
                        &["technique"],
                        "`strategy: merge` needs a `technique`",
                    )
                    .with_hint("e.g. technique: { method: slerp, t: 0.5 }"));
                };
                // Counts of models are checked at run time; parameter ranges here.
                if let Some(problem) = t.check_params() {
                    return Err(ParamsError::at(&["technique"], problem));
                }
            }
            Strategy::Combo => {
                if p.combo.as_deref().and_then(parse_combo).is_none() {
                    return Err(ParamsError::at(
                        &["combo"],
                        "`strategy: combo` needs a `combo` of three bits",
                    )
                    .with_hint("combo: \"101\" is SLERP + DARE + DFS; 000–111"));
                }
            }
            Strategy::Evolve => {
                let e = &p.evolve;
                if !(0.0..=1.0).contains(&e.mutation_rate) || e.mutation_sigma < 0.0 {
                    return Err(ParamsError::at(
                        &["evolve"],
                        "mutation_rate must be in [0, 1] and mutation_sigma ≥ 0",
                    ));
                }
                let f = &p.fitness;
                if f.eval_batches == 0 || f.batch_size == 0 || f.seq_len == 0 {
                    return Err(ParamsError::at(
                        &["fitness"],
                        "eval_batches, batch_size and seq_len must be positive",
                    ));
                }
            }
        }
        if !(p.density > 0.0 && p.density <= 1.0) {
            return Err(ParamsError::at(&["density"], "density must be in (0, 1]"));
        }
        Ok(())
    }

    fn inputs(&self, p: &MergeParams) -> InputSignature {
        let needs_base = match p.strategy {
            Strategy::Merge => p.technique.as_ref().is_some_and(Technique::needs_base),
            _ => true,
        };
        InputSignature::Fixed(vec![
            InputSpec::many("models", &[ArtifactKind::Model]),
            InputSpec::one("base", &[ArtifactKind::Model]).required(needs_base),
            InputSpec::many("data", &[ArtifactKind::Dataset])
                .required(p.strategy == Strategy::Evolve),
        ])
    }

    fn outputs(&self, _p: &MergeParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "model".into(),
            kind: ArtifactKind::Model,
        }]
    }

    fn backend_class(&self, p: &MergeParams, device: &str) -> Option<String> {
        // Only the evolution runs the model; a plain merge is backend-independent arithmetic.
        (p.strategy == Strategy::Evolve).then(|| crate::device::key_class(device))
    }

    fn default_resources(&self, p: &MergeParams) -> crate::op::Resources {
        crate::op::Resources {
            cpus: if p.strategy == Strategy::Evolve { 2 } else { 1 },
            gpus: 0,
        }
    }

    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        p: &MergeParams,
    ) -> Result<StepOutcome, OpError> {
        let models = &inputs["models"];
        let base = inputs.get("base").and_then(|v| v.first());
        let seed = p.seed.unwrap_or(ctx.seed());
        let weights_of = |a: &InputArtifact| a.path.join("model.safetensors");
        let first = &models[0];
        let config_path = first.path.join("config.json");
        let mut config: Value = serde_json::from_slice(
            &std::fs::read(&config_path).map_err(|e| OpError::io(&config_path, e))?,
        )
        .map_err(|e| OpError::Failed(format!("{}: {e}", config_path.display())))?;
        let out = ctx.output_dir("model")?;
        let out_weights = out.join("model.safetensors");
        let mut metrics = serde_json::Map::new();
        let combo_settings = ComboSettings {
            density: p.density,
            lambda: p.lambda,
            rescale: p.rescale,
        };
        let load = |a: &InputArtifact| -> Result<StateDict, OpError> {
            let path = weights_of(a);
            StateDict::from_bytes(&std::fs::read(&path).map_err(|e| OpError::io(&path, e))?)
                .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))
        };
        let three = |what: &str| -> Result<[StateDict; 3], OpError> {
            if models.len() != 3 {
                return Err(OpError::Failed(format!(
                    "{what} merges exactly 3 models; `models` has {}",
                    models.len()
                )));
            }
            Ok([load(&models[0])?, load(&models[1])?, load(&models[2])?])
        };
        let mut extra_files: Vec<(&str, Vec<u8>)> = Vec::new();
        match p.strategy {
            Strategy::Merge => {
                let t = p.technique.as_ref().expect("checked");
                let paths: Vec<PathBuf> = models.iter().map(weights_of).collect();
                let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
                let base_path = base.map(weights_of);
                let t0 = Instant::now();
                let stats = merge_files(t, &refs, base_path.as_deref(), &out_weights, seed)
                    .map_err(OpError::Failed)?;
                ctx.log(format!(
                    "{}: {} tensors, {} parameters in {:.2}s",
                    t.name(),
                    stats.tensors,
                    stats.parameters,
                    t0.elapsed().as_secs_f64()
                ));
                metrics.insert("merge/technique".into(), json!(t.name()));
                metrics.insert("merge/parameters".into(), json!(stats.parameters));
                config["merge"] = json!({ "strategy": "merge", "technique": t });
            }
            Strategy::Combo => {
                let k = parse_combo(p.combo.as_deref().expect("checked")).expect("checked");
                let ms = three("a combo")?;
                let base_sd = load(base.expect("required"))?;
                let models = [&ms[0], &ms[1], &ms[2]];
                let fallback = || combo::linear_merge(&models);
                let (w, outcome) =
                    combo::apply_or_fallback(k, models, &base_sd, seed, &combo_settings, &fallback)
                        .map_err(OpError::Failed)?;
                let recipe = match outcome {
                    Ok(recipe) => Some(recipe),
                    Err(note) => {
                        ctx.alert(crate::context::AlertLevel::Warn, note);
                        None
                    }
                };
                write_file(&out_weights, &w.to_bytes())?;
                metrics.insert("merge/combo".into(), json!(combo::bits(k)));
                config["merge"] = json!({ "strategy": "combo", "combo": combo::bits(k), "techniques": combo::describe(k), "recipe": recipe });
            }
            Strategy::Evolve => {
                let ms = three("evolution")?;
                let base_sd = load(base.expect("required"))?;
                let model_cfg: ModelConfig = serde_json::from_value(config["model"].clone())
                    .map_err(|e| {
                        OpError::Failed(format!(
                            "{}: `model` is not a trm-titans-mag config: {e}",
                            config_path.display()
                        ))
                    })?;
                let evaluator = Fitness::prepare(ctx, p, &model_cfg, first, &inputs["data"], seed)?;
                let parent_reports = {
                    let refs: Vec<&StateDict> = ms.iter().collect();
                    evolve::Evaluator::evaluate(&evaluator, &refs)
                        .into_iter()
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(OpError::Failed)?
                };
                let mut hooks = Checkpoints { ctx };
                let resume = load_checkpoint(ctx)?;
                if let Some((st, _)) = &resume {
                    ctx.log(format!(
                        "resuming the evolution after generation {}",
                        st.generation
                    ));
                }
                let inp = evolve::Inputs {
                    parents: [&ms[0], &ms[1], &ms[2]],
                    base: &base_sd,
                    seed,
                    combo: combo_settings,
                };
                let (st, champion) = evolve::evolve(
                    &p.evolve, &inp, &evaluator, &mut hooks, resume,
                )
                .map_err(|e| {
                    if ctx.is_cancelled() {
                        OpError::Cancelled(e)
                    } else {
                        OpError::Failed(e)
                    }
                })?;
                write_file(&out_weights, &champion.to_bytes())?;
                let champ = st.node(st.champion()).clone();
                let champ_fit = champ.fitness.clone().expect("evaluated");
                let parent_avg = parent_reports.iter().map(|r| r.fitness).sum::<f64>() / 3.0;
                let improvement = (champ_fit.fitness - parent_avg) / parent_avg;
                let initial = st.history[0].best_fitness;
                let mut put = |k: &str, v: Value| {
                    metrics.insert(k.to_string(), v);
                };
                for (i, r) in parent_reports.iter().enumerate() {
                    put(&format!("parents/{i}/fitness"), json!(r.fitness));
                    put(&format!("parents/{i}/perplexity"), json!(r.perplexity));
                    put(&format!("parents/{i}/accuracy"), json!(r.accuracy));
                    put(&format!("parents/{i}/latency"), json!(r.latency));
                }
                put("parents/avg_fitness", json!(parent_avg));
                put(
                    "parents/best_fitness",
                    json!(
                        parent_reports
                            .iter()
                            .map(|r| r.fitness)
                            .fold(f64::MIN, f64::max)
                    ),
                );
                put("final/best_fitness", json!(champ_fit.fitness));
                put("final/perplexity", json!(champ_fit.perplexity));
                put("final/accuracy", json!(champ_fit.accuracy));
                put("final/latency", json!(champ_fit.latency));
                put("final/fitness_improvement", json!(improvement));
                put("final/generations_completed", json!(st.generation));
                put(
                    "final/champion_combo_id",
                    json!(champ.combo.as_deref().and_then(parse_combo)),
                );
                put("final/best_combo", json!(champ.combo));
                put("final/convergence_reason", json!(st.stop_reason));
                put(
                    "evolution/fitness_improvement",
                    json!((champ_fit.fitness - initial) / initial),
                );
                put("evolution/improvement_over_parents", json!(improvement));
                let mut usage: BTreeMap<String, u32> = BTreeMap::new();
                for n in st
                    .nodes
                    .iter()
                    .filter(|n| matches!(n.kind.as_str(), "combo" | "merge" | "inject"))
                {
                    *usage
                        .entry(n.combo.clone().unwrap_or_default())
                        .or_default() += 1;
                }
                for k in 0..8u8 {
                    put(
                        &format!("evolution/combo_{}_count", combo::bits(k)),
                        json!(usage.get(&combo::bits(k)).copied().unwrap_or(0)),
                    );
                }
                ctx.log(format!(
                    "champion #{} ({}) fitness {:.5} vs parents' average {:.5}: {:+.1}%",
                    champ.id,
                    champ
                        .combo
                        .as_deref()
                        .map(|c| format!("combo {c}"))
                        .unwrap_or_else(|| "linear".into()),
                    champ_fit.fitness,
                    parent_avg,
                    improvement * 100.0
                ));
                extra_files.push((
                    "evolution_log.json",
                    serde_json::to_vec_pretty(&json!({
                        "generations": st.history,
                        "stop_reason": st.stop_reason,
                        "parents": parent_reports,
                    }))
                    .expect("json"),
                ));
                extra_files.push((
                    "lineage.json",
                    serde_json::to_vec_pretty(&st.lineage(champ.id)).expect("json"),
                ));
                config["merge"] =
                    json!({ "strategy": "evolve", "champion": champ.id, "combo": champ.combo });
            }
        }
        // Depth may have changed (frankenmerge): keep the model config in step with the weights.
        let merged = crate::merge::tensors::TensorFile::open(&out_weights)
            .map_err(|e| OpError::Failed(e.to_string()))?;
        let names = || merged.tensors().keys().map(String::as_str);
        let depth = crate::merge::layers::depth_of(names());
        if let Some(m) = config.get_mut("model").and_then(Value::as_object_mut)
            && m.contains_key("layers")
        {
            let memory: std::collections::BTreeSet<usize> = names()
                .filter_map(crate::merge::layers::split_layer)
                .filter(|(_, _, rest)| rest.starts_with("memory."))
                .map(|(_, layer, _)| layer)
                .collect();
            m.insert("layers".into(), json!(depth));
            m.insert("memory_layers".into(), json!(memory));
        }
        let params: usize = merged.tensors().values().map(|t| t.numel()).sum();
        config["num_parameters"] = json!(params);
        metrics.insert("final/total_params".into(), json!(params));
        write_file(
            &out.join("config.json"),
            &serde_json::to_vec_pretty(&config).expect("json"),
        )?;
        let tk = first.path.join("tokenizer.json");
        if tk.exists() {
            std::fs::copy(&tk, out.join("tokenizer.json")).map_err(|e| OpError::io(&tk, e))?;
        }
        for (name, bytes) in &extra_files {
            write_file(&out.join(name), bytes)?;
        }
        write_file(
            &out.join("metrics.json"),
            &serde_json::to_vec_pretty(&metrics).expect("json"),
        )?;
        Ok(StepOutcome { metrics })
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), OpError> {
    std::fs::write(path, bytes).map_err(|e| OpError::io(path, e))
}

/// Generation checkpoints: population weights + state, replaced atomically.
struct Checkpoints<'a> {
    ctx: &'a StepContext,
}

impl evolve::Hooks for Checkpoints<'_> {
    fn generation_done(
        &mut self,
        st: &EvolveState,
        population: &[StateDict],
    ) -> Result<(), String> {
        let g = st.history.last().expect("a generation");
        let ctx = self.ctx;
        let step = Some(u64::from(st.generation));
        for (k, v) in [
            ("evolution/generation", f64::from(st.generation)),
            ("evolution/best_fitness", g.best_fitness),
            ("evolution/avg_fitness", g.avg_fitness),
            ("evolution/worst_fitness", g.worst_fitness),
            ("evolution/fitness_std", g.fitness_std),
            ("evolution/diversity", g.diversity),
            ("evolution/unique_models", g.unique_models as f64),
            ("evolution/elite1_fitness", g.elite1_fitness),
            ("evolution/elite2_fitness", g.elite2_fitness),
            (
                "evolution/fitness_improvement",
                (g.best_fitness - st.history[0].best_fitness) / st.history[0].best_fitness,
            ),
        ] {
            ctx.metric(k, v, step);
        }
        for note in &g.interventions {
            ctx.alert(
                crate::context::AlertLevel::Info,
                format!("generation {}: {note}", st.generation),
            );
        }
        let mut files: Vec<(String, Vec<u8>)> = population
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("pop-{i}.safetensors"), w.to_bytes()))
            .collect();
        files.push((
            "evolve.json".into(),
            serde_json::to_vec(st).expect("state serializes"),
        ));
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        ctx.save_checkpoint(&refs).map_err(|e| e.to_string())?;
        ctx.progress(u64::from(st.generation), None, "generations");
        ctx.check_cancelled().map_err(|e| e.to_string())
    }
}

fn load_checkpoint(ctx: &StepContext) -> Result<Option<(EvolveState, Vec<StateDict>)>, OpError> {
    let Some(st) = ctx.load_checkpoint_json::<EvolveState>("evolve.json")? else {
        return Ok(None);
    };
    let mut pop = Vec::new();
    for i in 0..st.population.len() {
        let name = format!("pop-{i}.safetensors");
        let bytes = ctx
            .load_checkpoint(&name)?
            .ok_or_else(|| OpError::Failed(format!("checkpoint lacks {name}")))?;
        pop.push(StateDict::from_bytes(&bytes).map_err(|e| OpError::Failed(e.to_string()))?);
    }
    Ok(Some((st, pop)))
}

/// Rows of token ids with, per row, the positions whose next-token prediction must be right.
struct AnswerBatch {
    rows: Vec<Vec<i64>>,
    targets: Vec<Vec<(usize, i64)>>,
}

/// The evaluator: fixed validation batches, answer spans, the model config, the cache.
struct Fitness<'a> {
    ctx: &'a StepContext,
    /// The inference device candidates run on.
    device: burn::tensor::Device,
    cfg: ModelConfig,
    fc: FitnessConfig,
    ppl_batches: Vec<Vec<Vec<i64>>>,
    answers: Vec<AnswerBatch>,
    memo: PathBuf,
    eval_key: String,
}

impl<'a> Fitness<'a> {
    fn prepare(
        ctx: &'a StepContext,
        p: &MergeParams,
        cfg: &ModelConfig,
        model: &InputArtifact,
        data: &[InputArtifact],
        seed: u64,
    ) -> Result<Self, OpError> {
        let tk_path = model.path.join("tokenizer.json");
        let tk_bytes = std::fs::read(&tk_path).map_err(|e| OpError::io(&tk_path, e))?;
        let codec = super::tokenizer::TextCodec::from_bytes(&tk_bytes, &tk_path)?;
        let mut recs = super::train::load_all_records(data, Split::Val)?;
        if recs.is_empty() {
            recs = super::train::load_all_records(data, Split::Train)?;
        }
        if recs.is_empty() {
            return Err(OpError::Failed(
                "the dataset has no records to evaluate on".into(),
            ));
        }
        let fc = p.fitness.clone();
        let seq = fc.seq_len.min(cfg.max_seq);
        let pool = train::TokenPool::new(&recs, |t| codec.encode(t));
        let mix: BTreeMap<String, f64> = pool.categories().into_iter().map(|c| (c, 1.0)).collect();
        let ppl_batches = (0..fc.eval_batches)
            .map(|i| {
                pool.batch(
                    &mut train::rng_for(seed, "fitness", i as u64, 0),
                    fc.batch_size,
                    seq,
                    &mix,
                    3,
                )
            })
            .collect();
        // Answer spans: records taken round-robin over categories, in file order.
        let mut by_cat: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
        for r in &recs {
            by_cat.entry(r.category.as_str()).or_default().push(r);
        }
        let mut picked = Vec::new();
        let mut round = 0;
        while picked.len() < fc.answers && by_cat.values().any(|v| v.len() > round) {
            for v in by_cat.values() {
                if let Some(r) = v.get(round)
                    && picked.len() < fc.answers
                {
                    picked.push(*r);
                }
            }
            round += 1;
        }
        let mut rows = Vec::new();
        for r in picked {
            let Some(start) = r.text.rfind(r.answer.as_str()) else {
                continue;
            };
            let end = start + r.answer.len();
            let Ok(enc) = codec.tokenizer.encode(r.text.as_str(), false) else {
                continue;
            };
            let mut tokens = vec![codec.bos];
            tokens.extend(enc.get_ids().iter().map(|&i| i64::from(i)));
            // Token j of the text is position j + 1; it is predicted from position j.
            let targets: Vec<(usize, i64)> = enc
                .get_offsets()
                .iter()
                .enumerate()
                .filter(|(_, (a, b))| *a < end && *b > start)
                .map(|(j, _)| (j, tokens[j + 1]))
                .collect();
            if targets.is_empty() || tokens.len() > seq + 1 {
                continue;
            }
            rows.push((tokens, targets));
        }
        let answers = rows
            .chunks(fc.batch_size)
            .map(|c| {
                let len = c.iter().map(|(t, _)| t.len() - 1).max().unwrap_or(1);
                AnswerBatch {
                    // Inputs only (the last token is never an input); padded at the end, which a
                    // causal model cannot see from earlier positions.
                    rows: c
                        .iter()
                        .map(|(t, _)| {
                            let mut x = t[..t.len() - 1].to_vec();
                            x.resize(len, 0);
                            x
                        })
                        .collect(),
                    targets: c.iter().map(|(_, g)| g.clone()).collect(),
                }
            })
            .collect();
        let backend =
            crate::device::resolve(ctx.device()).map_err(|e| OpError::Failed(e.to_string()))?;
        let eval_key = blake3::hash(
            serde_json::to_string(&json!({
                "version": Merge::VERSION,
                "fitness": fc,
                "model": cfg,
                "data": data.iter().map(|d| d.digest.to_hex()).collect::<Vec<_>>().join(","),
                "tokenizer": blake3::hash(&tk_bytes).to_hex().to_string(),
                "seed": seed,
                "backend": backend.class.to_string(),
            }))
            .expect("json")
            .as_bytes(),
        )
        .to_hex()
        .to_string();
        Ok(Self {
            ctx,
            device: backend.device.inner(),
            cfg: cfg.clone(),
            fc,
            ppl_batches,
            answers,
            memo: ctx.memo_dir("fitness")?,
            eval_key,
        })
    }

    /// Run one candidate, given as safetensors bytes with `numel` parameters.
    fn measure(&self, bytes: Vec<u8>, numel: usize) -> Result<FitnessReport, String> {
        let device = &self.device;
        let cfg = &self.cfg;
        let mut model = TrmTitansMag::new(cfg, 0, device);
        super::train::load_model(&mut model, bytes, "the candidate").map_err(|e| e.to_string())?;
        let tables = Tables::new(cfg, device);
        let loss = train::eval_loss(&model, &self.ppl_batches, cfg.sup_steps, &tables, device);
        let perplexity = loss.exp();
        let (mut right, mut total) = (0usize, 0usize);
        for b in &self.answers {
            let n = b.rows[0].len();
            let x = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(b.rows.concat(), [b.rows.len(), n]),
                device,
            );
            let pred: Vec<i64> = model
                .forward_logits(x, cfg.sup_steps, &tables)
                .argmax(2)
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| format!("{e:?}"))?;
            for (r, targets) in b.targets.iter().enumerate() {
                total += 1;
                if targets.iter().all(|&(pos, tok)| pred[r * n + pos] == tok) {
                    right += 1;
                }
            }
        }
        let accuracy = right as f64 / total.max(1) as f64;
        let (vx, _) = train::to_tensors(&self.ppl_batches[0], device);
        let infer = model.infer(vx, cfg.act_threshold, self.fc.act_max_steps, &tables);
        let steps: Vec<f64> = infer
            .halting_steps
            .iter()
            .flatten()
            .map(|s| f64::from(*s))
            .collect();
        let avg = steps.iter().sum::<f64>() / steps.len().max(1) as f64;
        let latency = avg * (cfg.cycles * (cfg.n_inner + 1) * cfg.layers) as f64;
        let size_mb = numel as f64 * 4.0 / f64::from(1u32 << 20);
        let w = self.fc.weights.unwrap_or_else(|| fitness_weights(size_mb));
        Ok(FitnessReport {
            fitness: composite(w, perplexity, accuracy, latency, size_mb),
            perplexity,
            accuracy,
            latency,
            size_mb,
        })
    }
}

impl evolve::Evaluator for Fitness<'_> {
    fn evaluate(&self, models: &[&StateDict]) -> Vec<Result<FitnessReport, String>> {
        // Each candidate is serialised once: its digest names its cache entry, and the same
        // bytes load it into the model.
        let bytes: Vec<Vec<u8>> = models.iter().map(|w| w.to_bytes()).collect();
        let paths: Vec<PathBuf> = bytes
            .iter()
            .map(|b| {
                let digest = blake3::hash(b).to_hex();
                self.memo
                    .join(format!("{}-{digest}.json", &self.eval_key[..16]))
            })
            .collect();
        let mut out: Vec<Option<Result<FitnessReport, String>>> = paths
            .iter()
            .map(|path| {
                std::fs::read(path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .map(Ok)
            })
            .collect();
        let todo: Vec<usize> = (0..models.len()).filter(|&i| out[i].is_none()).collect();
        let hits = models.len() - todo.len();
        if hits > 0 {
            self.ctx
                .metric("evolution/fitness_cache_hits", hits as f64, None);
        }
        let threads = (self.ctx.cpus() as usize).clamp(1, todo.len().max(1));
        let t0 = Instant::now();
        let results: Vec<(usize, Result<FitnessReport, String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let mine: Vec<usize> = todo.iter().copied().skip(t).step_by(threads).collect();
                    let bytes = &bytes;
                    s.spawn(move || {
                        mine.into_iter()
                            .map(|i| {
                                let r =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        self.measure(bytes[i].clone(), models[i].numel())
                                    }))
                                    .unwrap_or_else(|_| Err("the forward pass panicked".into()));
                                (i, r)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("evaluation thread"))
                .collect()
        });
        if !todo.is_empty() {
            self.ctx.metric(
                "time/fitness_eval_ms_per_model",
                t0.elapsed().as_secs_f64() * 1000.0 / todo.len() as f64 * threads as f64,
                None,
            );
        }
        for (i, r) in results {
            if let Ok(rep) = &r
                && rep.fitness.is_finite()
            {
                // A cache entry is an optimisation: failing to write one is not an error.
                let _ = forge_cache::atomic::write_atomic(
                    &paths[i],
                    &serde_json::to_vec(rep).expect("json"),
                );
            }
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every candidate evaluated"))
            .collect()
    }
}
