//! Layer-by-layer quantization with rollback (the seed's failure mode 4.2): the model's linear
//! weights are quantized one layer at a time in a fixed order — `blocks.0`, `blocks.1`, …, then
//! the heads outside the blocks (`halt`, `talk`, …) — and after each layer the model is scored on
//! calibration data. A layer whose perplexity increase over the last accepted state exceeds
//! `max_layer_drop` (relative: 0.05 is +5%) is reverted to its preserved precision and the next
//! layer is tried on the state before it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::model::{Precision, Preserve, QuantizedModel, becomes_ternary, quantize_tensor};
use crate::merge::tensors::StateDict;

/// The layer a tensor belongs to: `blocks.N` for a block's tensors, else its first name segment.
pub fn layer_of(name: &str) -> String {
    let mut parts = name.split('.');
    match (parts.next(), parts.next()) {
        (Some("blocks"), Some(i)) => format!("blocks.{i}"),
        (Some(first), _) => first.to_string(),
        _ => name.to_string(),
    }
}

/// One layer's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerDecision {
    pub layer_name: String,
    /// Parameters of the layer's linear weights that quantization would make ternary.
    pub original_params: usize,
    pub quantized_params: usize,
    pub preserved_params: usize,
    /// Zeros among the layer's ternary weights (0 when reverted).
    pub sparsity: f64,
    /// Bytes of the layer's candidate weights as f32 / as stored: ternary (packed + scales), or
    /// at the revert precision when reverted.
    pub compression_ratio: f64,
    /// Bytes as f32 / at the revert precision (the ratio should the layer be reverted later).
    pub kept_ratio: f64,
    pub perplexity_before: f64,
    pub perplexity_after: f64,
    /// `after / before − 1`.
    pub increase: f64,
    pub reverted: bool,
}

/// A layer's candidate weights: parameters, zeros once ternary, and bytes as stored ternary and
/// at the revert precision.
struct Sizes {
    params: usize,
    zeros: usize,
    stored: usize,
    kept: usize,
}

impl Sizes {
    /// The decision on `layer`, with perplexity `(before, after)` making it ternary.
    fn decision(&self, layer: String, (before, after): (f64, f64), revert: bool) -> LayerDecision {
        let Self {
            params,
            zeros,
            stored,
            kept,
        } = *self;
        LayerDecision {
            layer_name: layer,
            original_params: params,
            quantized_params: if revert { 0 } else { params },
            preserved_params: if revert { params } else { 0 },
            sparsity: if revert {
                0.0
            } else {
                zeros as f64 / params.max(1) as f64
            },
            compression_ratio: (params * 4) as f64
                / (if revert { kept } else { stored }).max(1) as f64,
            kept_ratio: (params * 4) as f64 / kept.max(1) as f64,
            perplexity_before: before,
            perplexity_after: after,
            increase: after / before - 1.0,
            reverted: revert,
        }
    }
}

/// What [`staged`] decided.
#[derive(Debug, Clone)]
pub struct Staged {
    pub model: QuantizedModel,
    pub layers: Vec<LayerDecision>,
    pub reverted: BTreeSet<String>,
    /// Perplexity of the input model and of the accepted state at the end.
    pub perplexity_before: f64,
    pub perplexity_after: f64,
}

/// How a state is scored: its perplexity given the dequantized weights and the names of the
/// tensors that are ternary in it (whose layers quantize their activations, W1.58A8).
pub type Perplexity<'a> = dyn FnMut(&StateDict, &BTreeSet<String>) -> f64 + 'a;

