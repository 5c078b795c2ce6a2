//! The `evolve` strategy as a step runs it: the evolution of [`super::evolve`] with a checkpoint
//! after every generation (its state, replaced atomically, so a killed step resumes at its last
//! finished generation and ends with the same champion), its metrics under the seed's
//! `evolution/*`, `final/*` and `parents/*` names plus `base/*` and the parents' linear mode
//! connectivity (`lmc/*`), and the champion's `evolution_log.json` and `lineage.json`. Fitness
//! comes from the caller's [`super::evolve::Evaluator`] (running candidates needs the model;
//! this module does not).

use serde_json::{Map, Value, json};

use super::evolve::{self, EvolveConfig, EvolveState, FitnessReport};
use super::technique::TaskArithmetic;
use super::tensors::StateDict;
use crate::context::{AlertLevel, StepContext};
use crate::error::OpError;

/// The metrics [`run`] writes, as patterns (`*` is one name segment).
pub const METRICS: &[&str] = &[
    "parents/*/fitness",
    "parents/*/perplexity",
    "parents/*/accuracy",
    "parents/*/latency",
    "parents/avg_fitness",
    "parents/best_fitness",
    "base/fitness",
    "base/perplexity",
    "lmc/barrier_*",
    "lmc/max_barrier",
    "final/best_fitness",
    "final/perplexity",
    "final/accuracy",
    "final/latency",
    "final/fitness_improvement",
    "final/generations_completed",
    "final/candidates_evaluated",
    "final/champion_combo_id",
    "final/best_combo",
    "final/convergence_reason",
    "evolution/fitness_improvement",
    "evolution/improvement_over_parents",
    "evolution/improvement_over_pool",
];

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
    let resume = ctx.load_checkpoint_json::<EvolveState>("evolve.json")?;
    if let Some(st) = &resume {
        ctx.log(format!(
            "resuming the evolution after generation {}",
            st.generation
        ));
    }
    let inp = evolve::Inputs {
        parents: [&parents[0], &parents[1], &parents[2]],
        base,
        seed,
        task,
    };
    let (st, champion) = evolve::evolve(
        cfg,
        &inp,
        evaluator,
        &mut Checkpoints {
            ctx,
            generations: cfg.generations,
        },
        resume,
    )
    .map_err(|e| {
        if ctx.is_cancelled() {
            OpError::Cancelled(e)
        } else {
            OpError::user(e)
        }
    })?;
    let champ = st.node(st.champion()).clone();
    let metrics = metrics(&st, &champ);
    ctx.log(format!(
        "champion #{} ({}) fitness {:.5} vs parents' average {:.5}: {:+.1}%",
        champ.id,
        champ.kind,
        champ.fitness_value(),
        metrics["parents/avg_fitness"].as_f64().unwrap_or(0.0),
        metrics["evolution/improvement_over_parents"]
            .as_f64()
            .unwrap_or(0.0)
            * 100.0
    ));
    let log = json!({
        "generations": st.history,
        "stop_reason": st.stop_reason,
        "candidates": st.nodes,
    });
    let files = vec![
        (
            "evolution_log.json",
            serde_json::to_vec_pretty(&log).expect("json"),
        ),
        (
            "lineage.json",
            serde_json::to_vec_pretty(&json!({ "champion": champ, "inputs": st.pool("input").collect::<Vec<_>>(), "base": st.pool("base").collect::<Vec<_>>() })).expect("json"),
        ),
    ];
    Ok(Outcome {
        champion,
        metrics,
        files,
        record: json!({ "strategy": "evolve", "champion": champ.id, "kind": champ.kind, "recipe": champ.recipe }),
    })
}

/// A three-bit combo name (`"101"`) as its id.
pub fn parse_combo(s: &str) -> Option<u8> {
    (s.len() == 3 && s.bytes().all(|b| b == b'0' || b == b'1'))
        .then(|| u8::from_str_radix(s, 2).ok())
        .flatten()
}

