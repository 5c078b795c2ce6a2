//! The eight EvoMerge combos: a three-stage merge of three models over a shared base, one
//! technique from each pair, named by three bits as in the seed plan (bit 1: 0 = linear,
//! 1 = slerp; bit 2: 0 = dare, 1 = ties; bit 3: 0 = frankenmerge, 1 = routing — the seed's "DFS"):
//!
//! 1. **interpolate** the three models (equal weights; slerp folds pairwise, see
//!    [`super::methods::slerp_many`]) → M1;
//! 2. **task arithmetic** over the base on the task vectors of M1 and the three models
//!    (`density`, `lambda`; TIES elects signs, DARE drops at random) → M2;
//! 3. **select layers** from [M2, model 0, model 1, model 2], embeddings and heads from M2:
//!    frankenmerge takes even layers from M2 and odd layers from the models in turn; routing draws a
//!    routing (M2 with probability ½, else one of the models) and per-layer residual scales in
//!    [0.8, 1.2] from the combo's seed.
//!
//! Every stage consumes the previous stage's output, so all eight combos differ.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::layers::{LayerPick, assemble, depth};
use super::methods::{Sparsify, linear, slerp_many, task_arithmetic};
use super::technique::TaskArithmetic;
use super::tensors::StateDict;

/// A combo id, 0–7, written as three bits (`"101"` = slerp + dare + routing).
pub fn bits(combo: u8) -> String {
    format!("{combo:03b}")
}

/// The techniques of a combo, e.g. `SLERP + DARE + Routing`.
pub fn describe(combo: u8) -> String {
    format!(
        "{} + {} + {}",
        if combo & 4 != 0 { "SLERP" } else { "Linear" },
        if combo & 2 != 0 { "TIES" } else { "DARE" },
        if combo & 1 != 0 {
            "Routing"
        } else {
            "FrankenMerge"
        }
    )
}

/// How stage 3 assembled the layers (recorded in the lineage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComboRecipe {
    pub combo: String,
    pub seed: u64,
    /// Per output layer: source (0 = the stage-2 merge, 1–3 = the models) and scale.
    pub layers: Vec<LayerPick>,
}

/// Equal-weight linear merge (also the fallback for degenerate combos).
pub fn linear_merge(models: &[&StateDict]) -> Result<StateDict, String> {
    let w = vec![1.0; models.len()];
    StateDict::zip_map(models, |_, xs| linear(xs, &w, true))
}

/// Apply combo `combo` (0–7) to three models over `base`.
pub fn apply(
    combo: u8,
    models: [&StateDict; 3],
    base: &StateDict,
    seed: u64,
    s: &TaskArithmetic,
) -> Result<(StateDict, ComboRecipe), String> {
    let three = [1.0; 3];
    // Stage 1: interpolation.
    let m1 = if combo & 4 != 0 {
        StateDict::zip_map(&models, |_, xs| slerp_many(xs, &three))?
    } else {
        StateDict::zip_map(&models, |_, xs| linear(xs, &three, true))?
    };
    // Stage 2: task arithmetic on M1 and the three models over the base.
    let how = if combo & 2 != 0 {
        Sparsify::Ties
    } else {
        Sparsify::Dare {
            rescale: s.rescale,
            seed,
        }
    };
    let four = [1.0; 4];
    let m2 = StateDict::zip_map(&[base, &m1, models[0], models[1], models[2]], |name, xs| {
        task_arithmetic(name, xs[0], &xs[1..], &four, s.density, s.lambda, true, how)
    })?;
    // Stage 3: layer selection from [M2, models…].
    let n = depth(&m2);
    let mut rng = crate::rng::stream(seed, crate::rng::Stream::ComboRouting);
    let layers: Vec<LayerPick> = (0..n)
        .map(|l| {
            if combo & 1 != 0 {
                let model = if rng.random::<f64>() < 0.5 {
                    0
                } else {
                    1 + rng.random_range(0..3)
                };
                LayerPick {
                    model,
                    layer: l,
                    scale: 0.8 + 0.4 * rng.random::<f64>(),
                }
            } else {
                LayerPick {
                    model: if l % 2 == 0 { 0 } else { 1 + (l / 2) % 3 },
                    layer: l,
                    scale: 1.0,
                }
            }
        })
        .collect();
    let merged = assemble(&[&m2, models[0], models[1], models[2]], &layers, 0)?;
    Ok((
        merged,
        ComboRecipe {
            combo: bits(combo),
            seed,
            layers,
        },
    ))
}

/// [`apply`], checked: when the combo fails or its model is [`degenerate`], `fallback()` is used
/// instead and the second value says why (`Err(note)`) in place of the recipe.
pub fn apply_or_fallback(
    combo: u8,
    models: [&StateDict; 3],
    base: &StateDict,
    seed: u64,
    s: &TaskArithmetic,
    fallback: &dyn Fn() -> Result<StateDict, String>,
) -> Result<(StateDict, Result<ComboRecipe, String>), String> {
    let why = match apply(combo, models, base, seed, s) {
        Ok((w, recipe)) => match degenerate(&w, &models) {
            None => return Ok((w, Ok(recipe))),
            Some(why) => format!("combo {} degenerate ({why})", bits(combo)),
        },
        Err(e) => format!("combo {} failed ({e})", bits(combo)),
    };
    Ok((
        fallback()?,
        Err(format!("{why}: linear merge of the inputs")),
    ))
}

