//! Quantization-aware training for BitNet b1.58 (Phase 4): the forward pass sees the ternary
//! weights `W_q·γ` ([`crate::quant::ternary`]) and int8 activations, the gradient reaches the
//! latent full-precision weights unchanged — the straight-through estimator. [`ternarize`] builds the model a step
//! runs, with each named weight `W_q·γ + (W − W.detach())`: its value is exactly the ternary
//! weight the artifact will store, its gradient w.r.t. `W` the identity. [`Ternary`] wraps any
//! [`Objective`] so the training loop (optimizer, checkpoints, resume) is the usual one.

use std::collections::BTreeSet;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use super::objective::{Draw, Objective, ObjectiveStep};
use crate::model::TrmTitansMag;
use crate::quant::quantize_weights;

struct Ternarize<'a> {
    path: Vec<String>,
    names: &'a BTreeSet<String>,
    /// Whether the other parameters keep their gradient (else they are held fixed).
    train_others: bool,
}

impl ModuleMapper for Ternarize<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.names.contains(&self.path.join(".")) {
            if self.train_others {
                return param;
            }
            let (id, w, mapper) = param.consume();
            return Param::from_mapped_value(id, w.detach(), mapper);
        }
        let (id, w, mapper) = param.consume();
        let shape = w.shape();
        let values: Vec<f32> = w
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32 weights");
        let q = quantize_weights(&values).dequantize();
        let q: Tensor<D> = Tensor::from_data(TensorData::new(q, shape), &w.device());
        // Value: exactly q (w − w is 0); gradient w.r.t. w: the identity.
        let ste = q.add(w.clone().sub(w.detach()));
        Param::from_mapped_value(id, ste, mapper)
    }
}

/// `model` with each weight named in `names` replaced by its straight-through ternary version,
/// and its layers' activations quantized to int8 (also straight through): the W1.58A8 forward
/// pass of the quantized model. Unless `train_others`, every other parameter is detached, so
/// a step changes only the ternary layers' latent weights.
pub fn ternarize(
    model: &TrmTitansMag,
    names: &BTreeSet<String>,
    train_others: bool,
) -> TrmTitansMag {
    let mut ste = model.clone().map(&mut Ternarize {
        path: Vec::new(),
        names,
        train_others,
    });
    crate::model::ternary::in_burn(&mut ste, names);
    ste
}

/// An objective computed on the ternary forward pass of the weights in `names`.
pub struct Ternary<'a> {
    pub inner: &'a dyn Objective,
    pub names: &'a BTreeSet<String>,
    /// Train the other parameters too (embeddings, norms) — or hold them at their values.
    pub train_others: bool,
}

impl Objective for Ternary<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn step(&self, model: &TrmTitansMag, rows: &[Vec<i64>], at: Draw) -> ObjectiveStep {
        self.inner
            .step(&ternarize(model, self.names, self.train_others), rows, at)
    }
}

#[cfg(test)]
mod tests {
    use burn::module::ModuleVisitor;
    use burn::optim::GradientsParams;
    use burn::tensor::Int;

    use super::*;
    use crate::model::{ModelConfig, Tables};

    use crate::model::weights::named_values as named;

