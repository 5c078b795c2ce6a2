//! What a `merge` step names: the six techniques (`technique: { method: … }`) and the
//! task-arithmetic knobs TIES, DARE and the combos' second stage share ([`TaskArithmetic`]: one
//! home for `density`, `lambda` and `rescale`, with one set of defaults and one validator).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::layers::{LayerPick, Slice, slices_to_picks};
use super::methods::Rescale;

/// Task arithmetic over a base: keep a `density` fraction of each task vector (TIES by magnitude,
/// DARE at random, rescaled by `rescale`), combine, scale by `lambda`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskArithmetic {
    /// Fraction of each task vector kept, in (0, 1].
    #[serde(default = "defaults::density")]
    pub density: f64,
    /// Scale of the merged task vector.
    #[serde(default = "defaults::lambda")]
    pub lambda: f64,
    /// How DARE rescales what it keeps.
    #[serde(default)]
    pub rescale: Rescale,
}

/// The defaults of [`TaskArithmetic`], for every place that spells its fields out.
pub mod defaults {
    pub fn density() -> f64 {
        0.5
    }
    pub fn lambda() -> f64 {
        1.0
    }
}

impl Default for TaskArithmetic {
    fn default() -> Self {
        Self {
            density: defaults::density(),
            lambda: defaults::lambda(),
            rescale: Rescale::default(),
        }
    }
}

impl TaskArithmetic {
    /// Why these settings cannot be used, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if !(self.density > 0.0 && self.density <= 1.0) {
            return Some(format!("density {} must be in (0, 1]", self.density));
        }
        if !self.lambda.is_finite() {
            return Some(format!("lambda {} must be finite", self.lambda));
        }
        None
    }
}

/// One merge technique and its parameters (`method:` picks it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum Technique {
    /// Weighted average (Model Soups).
    Linear {
        /// Per-model weights (default: equal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<Vec<f64>>,
        /// Divide by the sum of the weights.
        #[serde(default = "yes")]
        normalize: bool,
    },
    /// Spherical interpolation between exactly two models; `t = 0` gives the first.
    Slerp {
        /// Interpolation position from the first model (0) to the second (1).
        #[serde(default = "half")]
        t: f64,
    },
    /// TIES over the `base`: trim to `density`, elect signs by sum, disjoint mean, × `lambda`.
    Ties {
        /// Per-model weights of the task vectors (default: equal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<Vec<f64>>,
        /// Fraction of each task vector's largest-magnitude entries kept, in (0, 1].
        #[serde(default = "defaults::density")]
        density: f64,
        /// Scale of the merged task vector added to the base.
        #[serde(default = "defaults::lambda")]
        lambda: f64,
        /// Divide by the sum of the weights.
        #[serde(default = "yes")]
        normalize: bool,
    },
    /// DARE over the `base`: keep entries with probability `density`, rescale, average.
    Dare {
        /// Probability of keeping each task-vector entry, in (0, 1].
        #[serde(default = "defaults::density")]
        density: f64,
        /// How the kept entries are rescaled.
        #[serde(default)]
        rescale: Rescale,
        /// Scale of the merged task vector added to the base.
        #[serde(default = "defaults::lambda")]
        lambda: f64,
        /// Per-model weights of the task vectors (default: equal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<Vec<f64>>,
        /// Divide by the sum of the weights.
        #[serde(default = "yes")]
        normalize: bool,
    },
    /// Layer stacking from named layer ranges of the models (mergekit passthrough slices).
    Frankenmerge {
        /// Layer ranges, in output order: `{ model: 0, layers: [0, 2] }` takes layers 0 and 1.
        slices: Vec<Slice>,
        /// Model whose non-layer tensors (embeddings, final norm, heads) are used.
        #[serde(default)]
        rest_from: usize,
    },
    /// Per-layer routing: which model's block runs at each depth, with a residual scale (the
    /// seed plan's "DFS").
    Routing {
        /// One pick per output layer, in order.
        routing: Vec<LayerPick>,
        /// Model whose non-layer tensors (embeddings, final norm, heads) are used.
        #[serde(default)]
        rest_from: usize,
    },
}

fn yes() -> bool {
    true
}
fn half() -> f64 {
    0.5
}

impl Technique {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Linear { .. } => "linear",
            Self::Slerp { .. } => "slerp",
            Self::Ties { .. } => "ties",
            Self::Dare { .. } => "dare",
            Self::Frankenmerge { .. } => "frankenmerge",
            Self::Routing { .. } => "routing",
        }
    }
    pub fn needs_base(&self) -> bool {
        matches!(self, Self::Ties { .. } | Self::Dare { .. })
    }
    /// The task-arithmetic settings of TIES and DARE.
    pub fn task(&self) -> Option<TaskArithmetic> {
        match *self {
            Self::Ties {
                density, lambda, ..
            } => Some(TaskArithmetic {
                density,
                lambda,
                rescale: Rescale::default(),
            }),
            Self::Dare {
                density,
                lambda,
                rescale,
                ..
            } => Some(TaskArithmetic {
                density,
                lambda,
                rescale,
            }),
            _ => None,
        }
    }

    /// Problems with the parameters themselves (ranges, empty selections), whatever the inputs.
    pub fn check_params(&self) -> Option<String> {
        match self {
            Self::Linear { .. } => None,
            Self::Slerp { t } => {
                (!(0.0..=1.0).contains(t)).then(|| format!("t {t} must be in [0, 1]"))
            }
            Self::Ties { .. } | Self::Dare { .. } => self.task().and_then(|t| t.problem()),
            Self::Frankenmerge { slices, .. } => slices_to_picks(slices)
                .is_empty()
                .then(|| "no layers selected".to_string()),
            Self::Routing { routing, .. } => {
                routing.is_empty().then(|| "no layers routed".to_string())
            }
        }
    }

    /// Problems with applying these parameters to `n` input models (counts, weights, indices).
    pub fn check_inputs(&self, n: usize) -> Option<String> {
        let weights_ok = |w: &Option<Vec<f64>>| match w {
            Some(w) if w.len() != n => Some(format!(
                "{} weights for {n} models; give one per model",
                w.len()
            )),
            _ => None,
        };
        match self {
            Self::Linear { weights, .. } => (n < 2)
                .then(|| "linear needs at least 2 models".to_string())
                .or_else(|| weights_ok(weights)),
            Self::Slerp { .. } => {
                (n != 2).then(|| format!("slerp merges exactly 2 models, not {n}"))
            }
            Self::Ties { weights, .. } | Self::Dare { weights, .. } => (n < 1)
                .then(|| "task arithmetic needs at least 1 model".to_string())
                .or_else(|| weights_ok(weights)),
            Self::Frankenmerge { .. } | Self::Routing { .. } => {
                let (picks, rest_from) = self.picks().expect("layer-wise");
                picks
                    .iter()
                    .map(|p| p.model)
                    .chain([rest_from])
                    .find(|&m| m >= n)
                    .map(|m| {
                        format!("model index {m} out of range: there are {n} models (0-based)")
                    })
            }
        }
    }

    pub(crate) fn picks(&self) -> Option<(Vec<LayerPick>, usize)> {
        match self {
            Self::Frankenmerge { slices, rest_from } => Some((slices_to_picks(slices), *rest_from)),
            Self::Routing { routing, rest_from } => Some((routing.clone(), *rest_from)),
            _ => None,
        }
    }
}
