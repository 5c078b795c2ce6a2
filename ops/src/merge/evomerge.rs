//! The `evolve` strategy as a step runs it: the evolution of [`super::evolve`] with a checkpoint
//! after every generation (population weights + state, replaced atomically, so a killed step
//! resumes at its last finished generation and ends with the same champion), its metrics under
//! the seed's `evolution/*`, `final/*` and `parents/*` names, and the champion's
//! `evolution_log.json` and `lineage.json`. Fitness comes from the caller's
//! [`super::evolve::Evaluator`] (running candidates needs the model; this module does not).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::combo;
use super::evolve::{self, EvolveConfig, EvolveState, FitnessReport};
use super::technique::TaskArithmetic;
use super::tensors::StateDict;
use crate::context::{AlertLevel, StepContext};
use crate::error::OpError;

/// What the evolution hands back to the op.
pub struct Outcome {
    pub champion: StateDict,
    pub metrics: Map<String, Value>,
    /// `evolution_log.json` and `lineage.json`.
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// What `config.json` records under `merge`.
    pub record: Value,
}

/// Evolve `parents` over `base` into a champion, resuming from the step's checkpoint.
pub fn run(
    ctx: &StepContext,
    cfg: &EvolveConfig,
    parents: &[StateDict; 3],
    base: &StateDict,
    seed: u64,
    task: TaskArithmetic,
    evaluator: &dyn evolve::Evaluator,
) -> Result<Outcome, OpError> {
    let parent_reports = evaluator
        .evaluate(&parents.iter().collect::<Vec<_>>())
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(OpError::user)?;
    let resume = load_checkpoint(ctx)?;
    if let Some((st, _)) = &resume {
        ctx.log(format!(
            "resuming the evolution after generation {}",
            st.generation
        ));
    }
    let inp = evolve::Inputs {
        parents: [&parents[0], &parents[1], &parents[2]],
        base,
        seed,
        combo: task,
    };
    let (st, champion) = evolve::evolve(cfg, &inp, evaluator, &mut Checkpoints { ctx }, resume)
        .map_err(|e| {
            if ctx.is_cancelled() {
                OpError::Cancelled(e)
            } else {
                OpError::user(e)
            }
        })?;
    let champ = st.node(st.champion()).clone();
    let fit = champ.fitness.clone().expect("the champion was evaluated");
    let metrics = metrics(&st, &champ, &fit, &parent_reports);
    ctx.log(format!(
        "champion #{} ({}) fitness {:.5} vs parents' average {:.5}: {:+.1}%",
        champ.id,
        champ
            .combo
            .as_deref()
            .map(|c| format!("combo {c}"))
            .unwrap_or_else(|| "linear".into()),
        fit.fitness,
        metrics["parents/avg_fitness"].as_f64().unwrap_or(0.0),
        metrics["evolution/improvement_over_parents"]
            .as_f64()
            .unwrap_or(0.0)
            * 100.0
    ));
    let log = json!({
        "generations": st.history,
        "stop_reason": st.stop_reason,
        "parents": parent_reports,
    });
    let files = vec![
        (
            "evolution_log.json",
            serde_json::to_vec_pretty(&log).expect("json"),
        ),
        (
            "lineage.json",
            serde_json::to_vec_pretty(&st.lineage(champ.id)).expect("json"),
        ),
    ];
    Ok(Outcome {
        champion,
        metrics,
        files,
        record: json!({ "strategy": "evolve", "champion": champ.id, "combo": champ.combo }),
    })
}

/// A three-bit combo name (`"101"`) as its id.
pub fn parse_combo(s: &str) -> Option<u8> {
    (s.len() == 3 && s.bytes().all(|b| b == b'0' || b == b'1'))
        .then(|| u8::from_str_radix(s, 2).ok())
        .flatten()
}

/// The evolution's metrics, in a fixed order.
fn metrics(
    st: &EvolveState,
    champ: &evolve::Node,
    fit: &FitnessReport,
    parents: &[FitnessReport],
) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    let parent_avg = parents.iter().map(|r| r.fitness).sum::<f64>() / parents.len() as f64;
    let improvement = (fit.fitness - parent_avg) / parent_avg;
    let initial = st.history[0].best_fitness;
    for (i, r) in parents.iter().enumerate() {
        put(&format!("parents/{i}/fitness"), json!(r.fitness));
        put(&format!("parents/{i}/perplexity"), json!(r.perplexity));
        put(&format!("parents/{i}/accuracy"), json!(r.accuracy));
        put(&format!("parents/{i}/latency"), json!(r.latency));
    }
    put("parents/avg_fitness", json!(parent_avg));
    let best = parents.iter().map(|r| r.fitness).fold(f64::MIN, f64::max);
    put("parents/best_fitness", json!(best));
    put("final/best_fitness", json!(fit.fitness));
    put("final/perplexity", json!(fit.perplexity));
    put("final/accuracy", json!(fit.accuracy));
    put("final/latency", json!(fit.latency));
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
        json!((fit.fitness - initial) / initial),
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
    m
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
                AlertLevel::Info,
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
            .ok_or_else(|| OpError::infra(format!("the checkpoint lacks {name}")))?;
        pop.push(StateDict::from_bytes(&bytes).map_err(|e| OpError::infra(e.to_string()))?);
    }
    Ok(Some((st, pop)))
}
