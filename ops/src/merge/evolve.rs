//! `strategy: evolve`: EvoMerge's search for a champion among merges of three models over their
//! shared base.
//!
//! **Generation 0** is a pool of every merge worth trying first, each built and evaluated:
//! the three parents themselves, the base, the single-technique merges (linear, TIES and DARE
//! with the step's task-arithmetic settings), the midpoint of every pair of parents (which also
//! measures their linear mode connectivity), and the seed plan's eight three-stage combos (each
//! checked, and replaced by the linear merge when degenerate).
//!
//! **Later generations** search the continuous parameters of a task-arithmetic merge — each
//! parent's weight, λ and (for TIES and DARE) the density, in `search` — with CMA-ES
//! ([`super::cmaes`]), as mergekit-evolve does: every generation samples `population`
//! parameter sets, merges and evaluates them, and moves the search distribution toward the
//! fitter ones. The champion is the fittest candidate of the whole run. The evolution stops
//! after `generations`, or early when the best fitness has not improved by a relative
//! `min_improvement` for `patience` generations.
//!
//! Every candidate is a [`Recipe`], so the state that is checkpointed after each generation is
//! small (no weights): a killed run resumes at its last finished generation, rebuilds what it
//! needs from recipes, and ends with the same champion, bytes included.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cmaes::{CmaEs, Sample};
use super::combo::{self, ComboRecipe, bits};
use super::methods::{Rescale, Sparsify, linear, task_arithmetic};
use super::technique::TaskArithmetic;
use super::tensors::StateDict;
use crate::rng::{Stream, stream};

/// Settings of the evolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvolveConfig {
    /// Generations of the search after the generation-0 pool.
    #[serde(default = "d::generations")]
    pub generations: u32,
    /// Candidates the search samples per generation (CMA-ES's λ, at least 2).
    #[serde(default = "d::population")]
    pub population: usize,
    /// Initial step size of the search, in its logit coordinates.
    #[serde(default = "d::sigma")]
    pub sigma: f64,
    /// The task arithmetic the search tunes.
    #[serde(default)]
    pub search: SearchMethod,
    /// Stop after this many generations without a relative improvement of `min_improvement`.
    #[serde(default = "d::patience")]
    pub patience: u32,
    /// Relative improvement of the best fitness that counts as progress for `patience`.
    #[serde(default = "d::min_improvement")]
    pub min_improvement: f64,
}

/// Which task arithmetic the search tunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum SearchMethod {
    /// Plain task arithmetic: base + λ · Σ wᵢτᵢ / Σ wᵢ (no sparsification; density unused).
    #[default]
    Linear,
    /// TIES: magnitude trim and sign election (deterministic).
    Ties,
    /// DARE: random drop with 1/density rescaling.
    Dare,
}

mod d {
    pub fn generations() -> u32 {
        50
    }
    pub fn population() -> usize {
        8
    }
    pub fn sigma() -> f64 {
        1.0
    }
    pub fn patience() -> u32 {
        5
    }
    pub fn min_improvement() -> f64 {
        0.001
    }
}

impl Default for EvolveConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl EvolveConfig {
    /// Why these settings cannot run, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.population < 2 {
            return Some("population must be at least 2".into());
        }
        (!(self.sigma > 0.0 && self.sigma.is_finite())).then(|| "sigma must be positive".into())
    }
}

/// What evaluating one candidate measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitnessReport {
    pub fitness: f64,
    pub perplexity: f64,
    pub accuracy: f64,
    /// Cost of inference (the evaluator's unit, e.g. block passes per token).
    pub latency: f64,
    pub size_mb: f64,
}

/// Runs candidates. Implementations may cache and parallelise; results come back in order.
pub trait Evaluator {
    fn evaluate(&self, models: &[&StateDict]) -> Vec<Result<FitnessReport, String>>;
    /// Whether the last `evaluate` was cut short (cancelled): its results are then incomplete,
    /// and the evolution stops without recording the generation, so a resume redoes it whole.
    fn stopped(&self) -> bool {
        false
    }
}

