//! Building blocks of the model: deterministic parameter initialisation, dense projections
//! (full precision, or BitNet b1.58 ternary, see [`Ternary`]), RMSNorm, rotary position
//! embeddings and the SwiGLU feed-forward.
//!
//! Parameters are drawn from our own seeded ChaCha RNG and uploaded with `TensorData`, not from
//! the backend's global RNG: the same seed gives the same initial weights on every backend and in
//! every thread, which the shared Phase-1 initialisation (the merge base) relies on.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::quant::kernel;
use crate::quant::packed::PackedTernary;

/// Seeded source of initial parameter values, or of shapes only ([`Init::shapes`]).
pub struct Init {
    /// `None`: parameters are declared, not drawn.
    rng: Option<ChaCha8Rng>,
    pub device: Device,
}

impl Init {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            rng: Some(crate::rng::stream(seed, crate::rng::Stream::ModelInit)),
            device: device.clone(),
        }
    }

    /// Parameters with a shape and no values (burn's lazy parameters): nothing is drawn or
    /// allocated until a value is loaded into them, so loading a file into a model built this
    /// way holds the weights once, not twice. A parameter read before anything was loaded into it
    /// is zero.
    pub fn shapes(device: &Device) -> Self {
        Self {
            rng: None,
            device: device.clone(),
        }
    }

    /// A lazy parameter of `shape` (zeros if ever read before a value is loaded).
    fn declared<const D: usize>(&self, shape: [usize; D]) -> Param<Tensor<D>> {
        Param::uninitialized(
            burn::module::ParamId::new(),
            move |device, grad| Tensor::zeros(shape, device).set_require_grad(grad),
            self.device.clone(),
            true,
            shape.into(),
        )
    }

    /// N(0, std²) values.
    pub fn normal<const D: usize>(&mut self, shape: [usize; D], std: f64) -> Param<Tensor<D>> {
        let Some(rng) = &mut self.rng else {
            return self.declared(shape);
        };
        let n: usize = shape.iter().product();
        let dist = Normal::new(0.0f64, std).expect("finite std");
        let values: Vec<f32> = (0..n).map(|_| dist.sample(rng) as f32).collect();
        self.values(values, shape)
    }

    pub fn constant<const D: usize>(&mut self, shape: [usize; D], value: f32) -> Param<Tensor<D>> {
        let n: usize = shape.iter().product();
        self.values(vec![value; n], shape)
    }

    pub fn values<const D: usize>(
        &mut self,
        values: Vec<f32>,
        shape: [usize; D],
    ) -> Param<Tensor<D>> {
        if self.rng.is_none() {
            return self.declared(shape);
        }
        Param::from_tensor(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }
}

/// `x W` for a `[d_in, d_out]` weight (no bias).
#[derive(Module, Debug)]
pub struct Dense {
    pub weight: Param<Tensor<2>>,
    /// How the product is computed when the layer is ternary (a quantized model's layer).
    #[module(skip)]
    pub ternary: Ternary,
}

/// How a [`Dense`] layer of a BitNet b1.58 model computes W1.58A8: ternary weights times
/// activations quantized to int8 per token by absmax.
#[derive(Debug, Clone, Default)]
pub enum Ternary {
    /// Not ternary: `x W` in full precision.
    #[default]
    Off,
    /// In burn: `weight` holds the dequantized ternary values `W_q·γ` and the activations are
    /// quantized and dequantized before the product (what calibration and training run).
    InBurn,
    /// Through the packed kernel ([`crate::quant::kernel`]) on the host; `weight` is not used
    /// (a quantized model loaded for inference drops it).
    Kernel(Arc<PackedTernary>),
}

