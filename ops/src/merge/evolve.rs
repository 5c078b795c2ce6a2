//! `strategy: evolve`: the EvoMerge genetic loop over merged candidates.
//!
//! Generation 0 is the eight combos of the three input models (each checked, and replaced by the
//! equal-weight linear merge when degenerate). Every later generation, with the population ranked
//! by fitness (ties by id):
//!
//! - the champion is kept as is, with 2 mutants of it and 3 mutants of the runner-up (the top 2
//!   become 6); a mutant adds Gaussian noise to a `mutation_rate` fraction of the entries of
//!   every tensor, with standard deviation `mutation_sigma` × that tensor's RMS;
//! - ranks 3–5 and 6–8 (the bottom 6) are merged in two groups of three, each with a random combo
//!   over the shared base.
//!
//! Diversity is the mean pairwise cosine distance of the flattened weights. Below
//! `diversity_threshold` the mutation rate doubles for the generation, and every
//! `inject_every`-th generation the last slot is replaced by a random combo of the original three
//! models. Evolution stops after `generations`, or early when the best fitness has not improved by
//! a relative `min_improvement` for `patience` generations.
//!
//! All randomness is drawn from the seed and the generation number, and the whole state is
//! handed to a hook after each generation, so a killed run resumes at its last finished
//! generation and ends with the same champion, bytes included.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::combo::{self, ComboRecipe, bits};
use super::technique::TaskArithmetic;
use super::tensors::StateDict;

/// The population size the loop's structure (1 + 2 + 3 + 2) is built for.
pub const POPULATION: usize = 8;

/// Settings of the evolution (the seed plan's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvolveConfig {
    #[serde(default = "d::generations")]
    pub generations: u32,
    /// Fraction of entries a mutation touches.
    #[serde(default = "d::mutation_rate")]
    pub mutation_rate: f64,
    /// Noise standard deviation, relative to each tensor's RMS.
    #[serde(default = "d::mutation_sigma")]
    pub mutation_sigma: f64,
    /// Below this mean pairwise cosine distance, the diversity interventions start.
    #[serde(default = "d::diversity_threshold")]
    pub diversity_threshold: f64,
    /// Inject a random combo every this many generations while diversity is low.
    #[serde(default = "d::inject_every")]
    pub inject_every: u32,
    /// Stop after this many generations without a relative improvement of `min_improvement`.
    #[serde(default = "d::patience")]
    pub patience: u32,
    #[serde(default = "d::min_improvement")]
    pub min_improvement: f64,
}

mod d {
    pub fn generations() -> u32 {
        50
    }
    pub fn mutation_rate() -> f64 {
        0.01
    }
    pub fn mutation_sigma() -> f64 {
        0.01
    }
    pub fn diversity_threshold() -> f64 {
        0.3
    }
    pub fn inject_every() -> u32 {
        10
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
}

/// One candidate ever made, for the lineage. Ids 0–2 are the input models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: u64,
    pub generation: u32,
    /// `input`, `combo`, `mutant`, `merge`, `inject` or `fallback`.
    pub kind: String,
    /// The combo its weights descend from (a mutant inherits its parent's).
    pub combo: Option<String>,
    pub parents: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<ComboRecipe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitness: Option<FitnessReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One generation of the evolution log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u32,
    pub best_fitness: f64,
    pub avg_fitness: f64,
    pub worst_fitness: f64,
    pub fitness_std: f64,
    pub diversity: f64,
    pub unique_models: usize,
    pub elite1_fitness: f64,
    pub elite2_fitness: f64,
    /// Population members per combo (by descent).
    pub combo_counts: BTreeMap<String, u32>,
    pub champion_id: u64,
    pub champion_combo: Option<String>,
    pub mutation_rate: f64,
    pub interventions: Vec<String>,
}

/// Everything needed to continue after a generation (the weights travel beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvolveState {
    pub generation: u32,
    /// Node ids of the population, in slot order.
    pub population: Vec<u64>,
    pub nodes: Vec<Node>,
    pub history: Vec<Generation>,
    pub next_id: u64,
    pub best_fitness: f64,
    pub stale: u32,
    pub stop_reason: Option<String>,
}