/// How a candidate's weights are made from the inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Recipe {
    /// Input model `index` (0–2) as it is.
    Input { index: usize },
    /// The shared base.
    Base,
    /// Σ wᵢθᵢ / Σ wᵢ of input models `models`.
    Linear {
        models: Vec<usize>,
        weights: Vec<f64>,
    },
    /// Task arithmetic over the base: TIES or DARE with these weights, density and λ.
    Task {
        method: SearchMethod,
        weights: [f64; 3],
        density: f64,
        /// λ of the recursive blocks' tensors (`blocks.*`).
        lambda: f64,
        /// λ of every other tensor (embedding, halting head, output norm, initial states);
        /// `None`: the same as `lambda`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lambda_rest: Option<f64>,
        seed: u64,
    },
    /// A three-stage combo of the input models.
    Combo {
        combo: String,
        seed: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layers: Option<ComboRecipe>,
    },
}

/// One candidate ever made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: u64,
    pub generation: u32,
    /// `input`, `base`, `technique`, `midpoint`, `combo`, `search` or `fallback`.
    pub kind: String,
    pub recipe: Recipe,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitness: Option<FitnessReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Node {
    pub fn fitness_value(&self) -> f64 {
        self.fitness
            .as_ref()
            .map(|f| f.fitness)
            .filter(|f| f.is_finite())
            .unwrap_or(f64::NEG_INFINITY)
    }
    /// The combo this node is, if it is one.
    pub fn combo(&self) -> Option<&str> {
        match &self.recipe {
            Recipe::Combo { combo, .. } if self.kind == "combo" => Some(combo),
            _ => None,
        }
    }
}

/// One generation of the evolution log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u32,
    /// The best fitness so far, over every generation.
    pub best_fitness: f64,
    /// This generation's candidates.
    pub avg_fitness: f64,
    pub worst_fitness: f64,
    pub fitness_std: f64,
    pub generation_best: f64,
    /// Mean pairwise cosine distance of this generation's candidates.
    pub diversity: f64,
    pub candidates: usize,
    pub champion_id: u64,
    pub champion_kind: String,
    /// The search's step size after this generation.
    pub sigma: f64,
}

/// Everything needed to continue after a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvolveState {
    pub generation: u32,
    pub nodes: Vec<Node>,
    pub history: Vec<Generation>,
    pub search: CmaEs,
    pub best_fitness: f64,
    pub stale: u32,
    pub stop_reason: Option<String>,
}

impl EvolveState {
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize]
    }
    /// The fittest candidate so far (ties: the earlier one).
    pub fn champion(&self) -> u64 {
        self.nodes
            .iter()
            .fold(None::<&Node>, |best, n| match best {
                Some(b) if b.fitness_value() >= n.fitness_value() => Some(b),
                _ => Some(n),
            })
            .map(|n| n.id)
            .unwrap_or(0)
    }
    /// The nodes of generation 0 of `kind`.
    pub fn pool(&self, kind: &str) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .filter(move |n| n.generation == 0 && n.kind == kind)
    }
}

/// Called after each generation with the state (checkpoint, metrics, cancellation).
pub trait Hooks {
    fn generation_done(&mut self, state: &EvolveState) -> Result<(), String>;
}

/// The name prefix of the recursive blocks' tensors, which the search scales with their own λ.
pub const BLOCKS: &str = "blocks.";

/// The inputs an evolution runs on.
pub struct Inputs<'a> {
    pub parents: [&'a StateDict; 3],
    pub base: &'a StateDict,
    pub seed: u64,
    /// The task-arithmetic settings of the generation-0 merges and combos.
    pub task: TaskArithmetic,
}