impl Dense {
    /// Scaled like PyTorch's default for a GPT-style model: std 0.02, or `std` if given.
    pub fn new(init: &mut Init, d_in: usize, d_out: usize, std: f64) -> Self {
        Self {
            weight: init.normal([d_in, d_out], std),
            ternary: Ternary::Off,
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let x = match &self.ternary {
            Ternary::Off => x,
            Ternary::InBurn => quantize_activations(x),
            Ternary::Kernel(packed) => {
                let device = x.device();
                let values = x
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 activations");
                let y = kernel::matmul(packed, &kernel::Activations::quantize(&values, d));
                return Tensor::from_data(TensorData::new(y, [b, s, packed.rows]), &device);
            }
        };
        let w = self.weight.val();
        let d_out = w.dims()[1];
        x.reshape([b * s, d]).matmul(w).reshape([b, s, d_out])
    }
}

/// `x` through int8 and back, per token (last axis) by absmax: `round(x·s) / s` with
/// `s = 127 / max|x|` ([`crate::quant::ternary::quantize_activations`] in burn), passing the
/// gradient straight through (`x + (q − x).detach()`: the value of `q`, the gradient of `x`), so
/// quantization-aware training reaches the layers below.
pub fn quantize_activations(x: Tensor<3>) -> Tensor<3> {
    let max = x
        .clone()
        .detach()
        .abs()
        .max_dim(2)
        .clamp_min(crate::quant::ternary::EPS);
    let s = max.recip().mul_scalar(127.0);
    let q = x
        .clone()
        .detach()
        .mul(s.clone())
        .round()
        .clamp(-128.0, 127.0)
        .div(s);
    x.clone().add(q.sub(x).detach())
}

/// Root-mean-square layer norm with a learned gain.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub gain: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(init: &mut Init, d: usize) -> Self {
        Self {
            gain: init.constant([d], 1.0),
            eps: 1e-6,
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let d = x.dims()[2];
        let rms = x
            .clone()
            .powf_scalar(2.0)
            .mean_dim(2)
            .add_scalar(self.eps)
            .sqrt();
        x.div(rms).mul(self.gain.val().reshape([1, 1, d]))
    }
}

/// Rotary position embedding tables for positions `0..seq` (GPT-NeoX half-split layout).
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    pub fn new(seq: usize, head_dim: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for pos in 0..seq {
            for i in 0..half {
                let freq = theta.powf(-(2.0 * i as f64) / head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, seq, half]), device);
        Self {
            cos: t(cos),
            sin: t(sin),
        }
    }

    /// Rotate `x` of shape `[batch, heads, seq, head_dim]`, position `i` by angle `i·freq`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let s = x.dims()[2];
        let cos = self.cos.clone().narrow(2, 0, s);
        let sin = self.sin.clone().narrow(2, 0, s);
        Self::rotate(x, cos, sin)
    }

    /// Rotate `x` (`[batch, heads, n, head_dim]`) with each row's own positions: `positions`
    /// holds `batch × n` positions, row-major (for incremental decoding).
    pub fn apply_at(&self, x: Tensor<4>, positions: Tensor<1, Int>) -> Tensor<4> {
        let [b, _, n, dh] = x.dims();
        let [_, _, seq, half] = self.cos.dims();
        let at = |t: &Tensor<4>| {
            t.clone()
                .reshape([seq, half])
                .select(0, positions.clone())
                .reshape([b, 1, n, dh / 2])
        };
        Self::rotate(x, at(&self.cos), at(&self.sin))
    }

    fn rotate(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
        let half = x.dims()[3] / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        Tensor::cat(
            vec![
                x1.clone().mul(cos.clone()).sub(x2.clone().mul(sin.clone())),
                x1.mul(sin).add(x2.mul(cos)),
            ],
            3,
        )
    }
}

/// SwiGLU feed-forward: `(silu(x W_gate) ⊙ x W_up) W_down` (SiLU fused, see [`super::fused`]).
#[derive(Module, Debug)]
pub struct SwiGlu {
    pub gate: Dense,
    pub up: Dense,
    pub down: Dense,
}

impl SwiGlu {
    pub fn new(init: &mut Init, d: usize, hidden: usize, out_std: f64) -> Self {
        Self {
            gate: Dense::new(init, d, hidden, 0.02),
            up: Dense::new(init, d, hidden, 0.02),
            down: Dense::new(init, hidden, d, out_std),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down
            .forward(super::fused::silu(self.gate.forward(x.clone())).mul(self.up.forward(x)))
    }
}
