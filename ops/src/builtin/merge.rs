//! `merge`: Phase 2 (EvoMerge). Three strategies over `models` (forge model artifacts):
//!
//! - `merge`: one technique (`technique: { method: linear | slerp | ties | dare | frankenmerge
//!   | routing, … }`), streamed file to file (`merge::files`);
//! - `combo`: one of the eight three-stage combos (`combo: "101"`) of exactly three models over
//!   the `base` (the Phase-1 shared initialisation; `merge::combo`);
//! - `evolve`: CMA-ES over task-arithmetic recipes (`merge::evolve`, run by `merge::evomerge`)
//!   from a generation-0 pool of the inputs, the base, single-technique merges, midpoints and the
//!   eight combos, with fitness from running every candidate under ACT on the `val` split of
//!   `data` (`eval::fitness`); the champion is then reported once on the `test` split beside
//!   each input, the base and the optional `control` model.
//!
//! Output `model`: `model.safetensors` (canonical F32), `config.json` (the first model's, with
//! the merge recorded; layer counts updated when a frankenmerge changes depth), `tokenizer.json`,
//! `metrics.json`, and for `evolve` also `evolution_log.json` (every candidate with its recipe and
//! fitness; per generation best/avg/worst fitness, std, diversity, step size, champion) and
//! `lineage.json` (the champion's ancestry).

use std::path::{Path, PathBuf};
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::artifact::{
    ArtifactKind, InputArtifact, InputSignature, InputSpec, OutputSpec, StepInputs,
};
use crate::context::{AlertLevel, StepContext};
use crate::device;
use crate::error::{OpError, ParamsError};
use crate::eval::fitness::{Contender, EvalData, Fitness, FitnessConfig};
use crate::merge::combo;
use crate::merge::evolve::EvolveConfig;
use crate::merge::evomerge::{self, parse_combo};
use crate::merge::files::{STOPPED, merge_files_watched};
use crate::merge::technique::{TaskArithmetic, Technique};
use crate::merge::tensors::{StateDict, TensorFile, TensorInfo};
use crate::model::files::{self, ModelFiles};
use crate::op::{Resources, StepOutcome, TypedOp};

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
    /// arithmetic (0 dare, 1 ties), selection (0 frankenmerge, 1 routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combo: Option<String>,
    /// The combos' second stage (and the evolution's): task arithmetic over the base.
    #[serde(default)]
    pub task: TaskArithmetic,
    #[serde(default)]
    pub evolve: EvolveConfig,
    #[serde(default)]
    pub fitness: FitnessConfig,
}

pub struct Merge;

impl TypedOp for Merge {
    type Params = MergeParams;
    const NAME: &'static str = "merge";
    /// 2: the model's fused ops change fitness rounding on libtorch (at::silu).
    /// 3: masks, routings, mutations and fitness batches from the `rng` streams of the step's seed.
    /// 4: fitness under ACT without constant terms, CMA-ES evolution, the test-split report.
    /// 5: the accuracy term is the expected answer accuracy by default (`fitness.accuracy`), and
    ///    the test report adds it.
    const VERSION: u32 = 6;
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
                    .with_hint("combo: \"101\" is SLERP + DARE + Routing; 000–111"));
                }
            }
            Strategy::Evolve => {
                if let Some(problem) = p.evolve.problem() {
                    return Err(ParamsError::at(&["evolve"], problem));
                }
                if let Some(problem) = p.fitness.problem() {
                    return Err(ParamsError::at(&["fitness"], problem));
                }
            }
        }
        if let Some(problem) = p.task.problem() {
            return Err(ParamsError::at(&["task"], problem));
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
            // The compute-matched control the champion is reported against (evolve).
            InputSpec::one("control", &[ArtifactKind::Model]).required(false),
        ])
    }

    fn metrics(&self, p: &MergeParams) -> Option<Vec<String>> {
        let names: &[&str] = match p.strategy {
            Strategy::Merge => &["merge/technique", "merge/parameters"],
            Strategy::Combo => &["merge/combo"],
            Strategy::Evolve => evomerge::METRICS,
        };
        let test: &[&str] = match p.strategy {
            Strategy::Evolve => crate::eval::fitness::TEST_REPORT_METRICS,
            _ => &[],
        };
        let fitness: &[&str] = match p.strategy {
            Strategy::Evolve => &[
                "fitness/records",
                "fitness/answers",
                "fitness/answer_step",
                "fitness/answer_step_relative",
            ],
            _ => &[],
        };
        let all = names
            .iter()
            .chain(test)
            .chain(fitness)
            .chain(&["final/total_params"]);
        Some(all.map(|m| (*m).to_string()).collect())
    }

    fn outputs(&self, _p: &MergeParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "model".into(),
            kind: ArtifactKind::Model,
        }]
    }

    fn backend_class(&self, p: &MergeParams, device: &str) -> Option<String> {
        // Only the evolution runs the model; a plain merge is backend-independent arithmetic.
        (p.strategy == Strategy::Evolve).then(|| device::key_class(device))
    }

    fn default_resources(&self, p: &MergeParams) -> Resources {
        Resources {
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
        let first = &inputs["models"][0];
        let mut config = files::read_config(&first.path)?;
        let out = ctx.output_dir("model")?;
        let merge = Strategies {
            ctx,
            p,
            inputs,
            // DARE masks, combo routings, search samples: streams of the step's seed.
            seed: ctx.seed(),
            out: out.join("model.safetensors"),
        };
        let mut merged = match p.strategy {
            Strategy::Merge => merge.technique()?,
            Strategy::Combo => merge.combo()?,
            Strategy::Evolve => merge.evolve(&config)?,
        };
        // Depth may have changed (frankenmerge): keep the model config in step with the weights.
        let file = TensorFile::open(&merge.out).map_err(|e| OpError::internal(e.to_string()))?;
        crate::merge::layers::sync_config(&mut config, file.tensors().keys().map(String::as_str));
        let params: usize = file.tensors().values().map(TensorInfo::numel).sum();
        config["num_parameters"] = json!(params);
        config["merge"] = merged.record;
        merged
            .metrics
            .insert("final/total_params".into(), json!(params));
        let tk = first.path.join("tokenizer.json");
        let files = ModelFiles {
            weights: None,
            config: &config,
            tokenizer: tk.exists().then_some(tk.as_path()),
            metrics: &merged.metrics,
            extra: &merged.files,
        };
        files::write(&out, &files)?;
        Ok(StepOutcome {
            metrics: merged.metrics,
        })
    }
}