impl EvolveState {
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize]
    }
    /// The champion's ancestry, champion first.
    pub fn lineage(&self, id: u64) -> Vec<Node> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![id];
        while let Some(i) = todo.pop() {
            if !seen.insert(i) {
                continue;
            }
            let n = self.node(i).clone();
            todo.extend(n.parents.iter().rev().copied());
            out.push(n);
        }
        out
    }
    pub fn champion(&self) -> u64 {
        self.history.last().map(|g| g.champion_id).unwrap_or(0)
    }
}

/// Called after each generation with the state and the population's weights (checkpoint,
/// metrics, cancellation).
pub trait Hooks {
    fn generation_done(
        &mut self,
        state: &EvolveState,
        population: &[StateDict],
    ) -> Result<(), String>;
}

/// The inputs an evolution runs on.
pub struct Inputs<'a> {
    pub parents: [&'a StateDict; 3],
    pub base: &'a StateDict,
    pub seed: u64,
    pub combo: TaskArithmetic,
}

/// Add noise to a `rate` fraction of every tensor's entries.
pub fn mutate(model: &StateDict, rate: f64, sigma: f64, rng: &mut ChaCha8Rng) -> StateDict {
    let mut out = model.clone();
    for t in out.tensors.values_mut() {
        let n = t.data.len().max(1) as f64;
        let rms = (t.data.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / n).sqrt();
        let Ok(normal) = Normal::new(0.0, (sigma * rms).max(1e-12)) else {
            continue;
        };
        for x in &mut t.data {
            if rng.random::<f64>() < rate {
                *x = (*x as f64 + normal.sample(rng)) as f32;
            }
        }
    }
    out
}

/// Mean pairwise cosine distance (1 − cos) of the flattened weights.
pub fn diversity(models: &[&StateDict]) -> f64 {
    let flat: Vec<Vec<f32>> = models
        .iter()
        .map(|m| {
            m.tensors
                .values()
                .flat_map(|t| t.data.iter().copied())
                .collect()
        })
        .collect();
    let norms: Vec<f64> = flat
        .iter()
        .map(|v| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt())
        .collect();
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..flat.len() {
        for j in 0..i {
            let dot: f64 = flat[i]
                .iter()
                .zip(&flat[j])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let cos = dot / (norms[i] * norms[j]).max(1e-30);
            sum += 1.0 - cos;
            pairs += 1;
        }
    }
    if pairs == 0 { 0.0 } else { sum / pairs as f64 }
}

struct Pop {
    ids: Vec<u64>,
    weights: Vec<StateDict>,
}