/// Quantize `sd` layer by layer under `preserve`, scoring each state with `perplexity` and
/// reverting layers over `max_layer_drop` to `revert_to`.
pub fn staged(
    sd: &StateDict,
    preserve: &[Preserve],
    max_layer_drop: f64,
    revert_to: Precision,
    perplexity: &mut Perplexity,
) -> Staged {
    let none = BTreeSet::new();
    let before = perplexity(sd, &none);
    let mut current = sd.clone();
    let mut ternary = BTreeSet::new();
    let mut accepted = before;
    let (mut reverted, mut decisions) = (BTreeSet::new(), Vec::new());
    for (layer, names) in layers(sd, preserve) {
        let mut candidate = current.clone();
        let (mut params, mut zeros, mut stored, mut kept) = (0usize, 0usize, 0usize, 0usize);
        for n in &names {
            let q = quantize_tensor(n, &sd.tensors[n], preserve, &none, revert_to);
            params += q.numel();
            zeros += q.zeros();
            stored += q.stored_bytes();
            let one = BTreeSet::from([n.clone()]);
            kept += quantize_tensor(n, &sd.tensors[n], preserve, &one, revert_to).stored_bytes();
            candidate
                .tensors
                .get_mut(n)
                .expect("a tensor of the model")
                .data = q.values();
        }
        let candidate_ternary: BTreeSet<String> = ternary.iter().chain(&names).cloned().collect();
        let after = perplexity(&candidate, &candidate_ternary);
        let increase = after / accepted - 1.0;
        // A NaN perplexity (a broken layer) is over any budget.
        let revert = increase.is_nan() || increase > max_layer_drop;
        if revert {
            reverted.extend(names.iter().cloned());
        } else {
            current = candidate;
            ternary = candidate_ternary;
        }
        let sizes = Sizes {
            params,
            zeros,
            stored,
            kept,
        };
        decisions.push(sizes.decision(layer, (accepted, after), revert));
        if !revert {
            accepted = after;
        }
    }
    Staged {
        model: QuantizedModel::quantize(sd, preserve, &reverted, revert_to),
        layers: decisions,
        reverted,
        perplexity_before: before,
        perplexity_after: accepted,
    }
}

/// The weights of a fine-tuned quantization: its ternary layers come from the `latent` weights
/// STE fine-tuning left, a reverted layer's linear weights from the `input` model (the latent
/// ones were trained to be ternary, not to be used as they are), everything else (embeddings,
/// norms: trained alongside) from `latent`.
pub struct Tuned<'a> {
    pub input: &'a StateDict,
    pub latent: &'a StateDict,
}

impl Tuned<'_> {
    /// The state dict to quantize with `reverted` reverted.
    pub fn merged(&self, reverted: &BTreeSet<String>) -> StateDict {
        let mut sd = self.latent.clone();
        for n in reverted {
            if let (Some(t), Some(input)) = (sd.tensors.get_mut(n), self.input.tensors.get(n)) {
                *t = input.clone();
            }
        }
        sd
    }
}

/// Layer by layer with rollback for a fine-tuned model, which was trained with every candidate
/// layer ternary: it starts from that state and, in the same fixed order, scores each layer
/// reverted to the input's weights (at `revert_to`); a layer whose being ternary raises
/// perplexity by more than `max_layer_drop` over its reverted version stays reverted.
/// `perplexity_before` is the input model's.
pub fn staged_tuned(
    tuned: &Tuned,
    preserve: &[Preserve],
    max_layer_drop: f64,
    revert_to: Precision,
    perplexity: &mut Perplexity,
) -> Staged {
    let none = BTreeSet::new();
    let input_perplexity = perplexity(tuned.input, &none);
    let state = |reverted: &BTreeSet<String>| {
        QuantizedModel::quantize(&tuned.merged(reverted), preserve, reverted, revert_to)
    };
    let mut reverted = BTreeSet::new();
    let mut model = state(&reverted);
    let mut accepted = perplexity(&model.dequantize(), &model.ternary_names());
    let mut decisions = Vec::new();
    for (layer, names) in layers(tuned.latent, preserve) {
        let candidate: BTreeSet<String> = reverted.iter().chain(&names).cloned().collect();
        let back = state(&candidate);
        let without = perplexity(&back.dequantize(), &back.ternary_names());
        let increase = accepted / without - 1.0;
        let revert = increase.is_nan() || increase > max_layer_drop;
        let (mut params, mut zeros, mut stored, mut kept) = (0usize, 0usize, 0usize, 0usize);
        for n in &names {
            let (t, k) = (&model.tensors[n], &back.tensors[n]);
            params += t.numel();
            zeros += t.zeros();
            stored += t.stored_bytes();
            kept += k.stored_bytes();
        }
        let sizes = Sizes {
            params,
            zeros,
            stored,
            kept,
        };
        decisions.push(sizes.decision(layer, (without, accepted), revert));
        if revert {
            reverted = candidate;
            model = back;
            accepted = without;
        }
    }
    Staged {
        model,
        layers: decisions,
        reverted,
        perplexity_before: input_perplexity,
        perplexity_after: accepted,
    }
}