/// What a strategy wrote besides the weights.
struct Merged {
    metrics: Map<String, Value>,
    files: Vec<(&'static str, Vec<u8>)>,
    /// What `config.json` records under `merge`.
    record: Value,
}

/// The three strategies, each writing the merged weights to `out`.
struct Strategies<'a> {
    ctx: &'a StepContext,
    p: &'a MergeParams,
    inputs: &'a StepInputs,
    seed: u64,
    out: PathBuf,
}

impl Strategies<'_> {
    fn models(&self) -> &[InputArtifact] {
        &self.inputs["models"]
    }
    fn base(&self) -> Result<StateDict, OpError> {
        load(self.inputs["base"].first().expect("required at plan time"))
    }

    /// `strategy: merge`: one technique, streamed file to file.
    fn technique(&self) -> Result<Merged, OpError> {
        let t = self.p.technique.as_ref().expect("checked at plan time");
        let paths: Vec<PathBuf> = self.models().iter().map(weights_of).collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let base = self
            .inputs
            .get("base")
            .and_then(|b| b.first())
            .map(weights_of);
        let t0 = Instant::now();
        // Progress per tensor; Ctrl-C stops before the next one.
        let ctx = self.ctx;
        let mut keep_going = |done: usize, total: usize| {
            ctx.progress(done as u64, Some(total as u64), "tensors");
            !ctx.is_cancelled()
        };
        let stats = merge_files_watched(
            t,
            &refs,
            base.as_deref(),
            &self.out,
            self.seed,
            &mut keep_going,
        )
        .map_err(|e| {
            if e == STOPPED {
                ctx.cancellation()
            } else {
                OpError::user(e)
            }
        })?;
        self.ctx.log(format!(
            "{}: {} tensors, {} parameters in {:.2}s",
            t.name(),
            stats.tensors,
            stats.parameters,
            t0.elapsed().as_secs_f64()
        ));
        Ok(Merged {
            metrics: Map::from_iter([
                ("merge/technique".to_string(), json!(t.name())),
                ("merge/parameters".to_string(), json!(stats.parameters)),
            ]),
            files: vec![],
            record: json!({ "strategy": "merge", "technique": t }),
        })
    }

    /// `strategy: combo`: one of the eight combos of three models over the base.
    fn combo(&self) -> Result<Merged, OpError> {
        let k = parse_combo(self.p.combo.as_deref().expect("checked")).expect("checked");
        let ms = three(self.models(), "a combo")?;
        let base = self.base()?;
        let refs = [&ms[0], &ms[1], &ms[2]];
        let fallback = || combo::linear_merge(&refs);
        let (w, outcome) =
            combo::apply_or_fallback(k, refs, &base, self.seed, &self.p.task, &fallback)
                .map_err(OpError::user)?;
        let recipe = outcome
            .map_err(|note| self.ctx.alert(AlertLevel::Warn, note))
            .ok();
        files::write_file(&self.out, &w.to_bytes())?;
        Ok(Merged {
            metrics: Map::from_iter([("merge/combo".to_string(), json!(combo::bits(k)))]),
            files: vec![],
            record: json!({ "strategy": "combo", "combo": combo::bits(k), "techniques": combo::describe(k), "recipe": recipe }),
        })
    }

    /// `strategy: evolve`: the evolution, with fitness measured on the `data` inputs.
    fn evolve(&self, config: &Value) -> Result<Merged, OpError> {
        let (ctx, p) = (self.ctx, self.p);
        let models = self.models();
        let parents = three(models, "evolution")?;
        let cfg = files::model_config(config, &models[0].path)?;
        let data = EvalData::load(&models[0].path.join("tokenizer.json"), &self.inputs["data"])?;
        let fitness = Fitness::prepare(ctx, &p.fitness, &cfg, &data, parents[0].numel())?;
        let (base, task) = (self.base()?, p.task);
        let mut o = evomerge::run(ctx, &p.evolve, &parents, &base, self.seed, task, &fitness)?;
        let parents_avg = o.metrics["parents/avg_fitness"].as_f64().unwrap_or(0.0);
        o.metrics.extend(fitness.sensitivity(parents_avg));
        let champion = o.champion.to_bytes();
        files::write_file(&self.out, &champion)?;
        // The champion once on the test split, beside everything it should beat.
        let mut contenders = vec![Contender {
            prefix: "final".into(),
            weights: champion,
        }];
        for (i, parent) in parents.iter().enumerate() {
            contenders.push(Contender {
                prefix: format!("parents/{i}"),
                weights: parent.to_bytes(),
            });
        }
        contenders.push(Contender {
            prefix: "base".into(),
            weights: base.to_bytes(),
        });
        if let Some(control) = self.inputs.get("control").and_then(|c| c.first()) {
            contenders.push(Contender {
                prefix: "control".into(),
                weights: load(control)?.to_bytes(),
            });
        }
        o.metrics
            .extend(fitness.test_report(&contenders, self.seed)?);
        Ok(Merged {
            metrics: o.metrics,
            files: o.files,
            record: o.record,
        })
    }
}