/// Run (or resume) an evolution. Returns the final state and the champion's weights.
pub fn evolve(
    cfg: &EvolveConfig,
    inp: &Inputs<'_>,
    evaluator: &dyn Evaluator,
    hooks: &mut dyn Hooks,
    resume: Option<(EvolveState, Vec<StateDict>)>,
) -> Result<(EvolveState, StateDict), String> {
    let parents = inp.parents;
    let fallback = || combo::linear_merge(&parents);
    let (mut st, mut pop) = if let Some((st, weights)) = resume {
        let pop = Pop {
            ids: st.population.clone(),
            weights,
        };
        (st, pop)
    } else {
        let mut st = EvolveState {
            generation: 0,
            population: Vec::new(),
            nodes: (0..3)
                .map(|i| Node {
                    id: i,
                    generation: 0,
                    kind: "input".into(),
                    combo: None,
                    parents: vec![],
                    recipe: None,
                    fitness: None,
                    note: None,
                })
                .collect(),
            history: Vec::new(),
            next_id: 3,
            best_fitness: f64::NEG_INFINITY,
            stale: 0,
            stop_reason: None,
        };
        let mut pop = Pop {
            ids: vec![],
            weights: vec![],
        };
        for k in 0..POPULATION as u8 {
            let seed = inp.seed ^ (u64::from(k) << 32);
            let (w, node) = make_combo(
                k,
                parents,
                [0, 1, 2],
                inp,
                seed,
                0,
                "combo",
                &mut st,
                &fallback,
            )?;
            pop.ids.push(node);
            pop.weights.push(w);
        }
        let rate = cfg.mutation_rate;
        finish_generation(
            cfg,
            evaluator,
            &mut st,
            &mut pop,
            &fallback,
            0,
            rate,
            vec![],
        )?;
        hooks.generation_done(&st, &pop.weights)?;
        (st, pop)
    };
    while st.stop_reason.is_none() {
        if st.generation >= cfg.generations {
            st.stop_reason = Some("max_gen".into());
            break;
        }
        let g = st.generation + 1;
        let mut rng = crate::rng::stream(inp.seed, crate::rng::Stream::Evolve { generation: g });
        let div = st.history.last().map(|h| h.diversity).unwrap_or(1.0);
        let mut interventions = Vec::new();
        let mut rate = cfg.mutation_rate;
        if div < cfg.diversity_threshold {
            rate *= 2.0;
            interventions.push(format!(
                "diversity {div:.4} < {}: mutation rate × 2",
                cfg.diversity_threshold
            ));
        }
        // Rank: fitness descending, ids ascending.
        let mut order: Vec<usize> = (0..pop.ids.len()).collect();
        let fit = |i: usize| {
            st.node(pop.ids[i])
                .fitness
                .as_ref()
                .map(|f| f.fitness)
                .unwrap_or(f64::NEG_INFINITY)
        };
        order.sort_by(|&a, &b| {
            fit(b)
                .partial_cmp(&fit(a))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(pop.ids[a].cmp(&pop.ids[b]))
        });
        let mut next = Pop {
            ids: vec![],
            weights: vec![],
        };
        let (top, second) = (order[0], order[1]);
        next.ids.push(pop.ids[top]);
        next.weights.push(pop.weights[top].clone());
        for (src, copies) in [(top, 2), (second, 3)] {
            for _ in 0..copies {
                let w = mutate(&pop.weights[src], rate, cfg.mutation_sigma, &mut rng);
                let parent = pop.ids[src];
                let combo = st.node(parent).combo.clone();
                let id = add_node(
                    &mut st,
                    Node {
                        id: 0,
                        generation: g,
                        kind: "mutant".into(),
                        combo,
                        parents: vec![parent],
                        recipe: None,
                        fitness: None,
                        note: Some(format!("rate {rate}, sigma {}", cfg.mutation_sigma)),
                    },
                );
                next.ids.push(id);
                next.weights.push(w);
            }
        }
        for group in [&order[2..5], &order[5..8]] {
            let k = rng.random_range(0..8u8);
            let seed = rng.random::<u64>();
            let models = [
                &pop.weights[group[0]],
                &pop.weights[group[1]],
                &pop.weights[group[2]],
            ];
            let ids = [pop.ids[group[0]], pop.ids[group[1]], pop.ids[group[2]]];
            let (w, id) = make_combo(k, models, ids, inp, seed, g, "merge", &mut st, &fallback)?;
            next.ids.push(id);
            next.weights.push(w);
        }
        if div < cfg.diversity_threshold
            && cfg.inject_every > 0
            && g.is_multiple_of(cfg.inject_every)
        {
            let k = rng.random_range(0..8u8);
            let seed = rng.random::<u64>();
            let (w, id) = make_combo(
                k,
                parents,
                [0, 1, 2],
                inp,
                seed,
                g,
                "inject",
                &mut st,
                &fallback,
            )?;
            *next.ids.last_mut().expect("slot") = id;
            *next.weights.last_mut().expect("slot") = w;
            interventions.push(format!("injected combo {} of the input models", bits(k)));
        }
        pop = next;
        finish_generation(
            cfg,
            evaluator,
            &mut st,
            &mut pop,
            &fallback,
            g,
            rate,
            interventions,
        )?;
        hooks.generation_done(&st, &pop.weights)?;
    }
    let champion = st.champion();
    let slot = pop
        .ids
        .iter()
        .position(|&i| i == champion)
        .ok_or("the champion is not in the population")?;
    Ok((st, pop.weights[slot].clone()))
}

fn add_node(st: &mut EvolveState, mut node: Node) -> u64 {
    node.id = st.next_id;
    st.next_id += 1;
    st.nodes.push(node);
    st.next_id - 1
}