    fn grads_of(model: &TrmTitansMag, out: &crate::model::TrainOutput) -> Vec<(String, Vec<f32>)> {
        struct G<'a>(Vec<String>, &'a GradientsParams, Vec<(String, Vec<f32>)>);
        impl ModuleVisitor for G<'_> {
            fn enter_module(&mut self, name: &str, _c: &str) {
                self.0.push(name.to_owned());
            }
            fn exit_module(&mut self, _name: &str, _c: &str) {
                self.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if let Some(g) = self.1.get::<D>(p.id) {
                    self.2
                        .push((self.0.join("."), g.to_data().try_to_vec().unwrap()));
                }
            }
        }
        let grads = GradientsParams::from_grads(out.loss.backward(), model);
        let mut g = G(Vec::new(), &grads, Vec::new());
        model.visit(&mut g);
        g.2
    }

    fn setup() -> (
        ModelConfig,
        TrmTitansMag,
        Tables,
        Tensor<2, Int>,
        Tensor<2, Int>,
    ) {
        let dev = crate::device::test_device();
        let cfg = ModelConfig::micro();
        let model = TrmTitansMag::new(&cfg, 4, &dev);
        let t = Tables::new(&cfg, &dev);
        let ids: Vec<i64> = (0..2 * 9).map(|i| (i * 7 % 37) as i64 + 3).collect();
        let rows: Vec<Vec<i64>> = ids.chunks(9).map(<[i64]>::to_vec).collect();
        let x: Vec<i64> = rows.iter().flat_map(|r| r[..8].to_vec()).collect();
        let y: Vec<i64> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
        let x = Tensor::from_data(TensorData::new(x, [2, 8]), &dev);
        let y = Tensor::from_data(TensorData::new(y, [2, 8]), &dev);
        (cfg, model, t, x, y)
    }

    #[test]
    fn the_forward_sees_the_ternary_weights_and_the_gradient_is_the_full_precision_ones_at_them() {
        let (cfg, model, t, x, y) = setup();
        let names: BTreeSet<String> = named(&model)
            .into_iter()
            .filter(|(n, v)| n.ends_with(".weight") && n.starts_with("blocks.") && v.len() > 1)
            .map(|(n, _)| n)
            .collect();
        assert!(names.contains("blocks.0.attn.wq.weight"), "{names:?}");
        let ste = ternarize(&model, &names, true);
        // The forward pass sees W_q·γ exactly.
        let values: std::collections::BTreeMap<_, _> = named(&ste).into_iter().collect();
        for (n, w) in named(&model) {
            if names.contains(&n) {
                assert_eq!(values[&n], quantize_weights(&w).dequantize(), "{n}");
            } else {
                assert_eq!(values[&n], w, "{n} is left alone");
            }
        }
        // The same model with W_q·γ as its (leaf) weights: its full-precision gradient at the
        // quantized point equals the STE gradient w.r.t. the latent weights.
        let mut at_q = model.clone();
        let bytes = crate::model::weights::to_bytes(&ste).unwrap();
        crate::model::weights::load_exact(&mut at_q, bytes, "the quantized point").unwrap();
        crate::model::ternary::in_burn(&mut at_q, &names);
        let out_ste = ste.forward_train(x.clone(), y.clone(), cfg.sup_steps, 0.1, &t);
        let out_q = at_q.forward_train(x, y, cfg.sup_steps, 0.1, &t);
        let (l_ste, l_q) = (
            out_ste.loss.clone().into_scalar::<f32>(),
            out_q.loss.clone().into_scalar::<f32>(),
        );
        assert_eq!(l_ste, l_q, "the same forward pass");
        let g_latent: std::collections::BTreeMap<_, _> =
            grads_of(&model, &out_ste).into_iter().collect();
        let g_q: std::collections::BTreeMap<_, _> = grads_of(&at_q, &out_q).into_iter().collect();
        for n in &names {
            let (a, b) = (&g_latent[n], &g_q[n]);
            assert!(a.iter().any(|v| *v != 0.0), "{n} got no gradient");
            for (u, v) in a.iter().zip(b) {
                assert!((u - v).abs() <= 1e-6 + 1e-4 * v.abs(), "{n}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn fine_tuning_through_the_ternary_forward_lowers_the_ternary_models_loss() {
        use crate::optim::{MuonGrokfast, OptimizerConfig};
        let (cfg, mut model, t, x, y) = setup();
        let names: BTreeSet<String> = named(&model)
            .into_iter()
            .filter(|(n, v)| n.ends_with(".weight") && n.starts_with("blocks.") && v.len() > 1)
            .map(|(n, _)| n)
            .collect();
        let loss = |m: &TrmTitansMag| {
            ternarize(m, &names, true)
                .forward_train(x.clone(), y.clone(), cfg.sup_steps, 0.1, &t)
                .ce
                .into_scalar::<f32>()
        };
        let before = loss(&model);
        let mut opt = MuonGrokfast::new(OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        });
        for _ in 0..30 {
            let out = ternarize(&model, &names, true).forward_train(
                x.clone(),
                y.clone(),
                cfg.sup_steps,
                0.1,
                &t,
            );
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            model = opt.step(model, grads, 1.0).0;
        }
        let after = loss(&model);
        assert!(after < 0.7 * before, "ternary loss {before} → {after}");
        // What the artifact stores is what was trained: the ternary weights of the latent ones.
        let stored: std::collections::BTreeMap<_, _> = named(&ternarize(&model, &names, true))
            .into_iter()
            .collect();
        for (n, w) in named(&model) {
            if names.contains(&n) {
                assert_eq!(stored[&n], quantize_weights(&w).dequantize());
            }
        }
    }

    #[test]
    fn held_parameters_do_not_move_and_the_ternary_ones_do() {
        use crate::optim::{MuonGrokfast, OptimizerConfig};
        let (cfg, model, t, x, y) = setup();
        let names: BTreeSet<String> = named(&model)
            .into_iter()
            .filter(|(n, v)| n.ends_with(".weight") && n.starts_with("blocks.") && v.len() > 1)
            .map(|(n, _)| n)
            .collect();
        let out = ternarize(&model, &names, false).forward_train(x, y, cfg.sup_steps, 0.1, &t);
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let mut opt = MuonGrokfast::new(OptimizerConfig::default());
        let stepped = opt.step(model.clone(), grads, 1.0).0;
        let after: std::collections::BTreeMap<_, _> = named(&stepped).into_iter().collect();
        for (n, w) in named(&model) {
            if names.contains(&n) {
                assert_ne!(after[&n], w, "{n} did not learn");
            } else {
                assert_eq!(after[&n], w, "{n} moved");
            }
        }
    }
}
