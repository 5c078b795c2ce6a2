//! The `muon-grokfast` optimizer over a whole burn module.
//!
//! Every step: (1) global gradient-norm clipping, (2) Grokfast's EMA filter on every gradient,
//! (3) Muon (Nesterov momentum, Newton–Schulz, shape scaling, decoupled weight decay) for hidden
//! 2-D weights and AdamW for everything else (embeddings, heads, norms, gates). State is keyed by
//! parameter path, so it survives a checkpoint round trip exactly ([`MuonGrokfast::state_bytes`]).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_muon_param, muon_update};

/// Optimizer hyper-parameters (Muon × Grokfast or AdamW): a phase `preset` and any keys that
/// override it (the presets are in `OptimizerConfig::preset`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Start from a phase preset (`phase1`, `phase3-baking`, `phase3-rl`); keys given next to it
    /// override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// `muon-grokfast` (Muon for hidden matrices) or `adamw` (AdamW everywhere); Grokfast applies
    /// to both unless `grokfast_lambda` is 0.
    #[serde(default = "d::kind")]
    pub kind: String,
    /// Peak learning rate of the AdamW group.
    #[serde(default = "d::lr")]
    pub lr: f64,
    /// Peak learning rate of the Muon group (spectral units).
    #[serde(default = "d::muon_lr")]
    pub muon_lr: f64,
    /// Momentum of the Muon group's update.
    #[serde(default = "d::muon_momentum")]
    pub muon_momentum: f64,
    /// AdamW's β1 and β2: decay rates of the first and second moment estimates.
    #[serde(default = "d::betas")]
    pub betas: (f64, f64),
    /// AdamW's ε, added to the denominator for numerical stability.
    #[serde(default = "d::eps")]
    pub eps: f64,
    /// Decoupled weight decay of 2-D weights (never of norms and biases).
    #[serde(default = "d::weight_decay")]
    pub weight_decay: f64,
    /// Grokfast EMA factor α.
    #[serde(default = "d::grokfast_alpha")]
    pub grokfast_alpha: f64,
    /// Grokfast amplification λ (0 disables the filter).
    #[serde(default = "d::grokfast_lambda")]
    pub grokfast_lambda: f64,
    /// QK-clip threshold τ on the max attention logit (0 disables).
    #[serde(default = "d::qk_clip")]
    pub qk_clip: f64,
    /// Clip the global gradient norm to this (0 disables).
    #[serde(default = "d::grad_clip")]
    pub grad_clip: f64,
    /// Weight of KL(reference ‖ model) added to the loss; needs a `reference` model input (0 disables).
    #[serde(default)]
    pub kl_coef: f64,
}