/// Why a merged model is unusable, if it is: a NaN or Inf weight, or a tensor with no variance
/// where every reference model's (the merge inputs') has some. The forward-pass check needs the
/// model and is the caller's.
pub fn degenerate(model: &StateDict, references: &[&StateDict]) -> Option<String> {
    let var = |d: &[f32]| {
        let n = d.len() as f64;
        let mean = d.iter().map(|x| *x as f64).sum::<f64>() / n;
        d.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n
    };
    for (name, t) in &model.tensors {
        if let Some(x) = t.data.iter().find(|x| !x.is_finite()) {
            return Some(format!("tensor `{name}` holds {x}"));
        }
        if t.data.len() > 1
            && var(&t.data) < 1e-12
            && references.iter().all(|r| {
                r.tensors
                    .get(name)
                    .is_some_and(|rt| rt.data.len() > 1 && var(&rt.data) >= 1e-12)
            })
        {
            return Some(format!("tensor `{name}` has zero variance"));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeMap;

    /// A small layered model with seeded values around `base`'s.
    pub fn toy(seed: u64, base: Option<&StateDict>) -> StateDict {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = BTreeMap::new();
        let mut names = vec!["embed".to_string(), "norm_out.gain".to_string()];
        for l in 0..3 {
            for p in ["attn.wq.weight", "attn.wo.weight", "ffn.down.weight"] {
                names.push(format!("blocks.{l}.{p}"));
            }
        }
        for name in names {
            let data: Vec<f32> = (0..12)
                .map(|i| {
                    let b = base.map(|b| b.tensors[&name].data[i]).unwrap_or(0.0);
                    b + rng.random_range(-1.0..1.0f32) * if base.is_some() { 0.3 } else { 1.0 }
                })
                .collect();
            tensors.insert(
                name,
                crate::merge::tensors::Tensor {
                    shape: vec![3, 4],
                    data,
                },
            );
        }
        StateDict { tensors }
    }

    /// A base and three models around it (seeds 1; 2, 3, 4).
    pub fn family() -> (StateDict, [StateDict; 3]) {
        let base = toy(1, None);
        let models = [2, 3, 4].map(|seed| toy(seed, Some(&base)));
        (base, models)
    }

    #[test]
    fn all_eight_combos_give_different_weights() {
        let (base, [a, b, c]) = family();
        let s = TaskArithmetic::default();
        let outs: Vec<StateDict> = (0..8)
            .map(|k| apply(k, [&a, &b, &c], &base, 11, &s).unwrap().0)
            .collect();
        for i in 0..8 {
            assert!(degenerate(&outs[i], &[&a, &b, &c]).is_none());
            for j in 0..i {
                assert_ne!(
                    outs[i],
                    outs[j],
                    "combos {} and {}",
                    bits(i as u8),
                    bits(j as u8)
                );
            }
        }
        // Deterministic from the seed.
        assert_eq!(outs[5], apply(5, [&a, &b, &c], &base, 11, &s).unwrap().0);
        assert_eq!(describe(5), "SLERP + DARE + Routing");
        assert_eq!(bits(3), "011");
    }

    #[test]
    fn frankenmerge_stage_uses_the_stage_two_merge() {
        // Changing only the task-arithmetic stage must change the franken combo's output: the
        // earlier implementation's frankenmerge ignored its input, so combos 000–011 were equal.
        let (base, [a, b, c]) = family();
        let s = TaskArithmetic::default();
        let (dare, r) = apply(0b000, [&a, &b, &c], &base, 3, &s).unwrap();
        let (ties, _) = apply(0b010, [&a, &b, &c], &base, 3, &s).unwrap();
        assert_eq!(r.layers[0].model, 0, "layer 0 comes from the stage-2 merge");
        assert_ne!(
            dare.tensors["blocks.0.attn.wq.weight"],
            ties.tensors["blocks.0.attn.wq.weight"]
        );
        assert_eq!(
            dare.tensors["blocks.1.attn.wq.weight"], a.tensors["blocks.1.attn.wq.weight"],
            "layer 1 is model 0's"
        );
    }

    #[test]
    fn degenerate_models_are_detected() {
        let base = toy(1, None);
        let a = toy(2, Some(&base));
        let mut bad = a.clone();
        bad.tensors.get_mut("embed").unwrap().data[3] = f32::NAN;
        assert!(degenerate(&bad, &[&a]).unwrap().contains("NaN"));
        let mut flat = a.clone();
        flat.tensors.get_mut("embed").unwrap().data = vec![0.5; 12];
        assert!(degenerate(&flat, &[&a]).unwrap().contains("zero variance"));
        assert!(degenerate(&a, &[&base]).is_none());
    }
}
