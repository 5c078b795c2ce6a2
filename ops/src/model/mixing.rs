//! Quiet-STaR's mixing ("talk") head: how much of the post-thought state goes into a
//! prediction. Part of the model when its config says `mixing_head: true` (a Quiet-STaR model);
//! trained by [`crate::train::quiet_star`].

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};

use super::layers::{Dense, Init};

/// The mixing ("talk") head: a shallow MLP over `[h_before; h_after]` giving the weight
/// `w ∈ (0, 1)` of the post-thought state, `mixed = (1 − w)·h_before + w·h_after`.
#[derive(Module, Debug)]
pub struct MixingHead {
    pub hidden: Dense,
    pub out: Dense,
    pub bias: Param<Tensor<1>>,
}

/// The mixing weight a new head starts near: the base prediction dominates at first, which eases
/// the distribution shift early in training (the reason the paper gives for the head).
pub const INITIAL_MIXING_WEIGHT: f64 = 0.1;

impl MixingHead {
    pub fn new(init: &mut Init, d: usize) -> Self {
        let logit = (INITIAL_MIXING_WEIGHT / (1.0 - INITIAL_MIXING_WEIGHT)).ln() as f32;
        Self {
            hidden: Dense::new(init, 2 * d, d, 0.02),
            out: Dense::new(init, d, 1, 0.02),
            bias: init.constant([1], logit),
        }
    }

    /// `w`, `[b, s, 1]`, for states `[b, s, d]`.
    pub fn weight(&self, before: Tensor<3>, after: Tensor<3>) -> Tensor<3> {
        let h = relu(self.hidden.forward(Tensor::cat(vec![before, after], 2)));
        sigmoid(self.out.forward(h).add(self.bias.val().reshape([1, 1, 1])))
    }

    /// The mixed state `(1 − w)·before + w·after` and `w`.
    pub fn mix(&self, before: Tensor<3>, after: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let w = self.weight(before.clone(), after.clone());
        let mixed = before
            .mul(w.clone().neg().add_scalar(1.0))
            .add(after.mul(w.clone()));
        (mixed, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_mixing_head_leans_on_the_base_prediction_and_mixes_convexly() {
        let dev = crate::device::test_device();
        let head = MixingHead::new(&mut Init::new(1, &dev), 8);
        let before = Tensor::<3>::ones([2, 3, 8], &dev);
        let after = Tensor::<3>::zeros([2, 3, 8], &dev).sub_scalar(1.0);
        let (mixed, w) = head.mix(before, after);
        let w: Vec<f32> = w.into_data().try_to_vec().unwrap();
        assert!(w.iter().all(|w| (w - 0.1).abs() < 0.02), "{w:?}");
        // Each mixed value is (1 − w)·1 + w·(−1) = 1 − 2w.
        let m: Vec<f32> = mixed.into_data().try_to_vec().unwrap();
        for (i, v) in m.iter().enumerate() {
            assert!((v - (1.0 - 2.0 * w[i / 8])).abs() < 1e-6);
        }
    }
}