/// The evolution's metrics, in a fixed order.
fn metrics(st: &EvolveState, champ: &evolve::Node) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    let report = |n: &evolve::Node| {
        n.fitness.clone().unwrap_or(FitnessReport {
            fitness: f64::NAN,
            perplexity: f64::NAN,
            accuracy: f64::NAN,
            latency: f64::NAN,
            size_mb: f64::NAN,
        })
    };
    let parents: Vec<FitnessReport> = st.pool("input").map(report).collect();
    let fit = report(champ);
    let parent_avg = parents.iter().map(|r| r.fitness).sum::<f64>() / parents.len() as f64;
    let improvement = (fit.fitness - parent_avg) / parent_avg;
    for (i, r) in parents.iter().enumerate() {
        put(&format!("parents/{i}/fitness"), json!(r.fitness));
        put(&format!("parents/{i}/perplexity"), json!(r.perplexity));
        put(&format!("parents/{i}/accuracy"), json!(r.accuracy));
        put(&format!("parents/{i}/latency"), json!(r.latency));
    }
    put("parents/avg_fitness", json!(parent_avg));
    let best = parents.iter().map(|r| r.fitness).fold(f64::MIN, f64::max);
    put("parents/best_fitness", json!(best));
    if let Some(b) = st.pool("base").next().map(report) {
        put("base/fitness", json!(b.fitness));
        put("base/perplexity", json!(b.perplexity));
    }
    let barriers = evolve::lmc_barriers(st);
    for (pair, b) in &barriers {
        put(&format!("lmc/barrier_{pair}"), json!(b));
    }
    put(
        "lmc/max_barrier",
        json!(barriers.values().copied().fold(f64::MIN, f64::max)),
    );
    put("final/best_fitness", json!(fit.fitness));
    put("final/perplexity", json!(fit.perplexity));
    put("final/accuracy", json!(fit.accuracy));
    put("final/latency", json!(fit.latency));
    put("final/fitness_improvement", json!(improvement));
    put("final/generations_completed", json!(st.generation));
    put("final/candidates_evaluated", json!(st.nodes.len()));
    put(
        "final/champion_combo_id",
        json!(champ.combo().and_then(parse_combo)),
    );
    put("final/best_combo", json!(champ.combo()));
    put("final/convergence_reason", json!(st.stop_reason));
    let pool_best = st.history[0].best_fitness;
    put(
        "evolution/fitness_improvement",
        json!((fit.fitness - pool_best) / pool_best),
    );
    put("evolution/improvement_over_parents", json!(improvement));
    put(
        "evolution/improvement_over_pool",
        json!((fit.fitness - pool_best) / pool_best),
    );
    m
}

/// Generation checkpoints: the evolution's state (candidates are rebuilt from their recipes).
struct Checkpoints<'a> {
    ctx: &'a StepContext,
    /// The most generations the search runs (it may stop earlier, on `patience`).
    generations: u32,
}

impl evolve::Hooks for Checkpoints<'_> {
    fn generation_done(&mut self, st: &EvolveState) -> Result<(), String> {
        let g = st.history.last().expect("a generation");
        let ctx = self.ctx;
        let step = Some(u64::from(st.generation));
        let first = st.history[0].best_fitness;
        for (k, v) in [
            ("evolution/generation", f64::from(st.generation)),
            ("evolution/best_fitness", g.best_fitness),
            ("evolution/avg_fitness", g.avg_fitness),
            ("evolution/worst_fitness", g.worst_fitness),
            ("evolution/fitness_std", g.fitness_std),
            ("evolution/diversity", g.diversity),
            ("evolution/sigma", g.sigma),
            (
                "evolution/fitness_improvement",
                (g.best_fitness - first) / first,
            ),
        ] {
            ctx.metric(k, v, step);
        }
        for n in st.nodes.iter().filter(|n| n.generation == st.generation) {
            if let Some(note) = &n.note {
                ctx.alert(
                    AlertLevel::Info,
                    format!("generation {}: candidate {}: {note}", st.generation, n.id),
                );
            }
        }
        ctx.save_checkpoint_json("evolve.json", st)
            .map_err(|e| e.to_string())?;
        ctx.progress(
            u64::from(st.generation),
            Some(u64::from(self.generations)),
            "generations",
        );
        ctx.check_cancelled().map_err(|e| e.to_string())
    }
}