/// The search's coordinates → a task-arithmetic recipe: weights and density through a logistic,
/// one λ in (0, 3) for the blocks and one for the other tensors (`linear` has no density: it
/// keeps every entry). Two λ because the two groups extrapolate differently: on the tiny
/// pipeline, λ = 2 on every tensor raised validation perplexity from 8.4 to 15.7, all of it from
/// the blocks, while λ = 3 on the other tensors alone lowered it to 8.1.
fn genome(method: SearchMethod, x: &[f64], seed: u64) -> Recipe {
    let s = |v: f64| 1.0 / (1.0 + (-v).exp());
    Recipe::Task {
        method,
        weights: [s(x[0]), s(x[1]), s(x[2])],
        density: match method {
            SearchMethod::Linear => 1.0,
            _ => 0.1 + 0.9 * s(x[3]),
        },
        lambda: 3.0 * s(x[4]),
        lambda_rest: Some(3.0 * s(x[5])),
        seed,
    }
}

/// The search's starting point: equal weights, density 0.5, both λ 1.
fn genome_start() -> Vec<f64> {
    let logit = |p: f64| (p / (1.0 - p)).ln();
    vec![
        0.0,
        0.0,
        0.0,
        logit(0.4 / 0.9),
        logit(1.0 / 3.0),
        logit(1.0 / 3.0),
    ]
}

/// The weights of `recipe`.
pub fn build(recipe: &Recipe, inp: &Inputs<'_>) -> Result<StateDict, String> {
    let p = inp.parents;
    match recipe {
        Recipe::Input { index } => Ok(p[*index].clone()),
        Recipe::Base => Ok(inp.base.clone()),
        Recipe::Linear { models, weights } => {
            let ms: Vec<&StateDict> = models.iter().map(|&i| p[i]).collect();
            StateDict::zip_map(&ms, |_, xs| linear(xs, weights, true))
        }
        Recipe::Task {
            method,
            weights,
            density,
            lambda,
            lambda_rest,
            seed,
        } => {
            let (how, density) = match method {
                SearchMethod::Ties => (Sparsify::Ties, *density),
                SearchMethod::Dare => (
                    Sparsify::Dare {
                        rescale: Rescale::Inverse,
                        seed: *seed,
                    },
                    *density,
                ),
                // DARE at density 1 drops nothing: the plain weighted mean of the task vectors.
                SearchMethod::Linear => (
                    Sparsify::Dare {
                        rescale: Rescale::None,
                        seed: *seed,
                    },
                    1.0,
                ),
            };
            let all = [inp.base, p[0], p[1], p[2]];
            StateDict::zip_map(&all, |name, xs| {
                let lambda = match lambda_rest {
                    Some(rest) if !name.starts_with(BLOCKS) => *rest,
                    _ => *lambda,
                };
                task_arithmetic(name, xs[0], &xs[1..], weights, density, lambda, true, how)
            })
        }
        Recipe::Combo { combo, seed, .. } => {
            let k = u8::from_str_radix(combo, 2).map_err(|e| e.to_string())?;
            combo::apply(k, p, inp.base, *seed, &inp.task).map(|(w, _)| w)
        }
    }
}

/// The generation-0 pool's recipes, in id order.
fn pool(inp: &Inputs<'_>) -> Vec<(String, Recipe)> {
    let t = &inp.task;
    let mut v: Vec<(String, Recipe)> = (0..3)
        .map(|index| ("input".into(), Recipe::Input { index }))
        .collect();
    v.push(("base".into(), Recipe::Base));
    v.push((
        "technique".into(),
        Recipe::Linear {
            models: vec![0, 1, 2],
            weights: vec![1.0; 3],
        },
    ));
    for method in [SearchMethod::Ties, SearchMethod::Dare] {
        v.push((
            "technique".into(),
            Recipe::Task {
                method,
                weights: [1.0; 3],
                density: t.density,
                lambda: t.lambda,
                lambda_rest: None,
                seed: inp.seed,
            },
        ));
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        v.push((
            "midpoint".into(),
            Recipe::Linear {
                models: vec![a, b],
                weights: vec![1.0, 1.0],
            },
        ));
    }
    for k in 0..8u8 {
        v.push((
            "combo".into(),
            Recipe::Combo {
                combo: bits(k),
                seed: inp.seed ^ (u64::from(k) << 32),
                layers: None,
            },
        ));
    }
    v
}

