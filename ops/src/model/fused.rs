//! Fused operations with hand-written backward passes: softmax, log-softmax and SiLU, plus a
//! per-head maximum outside the autodiff graph.
//!
//! burn 0.22 records these under autodiff as their composite definitions (max, subtract, exp,
//! sum, divide or log; `x · σ(x)`), each step with its own backward, and recomputes the `exp` in
//! the backward pass. On libtorch that is ~6 kernels forward and ~8 backward on the largest
//! tensors of a step (attention scores `[b, h, s, s]`, logits `[b, s, vocab]`), where PyTorch runs
//! one fused kernel each way. This module is a burn backend extension: forward, the backend's own
//! op (on libtorch `at::softmax`, `at::log_softmax`, `at::silu`); backward, the closed forms
//!
//! ```text
//! y = softmax(x):      ∂L/∂x = y ⊙ (g − Σ_dim g ⊙ y)
//! y = log_softmax(x):  ∂L/∂x = g − exp(y) ⊙ Σ_dim g
//! y = x σ(x):          ∂L/∂x = g ⊙ σ(x) ⊙ (1 + x (1 − σ(x)))
//! ```
//!
//! which libtorch runs as the fused kernels PyTorch's autograd uses (`_softmax_backward_data`,
//! `_log_softmax_backward_data`, `silu_backward`) and flex as the row loops of
//! [`super::rowwise`] (forward too: flex's own `exp` runs one element at a time through libm).
//! The forward output (the input for SiLU) is kept for the backward pass, not recomputed. Tests compare every op against burn's
//! composite version, values and gradients, on each backend built in.

// burn-tch (`LibTorch`) is deprecated in burn 0.22 but is its only libtorch/CUDA path.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::backend::{Shape, TensorMetadata};
use burn::tensor::{DType, Tensor, TensorData};

use super::rowwise;

/// Softmax along `dim`, one fused operation with a closed-form backward pass.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax(
        x.into_dispatch(),
        dim,
    ))
}

/// SiLU, `x σ(x)`, one fused operation with a closed-form backward pass.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_silu(x.into_dispatch()))
}

/// The maximum of `x` over every dimension but `keep`, detached: `[b, h, s, s]`, keep 1 → `[h]`.
pub fn max_keeping<const D: usize>(x: Tensor<D>, keep: usize) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::max_keeping(x.into_dispatch(), keep))
}

/// Log-softmax along `dim`, one fused operation with a closed-form backward pass.
pub fn log_softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_log_softmax(
        x.into_dispatch(),
        dim,
    ))
}

#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedOps: Backend {
    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::softmax(x, dim)
    }
    /// `∂L/∂x` of `y = softmax(x)` from `y` and `g = ∂L/∂y`: `y ⊙ (g − Σ_dim g ⊙ y)`.
    fn fused_softmax_backward(
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dim: usize,
    ) -> FloatTensor<Self> {
        composite::softmax_backward::<Self>(y, g, dim)
    }
    fn fused_log_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::log_softmax(x, dim)
    }
    /// `∂L/∂x` of `y = log_softmax(x)`: `g − exp(y) ⊙ Σ_dim g`.
    fn fused_log_softmax_backward(
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dim: usize,
    ) -> FloatTensor<Self> {
        composite::log_softmax_backward::<Self>(y, g, dim)
    }
    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composite::silu::<Self>(x)
    }
    /// `∂L/∂x` of `y = x σ(x)`: `g ⊙ σ(x) ⊙ (1 + x (1 − σ(x)))`.
    fn fused_silu_backward(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        composite::silu_backward::<Self>(x, g)
    }
    /// The maximum over every dimension but `keep` (a 1-D tensor), outside the autodiff graph.
    fn max_keeping(x: FloatTensor<Self>, keep: usize) -> FloatTensor<Self> {
        let shape = x.shape();
        let mut t = x;
        for d in (0..shape.num_dims()).filter(|d| *d != keep) {
            t = Self::float_max_dim(t, d);
        }
        Self::float_reshape(t, Shape::new([shape[keep]]))
    }
}