fn weights_of(a: &InputArtifact) -> PathBuf {
    a.path.join("model.safetensors")
}

fn load(a: &InputArtifact) -> Result<StateDict, OpError> {
    let path = weights_of(a);
    StateDict::from_bytes(&std::fs::read(&path).map_err(|e| OpError::io(&path, e))?)
        .map_err(|e| OpError::user(format!("{}: {e}", path.display())))
}

fn three(models: &[InputArtifact], what: &str) -> Result<[StateDict; 3], OpError> {
    if models.len() != 3 {
        return Err(OpError::user(format!(
            "{what} merges exactly 3 models; `models` has {}",
            models.len()
        )));
    }
    Ok([load(&models[0])?, load(&models[1])?, load(&models[2])?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

    #[test]
    fn each_strategy_names_what_it_needs() {
        let e = Merge
            .parse_params(&json!({ "strategy": "merge" }))
            .unwrap_err();
        assert_eq!(e.path, ["technique"]);
        let e = Merge
            .parse_params(&json!({ "strategy": "combo", "combo": "12" }))
            .unwrap_err();
        assert_eq!(e.path, ["combo"]);
        let e = Merge
            .parse_params(
                &json!({ "strategy": "combo", "combo": "101", "task": { "density": 1.5 } }),
            )
            .unwrap_err();
        assert_eq!(e.path, ["task"]);
        // Task arithmetic needs a base; linear does not; the evolution needs data too.
        let needs = |params: Value| {
            let p = Merge.parse_params(&params).unwrap();
            let InputSignature::Fixed(specs) = Op::inputs(&Merge, &p) else {
                panic!("fixed inputs")
            };
            specs
                .into_iter()
                .filter(|s| s.required)
                .map(|s| s.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            needs(json!({ "strategy": "merge", "technique": { "method": "linear" } })),
            ["models"]
        );
        assert_eq!(
            needs(json!({ "strategy": "merge", "technique": { "method": "ties" } })),
            ["models", "base"]
        );
        assert_eq!(needs(json!({})), ["models", "base", "data"]);
    }

    #[test]
    fn the_combos_task_arithmetic_has_the_techniques_defaults() {
        let p = Merge
            .parse_params(&json!({ "strategy": "combo", "combo": "000" }))
            .unwrap();
        let p = p.typed::<MergeParams>().unwrap();
        assert_eq!(p.task, TaskArithmetic::default());
        let ties: Technique = serde_json::from_value(json!({ "method": "ties" })).unwrap();
        assert_eq!(
            ties.task().unwrap().density,
            TaskArithmetic::default().density
        );
    }
}