/// Build candidates (a combo that fails or is degenerate becomes the linear merge, noted) and
/// evaluate them; returns their ids.
fn add_generation(
    st: &mut EvolveState,
    inp: &Inputs<'_>,
    evaluator: &dyn Evaluator,
    generation: u32,
    candidates: Vec<(String, Recipe)>,
) -> Result<(Vec<u64>, f64), String> {
    let mut built = Vec::new();
    let mut ids = Vec::new();
    for (kind, recipe) in candidates {
        let (kind, recipe, note, w) = if let Recipe::Combo { combo, seed, .. } = &recipe {
            let k = u8::from_str_radix(combo, 2).map_err(|e| e.to_string())?;
            let fallback = || combo::linear_merge(&inp.parents);
            let (w, outcome) =
                combo::apply_or_fallback(k, inp.parents, inp.base, *seed, &inp.task, &fallback)?;
            match outcome {
                Ok(layers) => (
                    kind,
                    Recipe::Combo {
                        combo: combo.clone(),
                        seed: *seed,
                        layers: Some(layers),
                    },
                    None,
                    w,
                ),
                Err(note) => (
                    "fallback".to_string(),
                    Recipe::Linear {
                        models: vec![0, 1, 2],
                        weights: vec![1.0; 3],
                    },
                    Some(note),
                    w,
                ),
            }
        } else {
            let w = build(&recipe, inp)?;
            let note = combo::degenerate(&w, &inp.parents);
            (kind, recipe, note, w)
        };
        let id = st.nodes.len() as u64;
        st.nodes.push(Node {
            id,
            generation,
            kind,
            recipe,
            fitness: None,
            note,
        });
        ids.push(id);
        built.push(w);
    }
    let reports = evaluator.evaluate(&built.iter().collect::<Vec<_>>());
    if evaluator.stopped() {
        return Err("cancelled while evaluating candidates".into());
    }
    for (&id, r) in ids.iter().zip(reports) {
        let node = &mut st.nodes[id as usize];
        match r {
            Ok(r) => node.fitness = Some(r),
            Err(e) => node.note = Some(format!("unusable: {e}")),
        }
    }
    Ok((ids, diversity(&built.iter().collect::<Vec<_>>())))
}

/// Log generation `g` (its candidates `ids`) and decide whether to stop.
fn log_generation(st: &mut EvolveState, cfg: &EvolveConfig, g: u32, ids: &[u64], diversity: f64) {
    let fits: Vec<f64> = ids.iter().map(|&i| st.node(i).fitness_value()).collect();
    let finite: Vec<f64> = fits.iter().copied().filter(|f| f.is_finite()).collect();
    let n = finite.len().max(1) as f64;
    let avg = finite.iter().sum::<f64>() / n;
    let std = (finite.iter().map(|f| (f - avg).powi(2)).sum::<f64>() / n).sqrt();
    let champion = st.champion();
    let best = st.node(champion).fitness_value();
    if !st.best_fitness.is_finite()
        || best > st.best_fitness + cfg.min_improvement * st.best_fitness.abs()
    {
        st.best_fitness = best;
        st.stale = 0;
    } else {
        st.stale += 1;
    }
    st.history.push(Generation {
        generation: g,
        best_fitness: best,
        avg_fitness: avg,
        worst_fitness: finite.iter().copied().fold(f64::INFINITY, f64::min),
        fitness_std: std,
        generation_best: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        diversity,
        candidates: ids.len(),
        champion_id: champion,
        champion_kind: st.node(champion).kind.clone(),
        sigma: st.search.sigma,
    });
    st.generation = g;
    if st.stale >= cfg.patience && g > 0 {
        st.stop_reason = Some("early_stop".into());
    }
}