/// flex: the row-wise kernels of [`super::rowwise`] on f32 tensors whose axis is the last one
/// (every call in the model), burn's composite versions otherwise.
impl FusedOps for Flex {
    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        flex_rows(
            x,
            dim,
            rowwise::softmax,
            <Self as ActivationOps<Self>>::softmax,
        )
    }
    fn fused_softmax_backward(
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dim: usize,
    ) -> FloatTensor<Self> {
        flex_rows_backward(
            y,
            g,
            dim,
            rowwise::softmax_backward,
            composite::softmax_backward::<Self>,
        )
    }
    fn fused_log_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        flex_rows(
            x,
            dim,
            rowwise::log_softmax,
            <Self as ActivationOps<Self>>::log_softmax,
        )
    }
    fn fused_log_softmax_backward(
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dim: usize,
    ) -> FloatTensor<Self> {
        flex_rows_backward(
            y,
            g,
            dim,
            rowwise::log_softmax_backward,
            composite::log_softmax_backward::<Self>,
        )
    }
    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match x.dtype() {
            DType::F32 => flex_map(&[&x], |[x]| rowwise::silu(x)),
            _ => composite::silu::<Self>(x),
        }
    }
    fn fused_silu_backward(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        match same_f32(&x, &g) {
            true => flex_map(&[&x, &g], |[x, g]| rowwise::silu_backward(x, g)),
            false => composite::silu_backward::<Self>(x, g),
        }
    }
}

/// A row kernel over `x`'s last axis when `x` is f32 and `dim` is that axis, else `fallback`.
fn flex_rows(
    x: FlexTensor,
    dim: usize,
    kernel: fn(&[f32], usize) -> Vec<f32>,
    fallback: fn(FlexTensor, usize) -> FlexTensor,
) -> FlexTensor {
    match last_axis_rows(&x, dim) {
        Some(n) => flex_map(&[&x], |[x]| kernel(x, n)),
        None => fallback(x, dim),
    }
}

/// [`flex_rows`] for a backward pass: `kernel(y, g, row length)` over the forward's saved tensor
/// and the incoming gradient.
fn flex_rows_backward(
    y: FlexTensor,
    g: FlexTensor,
    dim: usize,
    kernel: fn(&[f32], &[f32], usize) -> Vec<f32>,
    fallback: fn(FlexTensor, FlexTensor, usize) -> FlexTensor,
) -> FlexTensor {
    match last_axis_rows(&y, dim).filter(|_| same_f32(&y, &g)) {
        Some(n) => flex_map(&[&y, &g], |[y, g]| kernel(y, g, n)),
        None => fallback(y, g, dim),
    }
}

/// The row length when `x` is f32 and `dim` is its last axis.
fn last_axis_rows(x: &FlexTensor, dim: usize) -> Option<usize> {
    let shape = x.shape();
    (x.dtype() == DType::F32 && dim + 1 == shape.num_dims() && shape[dim] > 0).then(|| shape[dim])
}

fn same_f32(a: &FlexTensor, b: &FlexTensor) -> bool {
    a.dtype() == DType::F32 && b.dtype() == DType::F32 && a.shape() == b.shape()
}

/// `kernel` over the f32 values of same-shaped tensors (made contiguous), as a tensor of their
/// shape.
fn flex_map<const N: usize>(
    inputs: &[&FlexTensor; N],
    kernel: impl FnOnce([&[f32]; N]) -> Vec<f32>,
) -> FlexTensor {
    let shape = inputs[0].shape();
    let owned = inputs.map(FlexTensor::to_contiguous);
    let slices = owned
        .each_ref()
        .map(|t| t.as_slice::<f32>().expect("a contiguous f32 tensor"));
    FlexTensor::from_data(TensorData::new(kernel(slices), shape))
}

/// The closed forms composed of the backend's own operations (the default of [`FusedOps`]).
mod composite {
    use burn::backend::Backend;
    use burn::backend::ops::ActivationOps;
    use burn::backend::tensor::FloatTensor;

    pub fn softmax_backward<B: Backend>(
        y: FloatTensor<B>,
        g: FloatTensor<B>,
        dim: usize,
    ) -> FloatTensor<B> {
        let gy = B::float_mul(g, y.clone());
        let sum = B::float_sum_dim(gy.clone(), dim);
        B::float_sub(gy, B::float_mul(y, sum))
    }

