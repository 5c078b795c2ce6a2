//! Layer-wise techniques: `frankenmerge` (mergekit's passthrough slices: output layers copied
//! from named layer ranges of named models, so depth may change) and `routing` (a per-layer
//! choice of which source model's block runs at each depth, with a per-layer scale on what that
//! block writes into the residual stream). `routing` is what the seed plan calls "DFS"; it is not
//! Sakana's data-flow-space search (which evolves the path of layers a token takes, and may
//! repeat or skip layers), so it is not named after it.
//!
//! Layers are found by name: the first all-digit segment of a tensor name is its layer index and
//! what comes before it the layer prefix (`blocks.3.attn.wq.weight` → `blocks`, 3;
//! `model.layers.7.mlp.up_proj.weight` → `model.layers`, 7). Tensors without one (embeddings,
//! final norm, heads) are not layers and come from the model named by `rest_from`.
//!
//! Routing's scaling multiplies the block's residual-writing projections (attention and memory output,
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
    depth_of(model.tensors.keys().map(String::as_str))
}

/// One output layer: the source model, its layer, and the residual scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerPick {
    /// Index into the merge's models.
    pub model: usize,
    /// The source model's layer (0-based).
    pub layer: usize,
    /// Scale on what the layer writes to the residual stream (1: as trained).
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

/// Where one output tensor of a layer-wise merge comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub model: usize,
    pub name: String,
    /// 1, or the pick's scale for a residual-writing projection.
    pub scale: f64,
}

impl Source {
    /// Apply the scale to the source tensor's values.
    pub fn scale_values(&self, values: &mut [f32]) {
        if self.scale != 1.0 {
            for x in values {
                *x = (*x as f64 * self.scale) as f32;
            }
        }
    }
}

/// Number of layers among these tensor names (1 + the highest layer index).
pub fn depth_of<'a>(names: impl IntoIterator<Item = &'a str>) -> usize {
    names
        .into_iter()
        .filter_map(|k| split_layer(k).map(|(_, l, _)| l + 1))
        .max()
        .unwrap_or(0)
}

/// Route a layer-wise merge over models given by their tensor names: output layer k is
/// `picks[k]` (renamed to index k), every other tensor comes from `rest_from`.
pub fn route(
    names: &[Vec<&str>],
    picks: &[LayerPick],
    rest_from: usize,
) -> Result<BTreeMap<String, Source>, String> {
    let get = |i: usize| {
        names
            .get(i)
            .ok_or_else(|| format!("model index {i} out of range (there are {})", names.len()))
    };
    let mut out = BTreeMap::new();
    for name in get(rest_from)? {
        if split_layer(name).is_none() {
            let source = Source {
                model: rest_from,
                name: name.to_string(),
                scale: 1.0,
            };
            out.insert(name.to_string(), source);
        }
    }
    for (k, pick) in picks.iter().enumerate() {
        let src = get(pick.model)?;
        let mut found = false;
        for name in src {
            let Some((prefix, layer, rest)) = split_layer(name) else {
                continue;
            };
            if layer != pick.layer {
                continue;
            }
            found = true;
            let writes_residual = OUT_PROJECTIONS.iter().any(|p| name.ends_with(p));
            let source = Source {
                model: pick.model,
                name: name.to_string(),
                scale: if writes_residual { pick.scale } else { 1.0 },
            };
            out.insert(format!("{prefix}.{k}.{rest}"), source);
        }
        if !found {
            return Err(format!(
                "model {} has no layer {} (it has {})",
                pick.model,
                pick.layer,
                depth_of(src.iter().copied())
            ));
        }
    }
    Ok(out)
}

/// Build a model whose layer k is `picks[k]` and whose other tensors come from `rest_from`.
pub fn assemble(
    models: &[&StateDict],
    picks: &[LayerPick],
    rest_from: usize,
) -> Result<StateDict, String> {
    let names: Vec<Vec<&str>> = models
        .iter()
        .map(|m| m.tensors.keys().map(String::as_str).collect())
        .collect();
    let tensors = route(&names, picks, rest_from)?
        .into_iter()
        .map(|(out, source)| {
            let mut t: Tensor = models[source.model].tensors[&source.name].clone();
            source.scale_values(&mut t.data);
            (out, t)
        })
        .collect();
    Ok(StateDict { tensors })
}

/// Keep a model's `config.json` in step with merged weights whose depth may have changed
/// (frankenmerge): `model.layers` and `model.memory_layers` follow the tensor names.
pub fn sync_config<'a>(
    config: &mut serde_json::Value,
    names: impl Iterator<Item = &'a str> + Clone,
) {
    let depth = depth_of(names.clone());
    if let Some(m) = config
        .get_mut("model")
        .and_then(serde_json::Value::as_object_mut)
        && m.contains_key("layers")
    {
        let memory: std::collections::BTreeSet<usize> = names
            .filter_map(split_layer)
            .filter(|(_, _, rest)| rest.starts_with("memory."))
            .map(|(_, layer, _)| layer)
            .collect();
        m.insert("layers".into(), serde_json::json!(depth));
        m.insert("memory_layers".into(), serde_json::json!(memory));
    }
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
    fn routing_picks_each_layer_and_scales_what_it_writes() {
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