/// Run (or resume) an evolution. Returns the final state and the champion's weights.
pub fn evolve(
    cfg: &EvolveConfig,
    inp: &Inputs<'_>,
    evaluator: &dyn Evaluator,
    hooks: &mut dyn Hooks,
    resume: Option<EvolveState>,
) -> Result<(EvolveState, StateDict), String> {
    let mut st = if let Some(st) = resume {
        st
    } else {
        let mut st = EvolveState {
            generation: 0,
            nodes: Vec::new(),
            history: Vec::new(),
            search: CmaEs::new(genome_start(), cfg.sigma, cfg.population),
            best_fitness: f64::NEG_INFINITY,
            stale: 0,
            stop_reason: None,
        };
        let (ids, div) = add_generation(&mut st, inp, evaluator, 0, pool(inp))?;
        log_generation(&mut st, cfg, 0, &ids, div);
        hooks.generation_done(&st)?;
        st
    };
    while st.stop_reason.is_none() {
        if st.generation >= cfg.generations {
            st.stop_reason = Some("max_gen".into());
            break;
        }
        let g = st.generation + 1;
        let samples: Vec<Sample> = st
            .search
            .ask(&mut stream(inp.seed, Stream::Search { generation: g }));
        let recipes = samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let seed = inp.seed ^ (u64::from(g) << 32) ^ i as u64;
                ("search".to_string(), genome(cfg.search, &s.x, seed))
            })
            .collect();
        let (ids, div) = add_generation(&mut st, inp, evaluator, g, recipes)?;
        let fitness: Vec<f64> = ids.iter().map(|&i| st.node(i).fitness_value()).collect();
        st.search.tell(&samples, &fitness);
        log_generation(&mut st, cfg, g, &ids, div);
        hooks.generation_done(&st)?;
    }
    let champion = st.node(st.champion()).clone();
    let weights = match &champion.recipe {
        Recipe::Combo { combo, seed, .. } => {
            let k = u8::from_str_radix(combo, 2).map_err(|e| e.to_string())?;
            combo::apply(k, inp.parents, inp.base, *seed, &inp.task)?.0
        }
        r => build(r, inp)?,
    };
    Ok((st, weights))
}

/// Mean pairwise cosine distance of the flattened weights.
pub fn diversity(models: &[&StateDict]) -> f64 {
    let flat = |m: &StateDict| -> Vec<f64> {
        m.tensors
            .values()
            .flat_map(|t| t.data.iter().map(|x| f64::from(*x)))
            .collect()
    };
    let v: Vec<Vec<f64>> = models.iter().map(|m| flat(m)).collect();
    let norm = |a: &[f64]| a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut total = 0.0;
    let mut pairs = 0;
    for i in 0..v.len() {
        for j in i + 1..v.len() {
            let dot: f64 = v[i].iter().zip(&v[j]).map(|(a, b)| a * b).sum();
            total += 1.0 - dot / (norm(&v[i]) * norm(&v[j])).max(1e-12);
            pairs += 1;
        }
    }
    if pairs == 0 {
        0.0
    } else {
        total / pairs as f64
    }
}