/// The candidate tensors of each layer, layers in order (blocks by number, then the rest).
fn layers(sd: &StateDict, preserve: &[Preserve]) -> Vec<(String, Vec<String>)> {
    let mut layers: BTreeMap<(u8, usize, String), Vec<String>> = BTreeMap::new();
    for (name, t) in &sd.tensors {
        if becomes_ternary(name, &t.shape, preserve) {
            let layer = layer_of(name);
            let key = match layer.strip_prefix("blocks.").and_then(|i| i.parse().ok()) {
                Some(i) => (0, i, layer),
                None => (1, 0, layer),
            };
            layers.entry(key).or_default().push(name.clone());
        }
    }
    layers.into_iter().map(|((_, _, l), n)| (l, n)).collect()
}

/// The seed's conservative fallback: while the calibration perplexity of `s`'s model passes
/// `budget`, revert the accepted layer whose increase was largest (its ternary weights go back to
/// `revert_to`, from `tuned.input` when fine-tuned) and score again. The layers it reverted, in
/// order.
pub fn fall_back(
    s: &mut Staged,
    sd: &StateDict,
    tuned: Option<&Tuned>,
    preserve: &[Preserve],
    revert_to: Precision,
    budget: f64,
    perplexity: &mut Perplexity,
) -> Vec<String> {
    let mut ranked: Vec<(f64, String)> = s
        .layers
        .iter()
        .filter(|d| !d.reverted)
        .map(|d| (d.increase, d.layer_name.clone()))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut reverted_layers = Vec::new();
    for (_, layer) in ranked {
        if s.perplexity_after <= budget {
            break;
        }
        let names: Vec<String> = s
            .model
            .tensors
            .iter()
            .filter(|(n, t)| t.is_ternary() && layer_of(n) == layer)
            .map(|(n, _)| n.clone())
            .collect();
        s.reverted.extend(names);
        let source = tuned.map(|t| t.merged(&s.reverted));
        s.model = QuantizedModel::quantize(
            source.as_ref().unwrap_or(sd),
            preserve,
            &s.reverted,
            revert_to,
        );
        s.perplexity_after = perplexity(&s.model.dequantize(), &s.model.ternary_names());
        reverted_layers.push(layer);
    }
    reverted_layers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::tensors::Tensor;
    use crate::quant::model::{Stored, default_preserve};

    fn model() -> StateDict {
        let t = |shape: &[usize], seed: usize| Tensor {
            shape: shape.to_vec(),
            data: (0..shape.iter().product::<usize>())
                .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 40.0)
                .collect(),
        };
        let tensors = [
            ("embed", t(&[8, 4], 0)),
            ("blocks.0.attn.wq.weight", t(&[4, 4], 1)),
            ("blocks.0.norm_attn.gain", t(&[4], 2)),
            ("blocks.1.attn.wq.weight", t(&[4, 4], 3)),
            ("blocks.1.ffn.up.weight", t(&[4, 8], 4)),
            ("blocks.10.attn.wq.weight", t(&[4, 4], 5)),
            ("halt.weight", t(&[4, 1], 6)),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        StateDict { tensors }
    }

    /// A stand-in score that rises by 1% per ternary layer — and by 50% when `blocks.1`'s
    /// weights are ternary: the forced over-budget layer.
    fn perplexity(sd: &StateDict, original: &StateDict) -> f64 {
        let changed = |n: &str| sd.tensors[n] != original.tensors[n];
        let mut p = 10.0;
        for n in [
            "blocks.0.attn.wq.weight",
            "blocks.10.attn.wq.weight",
            "halt.weight",
        ] {
            if changed(n) {
                p *= 1.01;
            }
        }
        if changed("blocks.1.attn.wq.weight") {
            p *= 1.5;
        }
        p
    }

    #[test]
    fn layers_go_in_block_order_then_the_heads() {
        assert_eq!(layer_of("blocks.12.ffn.up.weight"), "blocks.12");
        assert_eq!(layer_of("halt.weight"), "halt");
        assert_eq!(layer_of("embed"), "embed");
    }

    #[test]
    fn a_layer_whose_drop_is_forced_over_budget_is_reverted_and_the_rest_are_kept() {
        let sd = model();
        let mut seen: Vec<BTreeSet<String>> = Vec::new();
        let s = staged(
            &sd,
            &default_preserve(),
            0.05,
            Precision::F16,
            &mut |m, t| {
                seen.push(t.clone());
                perplexity(m, &sd)
            },
        );
        let order: Vec<(&str, bool)> = s
            .layers
            .iter()
            .map(|d| (d.layer_name.as_str(), d.reverted))
            .collect();
        assert_eq!(
            order,
            [
                ("blocks.0", false),
                ("blocks.1", true),
                ("blocks.10", false),
                ("halt", false)
            ]
        );
        assert_eq!(seen.len(), 1 + 4, "the input, then once per layer");
        // Each state is scored knowing its ternary tensors: none for the input; the accepted
        // layers' and the candidate's (not the reverted blocks.1's) for the last one.
        assert!(seen[0].is_empty());
        assert!(seen[2].contains("blocks.1.ffn.up.weight"));
        let last = &seen[4];
        assert!(last.contains("halt.weight") && last.contains("blocks.0.attn.wq.weight"));
        assert!(last.contains("blocks.10.attn.wq.weight"));
        assert!(!last.contains("blocks.1.ffn.up.weight") && !last.contains("embed"));
        let b1 = &s.layers[1];
        assert!((b1.increase - (15.15 / 10.1 - 1.0)).abs() < 1e-9, "{b1:?}");
        assert_eq!((b1.quantized_params, b1.preserved_params), (0, 48));
        // Kept at f16: half the bytes of f32; the accepted 4×4 layer is one 32-byte packed row
        // per output and a 4-byte scale (64 bytes f32 / 132 bytes: padding costs at this size).
        assert_eq!(b1.compression_ratio, 2.0);
        assert_eq!(s.layers[0].compression_ratio, 64.0 / 132.0);
        assert_eq!(s.layers[0].kept_ratio, 2.0);
        assert_eq!(s.perplexity_before, 10.0);
        assert!((s.perplexity_after - 10.0 * 1.01f64.powi(3)).abs() < 1e-9);
        // The reverted layer's weights keep the revert precision; the others are ternary.
        assert!(matches!(
            s.model.tensors["blocks.1.ffn.up.weight"],
            Stored::F16 { .. }
        ));
        assert!(s.model.tensors["blocks.10.attn.wq.weight"].is_ternary());
        assert!(matches!(s.model.tensors["embed"], Stored::F16 { .. }));
        // With a budget above the forced drop, nothing is reverted.
        let all = staged(
            &sd,
            &default_preserve(),
            0.6,
            Precision::F16,
            &mut |m, _| perplexity(m, &sd),
        );
        assert!(all.reverted.is_empty() && all.layers.iter().all(|d| !d.reverted));
    }

    #[test]
    fn the_fallback_reverts_the_costliest_accepted_layers_until_the_model_is_within_budget() {
        let sd = model();
        // blocks.10 costs 4%, the others 1%; no layer passes the per-layer budget of 5%.
        let score = |m: &StateDict| {
            let changed = |n: &str| m.tensors[n] != sd.tensors[n];
            let mut p = 10.0;
            for (n, f) in [
                ("blocks.0.attn.wq.weight", 1.01),
                ("blocks.1.attn.wq.weight", 1.01),
                ("blocks.10.attn.wq.weight", 1.04),
                ("halt.weight", 1.01),
            ] {
                if changed(n) {
                    p *= f;
                }
            }
            p
        };
        let mut s = staged(
            &sd,
            &default_preserve(),
            0.05,
            Precision::F32,
            &mut |m, _| score(m),
        );
        assert!(s.reverted.is_empty());
        let all = 10.0 * 1.01f64.powi(3) * 1.04;
        assert!((s.perplexity_after - all).abs() < 1e-9);
        // Within 3.1% of the input: reverting blocks.10 (+4%) is enough (1.01³ = 1.0303).
        let back = fall_back(
            &mut s,
            &sd,
            None,
            &default_preserve(),
            Precision::F32,
            10.31,
            &mut |m, _| score(m),
        );
        assert_eq!(back, ["blocks.10"]);
        assert!((s.perplexity_after - 10.0 * 1.01f64.powi(3)).abs() < 1e-9);
        // Reverted to f32 here, so the stand-in score sees the original weights again.
        assert!(matches!(
            s.model.tensors["blocks.10.attn.wq.weight"],
            Stored::F32(_)
        ));
        assert!(s.model.tensors["blocks.0.attn.wq.weight"].is_ternary());
        // A budget nothing meets reverts every accepted layer, costliest first.
        let mut t = staged(
            &sd,
            &default_preserve(),
            0.05,
            Precision::F32,
            &mut |m, _| score(m),
        );
        let every = fall_back(
            &mut t,
            &sd,
            None,
            &default_preserve(),
            Precision::F32,
            1.0,
            &mut |m, _| score(m),
        );
        assert_eq!(every[0], "blocks.10");
        assert_eq!(every.len(), 4);
        assert_eq!(t.perplexity_after, 10.0);
    }

    #[test]
    fn a_fine_tuned_model_starts_all_ternary_and_a_costly_layer_goes_back_to_the_input_weights() {
        let input = model();
        let mut latent = input.clone();
        for t in latent.tensors.values_mut() {
            for v in &mut t.data {
                *v = *v * 1.5 + 0.01;
            }
        }
        let tuned = Tuned {
            input: &input,
            latent: &latent,
        };
        // The stand-in score, from which tensors are ternary: 1% a layer, 50% for blocks.1.
        let mut seen = Vec::new();
        let s = staged_tuned(
            &tuned,
            &default_preserve(),
            0.05,
            Precision::F32,
            &mut |_, ternary| {
                seen.push(ternary.clone());
                let mut p = 10.0;
                for (n, f) in [
                    ("blocks.0.attn.wq.weight", 1.01),
                    ("blocks.1.attn.wq.weight", 1.5),
                    ("blocks.10.attn.wq.weight", 1.01),
                    ("halt.weight", 1.01),
                ] {
                    if ternary.contains(n) {
                        p *= f;
                    }
                }
                p
            },
        );
        assert_eq!(s.perplexity_before, 10.0, "the input model's");
        assert!(
            seen[0].is_empty() && seen[1].len() == 5,
            "input, then all ternary"
        );
        let order: Vec<(&str, bool)> = s
            .layers
            .iter()
            .map(|d| (d.layer_name.as_str(), d.reverted))
            .collect();
        assert_eq!(
            order,
            [
                ("blocks.0", false),
                ("blocks.1", true),
                ("blocks.10", false),
                ("halt", false)
            ]
        );
        assert!((s.layers[1].increase - 0.5).abs() < 1e-9);
        assert!((s.perplexity_after - 10.0 * 1.01f64.powi(3)).abs() < 1e-9);
        // Reverted: the input's weights; ternary: the latent ones quantized; the rest: latent.
        assert_eq!(
            s.model.tensors["blocks.1.ffn.up.weight"],
            Stored::F32(input.tensors["blocks.1.ffn.up.weight"].clone())
        );
        let none = BTreeSet::new();
        let wq = "blocks.0.attn.wq.weight";
        let want = quantize_tensor(wq, &latent.tensors[wq], &[], &none, Precision::F32);
        assert_eq!(s.model.tensors[wq], want);
        assert_eq!(
            s.model.tensors["blocks.0.norm_attn.gain"],
            Stored::F32(latent.tensors["blocks.0.norm_attn.gain"].clone())
        );
        // The fallback reverts to the input's weights too.
        let mut s = s;
        let back = fall_back(
            &mut s,
            &latent,
            Some(&tuned),
            &default_preserve(),
            Precision::F32,
            0.0,
            &mut |_, _| 11.0,
        );
        assert_eq!(back.len(), 3);
        assert_eq!(s.model.tensors[wq], Stored::F32(input.tensors[wq].clone()));
    }
}
