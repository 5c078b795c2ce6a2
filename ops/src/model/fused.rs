//! Softmax and log-softmax as single backend operations with hand-written backward passes.
//!
//! burn 0.22 records `softmax`/`log_softmax` under autodiff as their composite definition (max,
//! subtract, exp, sum, divide or log), each step with its own backward, and recomputes the `exp`
//! in the backward pass. On libtorch that is ~6 kernels forward and ~8 backward on the largest
//! tensors of a step (attention scores `[b, h, s, s]` and logits `[b, s, vocab]`), where PyTorch
//! runs one fused kernel each way. This module is a burn backend extension that calls the
//! backend's own softmax (fused on libtorch, `at::softmax`) and differentiates it in closed form:
//!
//! ```text
//! y = softmax(x):      ∂L/∂x = y ⊙ (g − Σ_dim g ⊙ y)
//! y = log_softmax(x):  ∂L/∂x = g − exp(y) ⊙ Σ_dim g
//! ```
//!
//! The output `y` is kept for the backward pass (no recomputation). Tests compare both against
//! burn's composite versions, values and gradients.

// burn-tch (`LibTorch`) is deprecated in burn 0.22 but is its only libtorch/CUDA path.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

/// Softmax along `dim`, one fused operation with a closed-form backward pass.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedSoftmax>::fused_softmax(
        x.into_dispatch(),
        dim,
    ))
}

/// Log-softmax along `dim`, one fused operation with a closed-form backward pass.
pub fn log_softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedSoftmax>::fused_log_softmax(
        x.into_dispatch(),
        dim,
    ))
}

#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedSoftmax: Backend {
    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::softmax(x, dim)
    }
    fn fused_log_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::log_softmax(x, dim)
    }
}

impl FusedSoftmax for Flex {}

#[cfg(feature = "tch")]
impl FusedSoftmax for burn::backend::LibTorch {}

#[derive(Debug)]
struct SoftmaxBackward;

impl<B: Backend> Backward<B, 1> for SoftmaxBackward {
    /// The forward output and the dimension.
    type State = (FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, dim) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| {
            let gy = B::float_mul(g, y.clone());
            let sum = B::float_sum_dim(gy.clone(), dim);
            B::float_sub(gy, B::float_mul(y, sum))
        });
    }
}

#[derive(Debug)]
struct LogSoftmaxBackward;

impl<B: Backend> Backward<B, 1> for LogSoftmaxBackward {
    /// The forward output (log-probabilities) and the dimension.
    type State = (FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, dim) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| {
            let sum = B::float_sum_dim(g.clone(), dim);
            B::float_sub(g, B::float_mul(B::float_exp(y), sum))
        });
    }
}

impl<B: Backend + FusedSoftmax, C: CheckpointStrategy> FusedSoftmax for Autodiff<B, C> {
    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::fused_softmax(x.into_primitive(), dim);
                prep.finish((y.clone(), dim), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_softmax(x.into_primitive(), dim)),
        }
    }

    fn fused_log_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        match LogSoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::fused_log_softmax(x.into_primitive(), dim);
                prep.finish((y.clone(), dim), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_log_softmax(x.into_primitive(), dim)),
        }
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
    fn fused_softmax_and_log_softmax_match_the_composite_definitions() {
        for dev in devices() {
            let ad = dev.clone().autodiff();
            for dim in 0..3 {
                let x0 = Tensor::<3>::random([3, 4, 5], Distribution::Normal(0.0, 3.0), &dev);
                let w = Tensor::<3>::random([3, 4, 5], Distribution::Normal(0.0, 1.0), &dev);
                let run = |fused: bool, log: bool| {
                    let x = Tensor::<3>::from_data(x0.to_data(), &ad).require_grad();
                    let y = match (fused, log) {
                        (true, false) => super::softmax(x.clone(), dim),
                        (true, true) => super::log_softmax(x.clone(), dim),
                        (false, false) => activation::softmax(x.clone(), dim),
                        (false, true) => activation::log_softmax(x.clone(), dim),
                    };
                    // A loss that weighs every output differently, so every gradient term counts.
                    let loss = y.clone().mul(Tensor::from_data(w.to_data(), &ad)).sum();
                    let g = x.grad(&loss.backward()).unwrap();
                    (y.inner().into_data(), g.into_data())
                };
                for log in [false, true] {
                    let (y_f, g_f) = run(true, log);
                    let (y_c, g_c) = run(false, log);
                    y_f.assert_approx_eq::<f32>(&y_c, burn::tensor::Tolerance::absolute(1e-5));
                    g_f.assert_approx_eq::<f32>(&g_c, burn::tensor::Tolerance::absolute(1e-5));
                }
            }
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
