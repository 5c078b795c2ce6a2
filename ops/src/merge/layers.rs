//! Layer-wise techniques: `frankenmerge` (mergekit's passthrough slices: output layers copied
//! from named layer ranges of named models, so depth may change) and `dfs` (a data-flow-space
//! merge after Sakana's evolutionary merging: a per-layer routing that says which source model's
//! block runs at each depth, with a per-layer scale on what that block writes into the residual
//! stream).
//!
//! Layers are found by name: the first all-digit segment of a tensor name is its layer index and
//! what comes before it the layer prefix (`blocks.3.attn.wq.weight` → `blocks`, 3;
//! `model.layers.7.mlp.up_proj.weight` → `model.layers`, 7). Tensors without one (embeddings,
//! final norm, heads) are not layers and come from the model named by `rest_from`.
//!
//! DFS scaling multiplies the block's residual-writing projections (attention and memory output,
//! the MLP's down projection; see [`OUT_PROJECTIONS`]), which scales the block's contribution to
//! the residual stream — the weight-space form of Sakana's per-layer scaling of the data flow.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::tensors::{StateDict, Tensor};

/// Name endings of the projections through which a block writes into the residual stream.
pub const OUT_PROJECTIONS: &[&str] = &[
    "attn.wo.weight",
    "memory.wo.weight",
    "ffn.down.weight",
    "self_attn.o_proj.weight",
    "mlp.down_proj.weight",
];

/// A tensor name split at its layer index.
pub fn split_layer(name: &str) -> Option<(String, usize, String)> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = parts
        .iter()
        .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?;
    let layer = parts[i].parse().ok()?;
    Some((parts[..i].join("."), layer, parts[i + 1..].join(".")))
}

/// Number of layers of a model (1 + the highest layer index).
pub fn depth(model: &StateDict) -> usize {
    model
        .tensors
        .keys()
        .filter_map(|k| split_layer(k).map(|(_, l, _)| l + 1))
        .max()
        .unwrap_or(0)
}

/// One output layer: the source model, its layer, and the residual scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerPick {
    pub model: usize,
    pub layer: usize,
    #[serde(default = "one")]
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

/// mergekit passthrough slice: layers `layers[0]..layers[1]` of model `model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// Index into the merge's models.
    pub model: usize,
    /// Half-open layer range `[start, end)`.
    pub layers: [usize; 2],
}

/// Expand slices into per-layer picks (scale 1).
pub fn slices_to_picks(slices: &[Slice]) -> Vec<LayerPick> {
    slices
        .iter()
        .flat_map(|s| {
            (s.layers[0]..s.layers[1]).map(move |l| LayerPick {
                model: s.model,
                layer: l,
                scale: 1.0,
            })
        })
        .collect()
}

/// Build a model whose layer k is `picks[k]` and whose other tensors come from `rest_from`.
pub fn assemble(
    models: &[&StateDict],
    picks: &[LayerPick],
    rest_from: usize,
) -> Result<StateDict, String> {
    let get = |i: usize| {
        models
            .get(i)
            .copied()
            .ok_or_else(|| format!("model index {i} out of range (there are {})", models.len()))
    };
    // Each source layer's tensors, by (model, layer) → [(prefix, suffix, tensor)].
    let mut out = BTreeMap::new();
    for (k, t) in &get(rest_from)?.tensors {
        if split_layer(k).is_none() {
            out.insert(k.clone(), t.clone());
        }
    }
    for (k, pick) in picks.iter().enumerate() {
        let src = get(pick.model)?;
        let mut found = false;
        for (name, t) in &src.tensors {
            let Some((prefix, layer, rest)) = split_layer(name) else {
                continue;
            };
            if layer != pick.layer {
                continue;
            }
            found = true;
            let mut t: Tensor = t.clone();
            if pick.scale != 1.0 && OUT_PROJECTIONS.iter().any(|p| name.ends_with(p)) {
                for x in &mut t.data {
                    *x = (*x as f64 * pick.scale) as f32;
                }
            }
            out.insert(format!("{prefix}.{k}.{rest}"), t);
        }
        if !found {
            return Err(format!(
                "model {} has no layer {} (it has {})",
                pick.model,
                pick.layer,
                depth(src)
            ));
        }
    }
    Ok(StateDict { tensors: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(tag: f32, layers: usize) -> StateDict {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "embed".to_string(),
            Tensor {
                shape: vec![2],
                data: vec![tag, tag],
            },
        );
        for l in 0..layers {
            for part in ["attn.wq.weight", "attn.wo.weight"] {
                tensors.insert(
                    format!("blocks.{l}.{part}"),
                    Tensor {
                        shape: vec![1],
                        data: vec![tag * 10.0 + l as f32],
                    },
                );
            }
        }
        StateDict { tensors }
    }

    #[test]
    fn layer_names_split_at_the_first_index() {
        assert_eq!(
            split_layer("model.layers.7.mlp.up_proj.weight"),
            Some(("model.layers".into(), 7, "mlp.up_proj.weight".into()))
        );
        assert_eq!(split_layer("embed"), None);
    }

    #[test]
    fn frankenmerge_stacks_the_named_layers_of_the_named_models() {
        let (a, b) = (model(1.0, 3), model(2.0, 3));
        // Layers 0..2 of A, then 1..3 of B: four layers, mergekit passthrough-style.
        let picks = slices_to_picks(&[
            Slice {
                model: 0,
                layers: [0, 2],
            },
            Slice {
                model: 1,
                layers: [1, 3],
            },
        ]);
        let m = assemble(&[&a, &b], &picks, 1).unwrap();
        assert_eq!(depth(&m), 4);
        let v = |k: &str| m.tensors[k].data[0];
        assert_eq!(v("blocks.0.attn.wq.weight"), 10.0);
        assert_eq!(v("blocks.1.attn.wq.weight"), 11.0);
        assert_eq!(v("blocks.2.attn.wq.weight"), 21.0);
        assert_eq!(v("blocks.3.attn.wq.weight"), 22.0);
        assert_eq!(m.tensors["embed"].data, vec![2.0, 2.0], "rest from model 1");
        assert!(
            assemble(&[&a], &picks, 0).is_err(),
            "model 1 does not exist"
        );
    }

    #[test]
    fn dfs_routes_each_layer_and_scales_what_it_writes() {
        let (a, b, c) = (model(1.0, 2), model(2.0, 2), model(3.0, 2));
        let picks = [
            LayerPick {
                model: 2,
                layer: 0,
                scale: 0.5,
            },
            LayerPick {
                model: 0,
                layer: 1,
                scale: 1.0,
            },
        ];
        let m = assemble(&[&a, &b, &c], &picks, 1).unwrap();
        let v = |k: &str| m.tensors[k].data[0];
        assert_eq!(
            v("blocks.0.attn.wq.weight"),
            30.0,
            "input projection unscaled"
        );
        assert_eq!(
            v("blocks.0.attn.wo.weight"),
            15.0,
            "output projection × 0.5"
        );
        assert_eq!(v("blocks.1.attn.wo.weight"), 11.0);
        assert_eq!(depth(&m), 2);
    }
}