/// Linear mode connectivity of the parents: per pair, how much worse (in nats per token) their
/// midpoint is than the mean of their losses; ≤ 0 means the pair is connected.
pub fn lmc_barriers(st: &EvolveState) -> BTreeMap<String, f64> {
    let loss = |n: &Node| n.fitness.as_ref().map(|f| f.perplexity.ln());
    let inputs: Vec<Option<f64>> = st.pool("input").map(loss).collect();
    st.pool("midpoint")
        .filter_map(|n| match &n.recipe {
            Recipe::Linear { models, .. } if models.len() == 2 => {
                let (a, b) = (models[0], models[1]);
                let mid = loss(n)?;
                Some((
                    format!("{a}{b}"),
                    mid - (inputs.get(a)?.as_ref()? + inputs.get(b)?.as_ref()?) / 2.0,
                ))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::combo::tests::{family, toy};
    use std::cell::Cell;

    /// A real, checkable fitness: closeness of the weights to a target model.
    struct Closeness {
        target: StateDict,
        calls: Cell<usize>,
    }

    impl Evaluator for Closeness {
        fn evaluate(&self, models: &[&StateDict]) -> Vec<Result<FitnessReport, String>> {
            models
                .iter()
                .map(|m| {
                    self.calls.set(self.calls.get() + 1);
                    let d: f64 = m
                        .tensors
                        .iter()
                        .flat_map(|(k, t)| {
                            t.data
                                .iter()
                                .zip(&self.target.tensors[k].data)
                                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                        })
                        .sum();
                    Ok(FitnessReport {
                        fitness: 1.0 / (1.0 + d),
                        perplexity: (1.0 + d).exp().min(1e30),
                        accuracy: 0.0,
                        latency: 1.0,
                        size_mb: 1.0,
                    })
                })
                .collect()
        }
    }

    #[derive(Default)]
    struct Record {
        states: Vec<EvolveState>,
        stop_after: Option<u32>,
    }

    impl Hooks for Record {
        fn generation_done(&mut self, st: &EvolveState) -> Result<(), String> {
            self.states.push(st.clone());
            if self.stop_after == Some(st.generation) {
                return Err("killed".into());
            }
            Ok(())
        }
    }

    /// A base, three models around it, and a target that a task-arithmetic merge of them with
    /// λ > 1 approaches better than any pool member: the search has something to find.
    fn setup() -> (StateDict, [StateDict; 3], StateDict) {
        let (base, ps) = family();
        let mut target = base.clone();
        for (name, t) in &mut target.tensors {
            for (j, x) in t.data.iter_mut().enumerate() {
                let mean: f32 = ps.iter().map(|p| p.tensors[name].data[j]).sum::<f32>() / 3.0;
                *x += 1.8 * (mean - *x);
            }
        }
        (base, ps, target)
    }

    /// Generation 0 alone (the pool) on `parents`, scored by closeness to `target`: the state,
    /// the champion's weights and how many candidates were evaluated.
    fn generation_zero(
        base: &StateDict,
        parents: &[StateDict; 3],
        target: StateDict,
    ) -> (EvolveState, StateDict, usize) {
        let eval = Closeness {
            target,
            calls: Cell::new(0),
        };
        let cfg = EvolveConfig {
            generations: 0,
            ..EvolveConfig::default()
        };
        let (st, w) = evolve(
            &cfg,
            &inputs(base, parents),
            &eval,
            &mut Record::default(),
            None,
        )
        .unwrap();
        (st, w, eval.calls.get())
    }

    fn inputs<'a>(base: &'a StateDict, ps: &'a [StateDict; 3]) -> Inputs<'a> {
        Inputs {
            parents: [&ps[0], &ps[1], &ps[2]],
            base,
            seed: 5,
            task: TaskArithmetic::default(),
        }
    }

    #[test]
    fn the_blocks_and_the_other_tensors_take_their_own_lambda() {
        let (base, ps) = family();
        let recipe = |lambda_rest| Recipe::Task {
            method: SearchMethod::Linear,
            weights: [1.0, 2.0, 1.0],
            density: 1.0,
            lambda: 0.5,
            lambda_rest,
            seed: 0,
        };
        let merged = build(&recipe(Some(2.0)), &inputs(&base, &ps)).unwrap();
        for (name, t) in &merged.tensors {
            let lambda = if name.starts_with(BLOCKS) { 0.5 } else { 2.0 };
            for (j, &x) in t.data.iter().enumerate() {
                let b = base.tensors[name].data[j];
                let tau: Vec<f32> = ps.iter().map(|p| p.tensors[name].data[j] - b).collect();
                // Normalised weights 1/4, 2/4, 1/4 over the task vectors, scaled by λ.
                let want = b + lambda * (0.25 * tau[0] + 0.5 * tau[1] + 0.25 * tau[2]);
                assert!((x - want).abs() < 1e-5, "{name}[{j}]: {x} vs {want}");
            }
        }
        // Without its own λ the rest follows the blocks.
        let same = build(&recipe(None), &inputs(&base, &ps)).unwrap();
        let all_half = build(&recipe(Some(0.5)), &inputs(&base, &ps)).unwrap();
        assert_eq!(same, all_half);
    }

    #[test]
    fn the_pool_holds_the_parents_the_base_single_techniques_midpoints_and_all_eight_combos() {
        let (base, ps, target) = setup();
        let (st, _, calls) = generation_zero(&base, &ps, target);
        let count = |k: &str| st.pool(k).count();
        assert_eq!(count("input"), 3);
        assert_eq!(count("base"), 1);
        assert_eq!(count("technique"), 3);
        assert_eq!(count("midpoint"), 3);
        assert_eq!(count("combo") + count("fallback"), 8);
        let combos: std::collections::BTreeSet<&str> =
            st.nodes.iter().filter_map(Node::combo).collect();
        assert_eq!(combos.len(), 8);
        assert_eq!(calls, 18);
        // The parents are candidates: on a fitness that prefers a parent, it can win.
        let (st, w, _) = generation_zero(&base, &ps, ps[1].clone());
        assert_eq!(st.node(st.champion()).recipe, Recipe::Input { index: 1 });
        assert_eq!(w, ps[1]);
    }

    #[test]
    fn the_search_beats_the_pool_and_resumes_bit_identically() {
        let (base, ps, target) = setup();
        let inp = inputs(&base, &ps);
        let cfg = EvolveConfig {
            generations: 12,
            patience: 100,
            ..EvolveConfig::default()
        };
        let eval = Closeness {
            target,
            calls: Cell::new(0),
        };
        let (st, champ) = evolve(&cfg, &inp, &eval, &mut Record::default(), None).unwrap();
        assert_eq!(st.history.len(), 13);
        assert_eq!(st.stop_reason.as_deref(), Some("max_gen"));
        for w in st.history.windows(2) {
            assert!(
                w[1].best_fitness >= w[0].best_fitness,
                "the best never gets worse"
            );
        }
        let pool_best = st.history[0].best_fitness;
        assert!(
            st.history.last().unwrap().best_fitness > pool_best * 1.05,
            "the search found nothing better than the pool ({pool_best})"
        );
        assert_eq!(st.node(st.champion()).kind, "search");
        // Kill after generation 4, resume from what the hook saw: same state, same champion.
        let mut killed = Record {
            stop_after: Some(4),
            ..Record::default()
        };
        assert!(evolve(&cfg, &inp, &eval, &mut killed, None).is_err());
        let saved = killed.states.pop().unwrap();
        let saved: EvolveState =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
        let (st2, champ2) = evolve(&cfg, &inp, &eval, &mut Record::default(), Some(saved)).unwrap();
        assert_eq!(st2.search, st.search);
        assert_eq!(st2.history, st.history);
        assert_eq!(st2.nodes, st.nodes);
        assert_eq!(st2, st);
        assert_eq!(champ2.to_bytes(), champ.to_bytes());
    }

    /// Closeness that is "cancelled" during its `stop_at`-th evaluation: that call's later
    /// candidates come back as errors, as the real evaluator's do.
    struct CancelledDuring {
        inner: Closeness,
        stop_at: usize,
        evaluations: Cell<usize>,
    }

    impl Evaluator for CancelledDuring {
        fn evaluate(&self, models: &[&StateDict]) -> Vec<Result<FitnessReport, String>> {
            self.evaluations.set(self.evaluations.get() + 1);
            let mut out = self.inner.evaluate(models);
            if self.stopped() {
                for r in out.iter_mut().skip(1) {
                    *r = Err("cancelled".into());
                }
            }
            out
        }
        fn stopped(&self) -> bool {
            self.evaluations.get() >= self.stop_at
        }
    }

    #[test]
    fn a_generation_cancelled_mid_evaluation_is_not_recorded_and_the_resume_redoes_it() {
        let (base, ps, target) = setup();
        let inp = inputs(&base, &ps);
        let cfg = EvolveConfig {
            generations: 6,
            patience: 100,
            ..EvolveConfig::default()
        };
        let closeness = |target: &StateDict| Closeness {
            target: target.clone(),
            calls: Cell::new(0),
        };
        let (whole, champ) = evolve(
            &cfg,
            &inp,
            &closeness(&target),
            &mut Record::default(),
            None,
        )
        .unwrap();
        // Cancelled during generation 3's evaluation (the 4th call: generations 0, 1, 2 done).
        let cancelled = CancelledDuring {
            inner: closeness(&target),
            stop_at: 4,
            evaluations: Cell::new(0),
        };
        let mut seen = Record::default();
        let err = evolve(&cfg, &inp, &cancelled, &mut seen, None).unwrap_err();
        assert!(err.contains("cancelled"), "{err}");
        let generations: Vec<u32> = seen.states.iter().map(|s| s.generation).collect();
        assert_eq!(
            generations,
            [0, 1, 2],
            "no hook saw the cut-short generation"
        );
        // Resuming from the last checkpoint gives the uninterrupted run's state and champion.
        let last = seen.states.pop().unwrap();
        let (resumed, champ2) = evolve(
            &cfg,
            &inp,
            &closeness(&target),
            &mut Record::default(),
            Some(last),
        )
        .unwrap();
        assert_eq!(resumed, whole);
        assert_eq!(champ2.to_bytes(), champ.to_bytes());
    }

    #[test]
    fn a_degenerate_combo_falls_back_to_the_linear_merge() {
        let (base, ps, target) = setup();
        // A NaN in one input: SLERP's norm turns the whole tensor NaN and DARE keeps it, so the
        // slerp combos are degenerate and are replaced by the fallback.
        let mut bad = ps.clone();
        bad[0].tensors.get_mut("embed").unwrap().data[0] = f32::NAN;
        let (st, _, _) = generation_zero(&base, &bad, target);
        let fallback = st.pool("fallback").next().expect("a fallback");
        assert!(
            fallback.note.as_ref().unwrap().contains("NaN"),
            "{fallback:?}"
        );
    }

    #[test]
    fn midpoint_barriers_measure_linear_mode_connectivity() {
        let (base, ps, target) = setup();
        let (st, _, _) = generation_zero(&base, &ps, target);
        let b = lmc_barriers(&st);
        assert_eq!(b.keys().cloned().collect::<Vec<_>>(), ["01", "02", "12"]);
        // By hand for pair 01: ln ppl is 1 + d here, so the barrier is d(mid) − (d0 + d1)/2.
        let d = |n: &Node| n.fitness.as_ref().unwrap().perplexity.ln();
        let mid = st.pool("midpoint").next().unwrap();
        let inputs: Vec<&Node> = st.pool("input").collect();
        let want = d(mid) - (d(inputs[0]) + d(inputs[1])) / 2.0;
        assert!((b["01"] - want).abs() < 1e-9);
    }

    #[test]
    fn diversity_is_the_mean_cosine_distance() {
        let (base, ps, _) = setup();
        assert!(diversity(&[&base, &base]).abs() < 1e-9);
        let mut neg = base.clone();
        for t in neg.tensors.values_mut() {
            for x in &mut t.data {
                *x = -*x;
            }
        }
        assert!((diversity(&[&base, &neg]) - 2.0).abs() < 1e-9);
        assert!(diversity(&[&ps[0], &ps[1], &ps[2]]) > 0.0);
        let _ = toy(1, None);
    }
}