#[allow(clippy::too_many_arguments)]
fn make_combo(
    k: u8,
    models: [&StateDict; 3],
    ids: [u64; 3],
    inp: &Inputs<'_>,
    seed: u64,
    generation: u32,
    kind: &str,
    st: &mut EvolveState,
    fallback: &dyn Fn() -> Result<StateDict, String>,
) -> Result<(StateDict, u64), String> {
    let (w, outcome) = combo::apply_or_fallback(k, models, inp.base, seed, &inp.combo, fallback)?;
    let (kind, combo, recipe, note) = match outcome {
        Ok(recipe) => (kind.to_string(), Some(bits(k)), Some(recipe), None),
        Err(note) => ("fallback".to_string(), None, None, Some(note)),
    };
    let id = add_node(
        st,
        Node {
            id: 0,
            generation,
            kind,
            combo,
            parents: ids.to_vec(),
            recipe,
            fitness: None,
            note,
        },
    );
    Ok((w, id))
}

/// Evaluate the members without a fitness (replacing any whose forward pass fails), then log the
/// generation.
#[allow(clippy::too_many_arguments)]
fn finish_generation(
    cfg: &EvolveConfig,
    evaluator: &dyn Evaluator,
    st: &mut EvolveState,
    pop: &mut Pop,
    fallback: &dyn Fn() -> Result<StateDict, String>,
    g: u32,
    mutation_rate: f64,
    interventions: Vec<String>,
) -> Result<(), String> {
    let todo: Vec<usize> = (0..pop.ids.len())
        .filter(|&i| st.node(pop.ids[i]).fitness.is_none())
        .collect();
    let reports = evaluator.evaluate(&todo.iter().map(|&i| &pop.weights[i]).collect::<Vec<_>>());
    for (&i, r) in todo.iter().zip(reports) {
        let report = match r {
            Ok(r) if r.fitness.is_finite() && r.perplexity.is_finite() => r,
            bad => {
                let why = match bad {
                    Err(e) => e,
                    Ok(r) => format!("non-finite forward output (perplexity {})", r.perplexity),
                };
                let w = fallback()?;
                let r = evaluator.evaluate(&[&w]).pop().ok_or("no evaluation")??;
                let id = add_node(
                    st,
                    Node {
                        id: 0,
                        generation: g,
                        kind: "fallback".into(),
                        combo: None,
                        parents: vec![0, 1, 2],
                        recipe: None,
                        fitness: None,
                        note: Some(format!(
                            "candidate {} unusable ({why}): linear merge of the inputs",
                            pop.ids[i]
                        )),
                    },
                );
                pop.ids[i] = id;
                pop.weights[i] = w;
                r
            }
        };
        st.nodes[pop.ids[i] as usize].fitness = Some(report);
    }
    let fits: Vec<f64> = pop
        .ids
        .iter()
        .map(|&i| {
            st.node(i)
                .fitness
                .as_ref()
                .map(|f| f.fitness)
                .unwrap_or(f64::NAN)
        })
        .collect();
    let n = fits.len() as f64;
    let avg = fits.iter().sum::<f64>() / n;
    let std = (fits.iter().map(|f| (f - avg).powi(2)).sum::<f64>() / n).sqrt();
    let mut sorted: Vec<(f64, u64)> = fits.iter().copied().zip(pop.ids.iter().copied()).collect();
    sorted.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    let mut combo_counts = BTreeMap::new();
    for &i in &pop.ids {
        let c = st.node(i).combo.clone().unwrap_or_else(|| "linear".into());
        *combo_counts.entry(c).or_insert(0) += 1;
    }
    let unique: std::collections::BTreeSet<[u8; 32]> = pop
        .weights
        .iter()
        .map(|w| *blake3::hash(&w.to_bytes()).as_bytes())
        .collect();
    let best = sorted[0].0;
    // Improved: by a relative `min_improvement` over the best so far (or the first generation).
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
        worst_fitness: sorted[sorted.len() - 1].0,
        fitness_std: std,
        diversity: diversity(&pop.weights.iter().collect::<Vec<_>>()),
        unique_models: unique.len(),
        elite1_fitness: sorted[0].0,
        elite2_fitness: sorted[1].0,
        combo_counts,
        champion_id: sorted[0].1,
        champion_combo: st.node(sorted[0].1).combo.clone(),
        mutation_rate,
        interventions,
    });
    st.generation = g;
    st.population = pop.ids.clone();
    if st.stale >= cfg.patience && g > 0 {
        st.stop_reason = Some("early_stop".into());
    }
    Ok(())
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
                                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                        })
                        .sum();
                    Ok(FitnessReport {
                        fitness: 1.0 / (1.0 + d),
                        perplexity: d.exp().min(1e30),
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
        states: Vec<(EvolveState, Vec<StateDict>)>,
        stop_after: Option<u32>,
    }

    impl Hooks for Record {
        fn generation_done(&mut self, st: &EvolveState, pop: &[StateDict]) -> Result<(), String> {
            self.states.push((st.clone(), pop.to_vec()));
            if self.stop_after == Some(st.generation) {
                return Err("killed".into());
            }
            Ok(())
        }
    }

    fn setup() -> (StateDict, [StateDict; 3], StateDict) {
        let (base, ps) = family();
        let target = toy(9, Some(&base));
        (base, ps, target)
    }

    #[test]
    fn evolution_improves_and_resumes_bit_identically() {
        let (base, ps, target) = setup();
        let inp = Inputs {
            parents: [&ps[0], &ps[1], &ps[2]],
            base: &base,
            seed: 5,
            combo: TaskArithmetic::default(),
        };
        let cfg = EvolveConfig {
            generations: 6,
            mutation_rate: 0.3,
            mutation_sigma: 0.3,
            patience: 100,
            ..EvolveConfig::default()
        };
        let eval = Closeness {
            target,
            calls: Cell::new(0),
        };
        let mut rec = Record::default();
        let (st, champ) = evolve(&cfg, &inp, &eval, &mut rec, None).unwrap();
        assert_eq!(st.history.len(), 7);
        assert_eq!(st.stop_reason.as_deref(), Some("max_gen"));
        // Elitism: the best never gets worse; the champion is kept between generations.
        for w in st.history.windows(2) {
            assert!(w[1].best_fitness >= w[0].best_fitness);
        }
        assert_eq!(
            st.history[0].combo_counts.len(),
            8,
            "all eight combos in generation 0"
        );
        // Lineage reaches back to the inputs.
        let lineage = st.lineage(st.champion());
        assert!(lineage.iter().any(|n| n.kind == "input"));
        // Kill after generation 3, resume from what the hook saw: same champion, same log.
        let mut killed = Record {
            stop_after: Some(3),
            ..Record::default()
        };
        assert!(evolve(&cfg, &inp, &eval, &mut killed, None).is_err());
        let saved = killed.states.pop().unwrap();
        assert_eq!(saved.0.generation, 3);
        let (st2, champ2) = evolve(&cfg, &inp, &eval, &mut Record::default(), Some(saved)).unwrap();
        assert_eq!(st2, st);
        assert_eq!(champ2.to_bytes(), champ.to_bytes());
    }

    #[test]
    fn a_degenerate_combo_falls_back_to_the_linear_merge() {
        let (base, ps, target) = setup();
        // A NaN in one input: SLERP's norm turns the whole tensor NaN and DARE keeps it, so
        // combo 100 is degenerate and is replaced by the fallback.
        let mut bad = ps[0].clone();
        bad.tensors.get_mut("embed").unwrap().data[0] = f32::NAN;
        let inp = Inputs {
            parents: [&bad, &ps[1], &ps[2]],
            base: &base,
            seed: 5,
            combo: TaskArithmetic::default(),
        };
        let mut st = EvolveState {
            generation: 0,
            population: vec![],
            nodes: vec![],
            history: vec![],
            next_id: 0,
            best_fitness: 0.0,
            stale: 0,
            stop_reason: None,
        };
        let fallback = || Ok(toy(7, None));
        let (w, id) = make_combo(
            4,
            inp.parents,
            [0, 1, 2],
            &inp,
            1,
            0,
            "combo",
            &mut st,
            &fallback,
        )
        .unwrap();
        assert_eq!(w, toy(7, None));
        assert_eq!(st.node(id).kind, "fallback");
        assert!(st.node(id).note.as_ref().unwrap().contains("NaN"));
        let _ = target;
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
    }
}