mod d {
    pub fn kind() -> String {
        "muon-grokfast".into()
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn muon_lr() -> f64 {
        0.02
    }
    pub fn muon_momentum() -> f64 {
        0.95
    }
    pub fn betas() -> (f64, f64) {
        (0.9, 0.95)
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn weight_decay() -> f64 {
        0.01
    }
    pub fn grokfast_alpha() -> f64 {
        0.98
    }
    pub fn grokfast_lambda() -> f64 {
        0.3
    }
    pub fn qk_clip() -> f64 {
        30.0
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

impl OptimizerConfig {
    /// Phase presets from the seed plan: `phase1` (lr 1e-3, λ 0.3, τ 30, KL 0), `phase3-baking`
    /// (1e-4, 0.2, 30, 0), `phase3-rl` (5e-4, 0.1, 25, KL 0.1).
    pub fn preset(name: &str) -> Option<Self> {
        let (lr, lambda, tau, kl) = match name {
            "phase1" => (1e-3, 0.3, 30.0, 0.0),
            "phase3-baking" => (1e-4, 0.2, 30.0, 0.0),
            "phase3-rl" => (5e-4, 0.1, 25.0, 0.1),
            _ => return None,
        };
        Some(Self {
            preset: Some(name.into()),
            lr,
            grokfast_lambda: lambda,
            qk_clip: tau,
            kl_coef: kl,
            ..Self::default()
        })
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !matches!(self.kind.as_str(), "muon-grokfast" | "adamw") {
            p.push(format!(
                "optimizer kind `{}` is not `muon-grokfast` or `adamw`",
                self.kind
            ));
        }
        if !(self.lr > 0.0 && self.muon_lr > 0.0) {
            p.push("learning rates must be positive".into());
        }
        if !(0.0..1.0).contains(&self.grokfast_alpha) || !(0.0..1.0).contains(&self.muon_momentum) {
            p.push("grokfast_alpha and muon_momentum must be in [0, 1)".into());
        }
        if self.kl_coef < 0.0 {
            p.push("kl_coef must not be negative".into());
        }
        if self.grokfast_lambda < 0.0 {
            p.push("grokfast_lambda must not be negative".into());
        }
        p
    }
}

/// Per-parameter state, flattened.
#[derive(Debug, Clone, Default)]
struct State {
    grokfast: Option<Tensor<1>>,
    m: Option<Tensor<1>>,
    v: Option<Tensor<1>>,
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
}

pub struct MuonGrokfast {
    pub cfg: OptimizerConfig,
    pub step: u64,
    state: BTreeMap<String, State>,
}

/// Collects the global squared gradient norm.
struct NormVisitor<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for NormVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.powf_scalar(2.0).sum();
            self.sum = Some(match self.sum.take() {
                None => s,
                Some(acc) => acc.add(s),
            });
        }
    }
}

struct Stepper<'a> {
    opt: &'a mut MuonGrokfast,
    grads: &'a mut GradientsParams,
    path: Vec<String>,
    lr_scale: f64,
    clip_scale: f64,
}

impl ModuleMapper for Stepper<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let path = self.path.join(".");
        let updated = self.opt.update(
            &path,
            tensor.inner(),
            grad.inner(),
            self.lr_scale,
            self.clip_scale,
        );
        let mut restored = Tensor::from_inner(updated);
        if require_grad {
            restored = restored.require_grad();
        }
        Param::from_mapped_value(id, restored, mapper)
    }
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.dims().iter().product::<usize>();
    t.reshape([n])
}