    pub fn log_softmax_backward<B: Backend>(
        y: FloatTensor<B>,
        g: FloatTensor<B>,
        dim: usize,
    ) -> FloatTensor<B> {
        let sum = B::float_sum_dim(g.clone(), dim);
        B::float_sub(g, B::float_mul(B::float_exp(y), sum))
    }

    pub fn silu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let s = <B as ActivationOps<B>>::sigmoid(x.clone());
        B::float_mul(x, s)
    }

    pub fn silu_backward<B: Backend>(x: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
        let s = <B as ActivationOps<B>>::sigmoid(x.clone());
        let one_minus = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
        let inner = B::float_add_scalar(B::float_mul(x, one_minus), 1.0.into());
        B::float_mul(g, B::float_mul(s, inner))
    }
}

/// libtorch has the fused kernels PyTorch's autograd uses: `_softmax_backward_data`,
/// `_log_softmax_backward_data` and `amax` (a max without indices).
#[cfg(feature = "tch")]
impl FusedOps for burn::backend::LibTorch {
    fn fused_softmax_backward(
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dim: usize,
    ) -> FloatTensor<Self> {
        let kind = y.tensor.kind();
        <FloatTensor<Self>>::new(tch::Tensor::internal_softmax_backward_data(
            &g.tensor, &y.tensor, dim as i64, kind,
        ))
    }
    fn fused_log_softmax_backward(
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dim: usize,
    ) -> FloatTensor<Self> {
        let kind = y.tensor.kind();
        <FloatTensor<Self>>::new(tch::Tensor::internal_log_softmax_backward_data(
            &g.tensor, &y.tensor, dim as i64, kind,
        ))
    }
    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <FloatTensor<Self>>::new(x.tensor.silu())
    }
    fn fused_silu_backward(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        <FloatTensor<Self>>::new(x.tensor.silu_backward(&g.tensor))
    }
    fn max_keeping(x: FloatTensor<Self>, keep: usize) -> FloatTensor<Self> {
        let dims: Vec<i64> = (0..x.tensor.dim() as i64)
            .filter(|d| *d != keep as i64)
            .collect();
        <FloatTensor<Self>>::new(x.tensor.amax(dims.as_slice(), false))
    }
}

/// The backward step of a fused unary op: `grad(saved, g, dim)`, where `saved` is the op's input
/// or its output, whichever its closed form needs.
struct Unary<B: Backend> {
    grad: fn(FloatTensor<B>, FloatTensor<B>, usize) -> FloatTensor<B>,
}

impl<B: Backend> std::fmt::Debug for Unary<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fused unary backward")
    }
}

impl<B: Backend> Backward<B, 1> for Unary<B> {
    /// The saved tensor and the dimension.
    type State = (FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (saved, dim) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| (self.grad)(saved, g, dim));
    }
}

/// Which tensor a fused op keeps for its backward pass.
enum Saved {
    Input,
    Output,
}

/// Run `forward` on the inner backend and, when `x` is tracked, record `grad` as its backward.
fn tracked<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    dim: usize,
    saved: Saved,
    forward: fn(FloatTensor<B>, usize) -> FloatTensor<B>,
    grad: fn(FloatTensor<B>, FloatTensor<B>, usize) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match (Unary { grad })
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let x = x.into_primitive();
            match saved {
                Saved::Input => prep.finish((x.clone(), dim), forward(x, dim)),
                Saved::Output => {
                    let y = forward(x, dim);
                    prep.finish((y.clone(), dim), y)
                }
            }
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive(), dim)),
    }
}

impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked::<B, C>(
            x,
            0,
            Saved::Input,
            |x, _| B::fused_silu(x),
            |x, g, _| B::fused_silu_backward(x, g),
        )
    }

    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        tracked::<B, C>(
            x,
            dim,
            Saved::Output,
            B::fused_softmax,
            B::fused_softmax_backward,
        )
    }

    fn fused_log_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        tracked::<B, C>(
            x,
            dim,
            Saved::Output,
            B::fused_log_softmax,
            B::fused_log_softmax_backward,
        )
    }

    fn max_keeping(x: FloatTensor<Self>, keep: usize) -> FloatTensor<Self> {
        // A new leaf: the result carries no gradient.
        <FloatTensor<Self>>::new(B::max_keeping(x.into_primitive(), keep))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation;
    use burn::tensor::{Device, Distribution, Tensor};

    #[allow(deprecated)] // burn-tch is deprecated in burn 0.22 but is its only libtorch path
    fn devices() -> Vec<Device> {
        #[cfg(not(feature = "tch"))]
        return vec![Device::flex()];
        #[cfg(feature = "tch")]
        return vec![Device::flex(), Device::libtorch()];
    }

    /// Values and gradients of the fused ops equal burn's composite ones, on every dimension.
    #[test]
    fn fused_ops_match_the_composite_definitions() {
        for dev in devices() {
            let ad = dev.clone().autodiff();
            for dim in 0..3 {
                let x0 = Tensor::<3>::random([3, 4, 5], Distribution::Normal(0.0, 3.0), &dev);
                let w = Tensor::<3>::random([3, 4, 5], Distribution::Normal(0.0, 1.0), &dev);
                let run = |fused: bool, op: usize| {
                    let x = Tensor::<3>::from_data(x0.to_data(), &ad).require_grad();
                    let y = match (fused, op) {
                        (true, 0) => super::softmax(x.clone(), dim),
                        (true, 1) => super::log_softmax(x.clone(), dim),
                        (true, _) => super::silu(x.clone()),
                        (false, 0) => activation::softmax(x.clone(), dim),
                        (false, 1) => activation::log_softmax(x.clone(), dim),
                        (false, _) => activation::silu(x.clone()),
                    };
                    // A loss that weighs every output differently, so every gradient term counts.
                    let loss = y.clone().mul(Tensor::from_data(w.to_data(), &ad)).sum();
                    let g = x.grad(&loss.backward()).unwrap();
                    (y.inner().into_data(), g.into_data())
                };
                for op in 0..3 {
                    let (y_f, g_f) = run(true, op);
                    let (y_c, g_c) = run(false, op);
                    let tol = burn::tensor::Tolerance::absolute(1e-5);
                    y_f.assert_approx_eq::<f32>(&y_c, tol);
                    g_f.assert_approx_eq::<f32>(&g_c, tol);
                }
            }
        }
    }

    /// `max_keeping` is the per-head maximum and carries no gradient.
    #[test]
    fn max_keeping_is_a_detached_per_head_max() {
        for dev in devices() {
            let ad = dev.clone().autodiff();
            let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &ad)
                .require_grad();
            let expected = x
                .clone()
                .detach()
                .max_dim(3)
                .max_dim(2)
                .max_dim(0)
                .reshape([3]);
            let m = super::max_keeping(x.clone(), 1);
            m.to_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
            // Only the other term reaches x: d/dx of sum(x) + sum(m) is all ones.
            let loss = x.clone().sum().add(m.sum());
            let g = x.grad(&loss.backward()).unwrap();
            g.into_data().assert_approx_eq::<f32>(
                &Tensor::<4>::ones([2, 3, 4, 4], &dev).into_data(),
                Default::default(),
            );
        }
    }

    /// The hand-checkable case: softmax of [0, ln 3] is [1/4, 3/4]; with loss y₁ the gradient is
    /// y₁(e₁ − y) = [−3/16, 3/16].
    #[test]
    fn softmax_gradient_by_hand() {
        let ad = Device::flex().autodiff();
        let x = Tensor::<1>::from_floats([0.0, 3f32.ln()], &ad).require_grad();
        let y = super::softmax(x.clone(), 0);
        let loss = y.clone().narrow(0, 1, 1).sum();
        let g = x.grad(&loss.backward()).unwrap();
        y.inner()
            .into_data()
            .assert_approx_eq::<f32>(&[0.25f32, 0.75].into(), Default::default());
        g.into_data()
            .assert_approx_eq::<f32>(&[-3.0f32 / 16.0, 3.0 / 16.0].into(), Default::default());
    }
}