impl MuonGrokfast {
    pub fn new(cfg: OptimizerConfig) -> Self {
        Self {
            cfg,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// One update of `module` with `grads`, at `lr_scale` × the configured learning rates (the
    /// schedule's factor).
    pub fn step<M: Module>(
        &mut self,
        module: M,
        mut grads: GradientsParams,
        lr_scale: f64,
    ) -> (M, StepStats) {
        let mut nv = NormVisitor {
            grads: &grads,
            sum: None,
        };
        module.visit(&mut nv);
        let grad_norm = nv
            .sum
            .map(|s| (s.into_scalar::<f32>() as f64).sqrt())
            .unwrap_or(0.0);
        let clip = self.cfg.grad_clip;
        let clipped = clip > 0.0 && grad_norm > clip;
        let clip_scale = if clipped { clip / grad_norm } else { 1.0 };
        self.step += 1;
        let mut stepper = Stepper {
            opt: self,
            grads: &mut grads,
            path: Vec::new(),
            lr_scale,
            clip_scale,
        };
        let module = module.map(&mut stepper);
        (module, StepStats { grad_norm, clipped })
    }

    fn update<const D: usize>(
        &mut self,
        path: &str,
        w: Tensor<D>,
        g: Tensor<D>,
        lr_scale: f64,
        clip_scale: f64,
    ) -> Tensor<D> {
        let cfg = self.cfg.clone();
        let dims = w.dims();
        let st = self.state.entry(path.to_owned()).or_default();
        let mut g = if clip_scale < 1.0 {
            g.mul_scalar(clip_scale)
        } else {
            g
        };
        if cfg.grokfast_lambda > 0.0 {
            // μ starts at the first gradient (Grokfast's gradfilter_ema).
            let gf = flat(g.clone());
            let prev = st.grokfast.take().unwrap_or_else(|| gf.clone());
            let mu = prev
                .mul_scalar(cfg.grokfast_alpha)
                .add(gf.mul_scalar(1.0 - cfg.grokfast_alpha));
            g = g.add(mu.clone().reshape(dims).mul_scalar(cfg.grokfast_lambda));
            st.grokfast = Some(mu);
        }
        let decay = if D >= 2 { cfg.weight_decay } else { 0.0 };
        if cfg.kind == "muon-grokfast" && is_muon_param(path, &dims) {
            let lr = cfg.muon_lr * lr_scale;
            let mut mom =
                st.m.take()
                    .map(|m| m.reshape([dims[0], dims[1]]))
                    .unwrap_or_else(|| Tensor::zeros([dims[0], dims[1]], &g.device()));
            let u = muon_update(g.reshape([dims[0], dims[1]]), &mut mom, cfg.muon_momentum);
            st.m = Some(flat(mom));
            return w
                .mul_scalar(1.0 - lr * decay)
                .sub(u.reshape(dims).mul_scalar(lr));
        }
        // AdamW with bias correction.
        let lr = cfg.lr * lr_scale;
        let (b1, b2) = cfg.betas;
        let gf = flat(g);
        let m =
            st.m.take()
                .map(|m| m.mul_scalar(b1))
                .unwrap_or_else(|| gf.zeros_like())
                .add(gf.clone().mul_scalar(1.0 - b1));
        let v =
            st.v.take()
                .map(|v| v.mul_scalar(b2))
                .unwrap_or_else(|| gf.zeros_like())
                .add(gf.powf_scalar(2.0).mul_scalar(1.0 - b2));
        let t = self.step as i32;
        let m_hat = m.clone().div_scalar(1.0 - b1.powi(t));
        let v_hat = v.clone().div_scalar(1.0 - b2.powi(t));
        let upd = m_hat.div(v_hat.sqrt().add_scalar(cfg.eps));
        st.m = Some(m);
        st.v = Some(v);
        w.mul_scalar(1.0 - lr * decay)
            .sub(upd.reshape(dims).mul_scalar(lr))
    }

    /// The whole state (step count, hyper-parameters and every buffer) as safetensors bytes.
    pub fn state_bytes(&self) -> Vec<u8> {
        let mut bufs: Vec<(String, Vec<u8>, usize)> = Vec::new();
        for (path, st) in &self.state {
            for (kind, t) in [("grokfast", &st.grokfast), ("m", &st.m), ("v", &st.v)] {
                if let Some(t) = t {
                    let v: Vec<f32> = t.to_data().try_to_vec().expect("f32 state");
                    let n = v.len();
                    bufs.push((
                        format!("{path}#{kind}"),
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        n,
                    ));
                }
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bufs
            .iter()
            .map(|(name, bytes, n)| {
                (
                    name.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*n], bytes)
                        .expect("valid view"),
                )
            })
            .collect();
        let meta = std::collections::HashMap::from([
            ("step".to_string(), self.step.to_string()),
            (
                "config".to_string(),
                serde_json::to_string(&self.cfg).expect("config serializes"),
            ),
        ]);
        let bytes = safetensors::serialize(views, Some(meta)).expect("serialize optimizer state");
        crate::model::canonical_safetensors(&bytes).expect("safetensors we just wrote")
    }

    /// Restore [`Self::state_bytes`] onto `device`.
    pub fn from_state_bytes(bytes: &[u8], device: &Device) -> Result<Self, String> {
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let step: u64 = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or("optimizer state has no step")?;
        let cfg: OptimizerConfig =
            serde_json::from_str(meta.get("config").ok_or("optimizer state has no config")?)
                .map_err(|e| e.to_string())?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let mut state: BTreeMap<String, State> = BTreeMap::new();
        for (name, view) in st.tensors() {
            let (path, kind) = name.rsplit_once('#').ok_or("bad optimizer state name")?;
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let n = v.len();
            let t = Tensor::<1>::from_data(TensorData::new(v, [n]), device);
            let e = state.entry(path.to_owned()).or_default();
            match kind {
                "grokfast" => e.grokfast = Some(t),
                "m" => e.m = Some(t),
                "v" => e.v = Some(t),
                other => return Err(format!("unknown optimizer state kind `{other}`")),
            }
        }
        Ok(Self { cfg, step, state })
    }
}

/// Parameter ids by path, for tests.
pub fn param_paths<M: Module>(module: &M) -> Vec<(String, ParamId, Vec<usize>)> {
    struct V {
        path: Vec<String>,
        out: Vec<(String, ParamId, Vec<usize>)>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.path.push(name.to_owned());
        }
        fn exit_module(&mut self, _name: &str, _c: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out
                .push((self.path.join("."), param.id, param.val().dims().to_vec()));
        }
    }
    let mut v = V {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, Tables, TrmTitansMag};
    use burn::tensor::Int;

    fn cfg() -> ModelConfig {
        ModelConfig {
            vocab_size: 32,
            d_model: 32,
            layers: 2,
            heads: 2,
            d_ff: 64,
            window: 16,
            max_seq: 32,
            memory_layers: vec![1],
            ltm_slots: 8,
            mem_chunk: 4,
            n_inner: 1,
            cycles: 1,
            sup_steps: 1,
            ..ModelConfig::tiny()
        }
    }

    /// Sequences counting upwards mod 31 (+1): the next token is always predictable.
    fn batch(step: usize, dev: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let (b, s) = (4, 16);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for r in 0..b {
            let start = (step * 7 + r * 5) % 31;
            let seq: Vec<i64> = (0..=s).map(|i| ((start + i) % 31 + 1) as i64).collect();
            x.extend_from_slice(&seq[..s]);
            y.extend_from_slice(&seq[1..]);
        }
        (
            Tensor::from_data(TensorData::new(x, [b, s]), dev),
            Tensor::from_data(TensorData::new(y, [b, s]), dev),
        )
    }

    fn train(
        model: TrmTitansMag,
        opt: &mut MuonGrokfast,
        steps: std::ops::Range<usize>,
        t: &Tables,
        dev: &Device,
    ) -> (TrmTitansMag, Vec<f32>) {
        let mut model = model;
        let mut losses = Vec::new();
        for step in steps {
            let (x, y) = batch(step, dev);
            let out = model.forward_train(x, y, 1, 0.1, t);
            losses.push(out.ce.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            model = opt.step(model, grads, 1.0).0;
        }
        (model, losses)
    }

    fn weights(m: &TrmTitansMag) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        struct V<'a>(&'a mut Vec<Vec<f32>>);
        impl ModuleVisitor for V<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                self.0.push(p.val().to_data().try_to_vec().unwrap());
            }
        }
        m.visit(&mut V(&mut out));
        out
    }

    #[test]
    fn parameter_groups_follow_the_paths() {
        let dev = crate::device::test_device();
        let model = TrmTitansMag::new(&cfg(), 1, &dev);
        let paths = param_paths(&model);
        let muon: Vec<&str> = paths
            .iter()
            .filter(|(p, _, d)| is_muon_param(p, d))
            .map(|(p, _, _)| p.as_str())
            .collect();
        assert!(muon.contains(&"blocks.0.attn.wq.weight"), "{muon:?}");
        assert!(muon.contains(&"blocks.1.memory.address.weight"), "{muon:?}");
        assert!(
            !muon
                .iter()
                .any(|p| p.starts_with("embed") || p.contains("norm") || p.starts_with("halt"))
        );
    }

    #[test]
    fn loss_falls_on_a_predictable_sequence() {
        let dev = crate::device::test_device();
        let c = cfg();
        let t = Tables::new(&c, &dev);
        let mut opt = MuonGrokfast::new(OptimizerConfig {
            lr: 3e-3,
            ..OptimizerConfig::default()
        });
        let (_, losses) = train(TrmTitansMag::new(&c, 2, &dev), &mut opt, 0..60, &t, &dev);
        let first = losses[..5].iter().sum::<f32>() / 5.0;
        let last = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
        assert!(first > 3.0, "initial loss {first}");
        assert!(
            last < first * 0.5,
            "loss did not fall: {first} → {last} ({losses:?})"
        );
    }

    #[test]
    fn state_round_trip_resumes_bit_exactly() {
        let dev = crate::device::test_device();
        let c = cfg();
        let t = Tables::new(&c, &dev);
        let mut a = MuonGrokfast::new(OptimizerConfig::default());
        let (model, _) = train(TrmTitansMag::new(&c, 3, &dev), &mut a, 0..4, &t, &dev);
        let saved_model = model.clone();
        let bytes = a.state_bytes();
        let (straight, _) = train(model, &mut a, 4..7, &t, &dev);
        let mut b = MuonGrokfast::from_state_bytes(&bytes, &dev).unwrap();
        assert_eq!(b.step, 4);
        let (resumed, _) = train(saved_model, &mut b, 4..7, &t, &dev);
        assert_eq!(weights(&straight), weights(&resumed));
        // Muon params keep one buffer (momentum), AdamW ones two, Grokfast one each.
        let st = &a.state;
        assert!(
            st["blocks.0.attn.wq.weight"].v.is_none() && st["blocks.0.attn.wq.weight"].m.is_some()
        );
        assert!(st["embed"].v.is_some() && st["embed"].grokfast.is_some());
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;
    use crate::model::{ModelConfig, TrmTitansMag};
    use burn::store::{ModuleSnapshot, SafetensorsStore};

    use crate::model::weights::named_values as all_weights;

    #[test]
    fn a_reloaded_model_trains_exactly_like_the_original() {
        let dev = crate::device::test_device();
        let cfg = ModelConfig {
            vocab_size: 32,
            d_model: 32,
            layers: 1,
            heads: 2,
            d_ff: 32,
            memory_layers: vec![0],
            ltm_slots: 4,
            mem_chunk: 4,
            max_seq: 16,
            window: 8,
            ..ModelConfig::tiny()
        };
        let a = TrmTitansMag::new(&cfg, 1, &dev);
        let mut store = SafetensorsStore::from_bytes(None);
        a.save_into(&mut store).unwrap();
        let mut b = TrmTitansMag::new(&cfg, 2, &dev);
        b.load_from(&mut SafetensorsStore::from_bytes(Some(
            store.get_bytes().unwrap(),
        )))
        .unwrap();
        assert_eq!(all_weights(&a), all_weights(&b), "reload changed weights");
        let t = crate::model::Tables::new(&cfg, &dev);
        let x = Tensor::<2, burn::tensor::Int>::from_data(
            TensorData::new((1..=16).collect::<Vec<i64>>(), [1, 16]),
            &dev,
        );
        let step = |m: TrmTitansMag| {
            let out = m.forward_train(x.clone(), x.clone(), 1, 0.1, &t);
            let grads = GradientsParams::from_grads(out.loss.backward(), &m);
            let mut opt = MuonGrokfast::new(OptimizerConfig::default());
            opt.step(m, grads, 1.0).0
        };
        let (a1, b1) = (all_weights(&step(a)), all_weights(&step(b)));
        let differ: Vec<&String> = a1
            .iter()
            .zip(&b1)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| &x.0)
            .collect();
        assert!(
            differ.is_empty(),
            "after one step the reloaded model differs in {differ:?}"
        );
    }
}
