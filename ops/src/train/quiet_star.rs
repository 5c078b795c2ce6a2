//! Quiet-STaR's learning signal (Zelikman et al., 2024, §4 and the authors' code): the mixing
//! head that interpolates the states before and after a thought, and the REINFORCE estimator
//! that makes thoughts which help predict the coming text more likely.
//!
//! With `n` thoughts sampled after position `j`, thought `i`'s reward is the log-likelihood of the
//! next `n_true` text tokens under the mixed prediction with thought `i`, minus the mean of the
//! same over the *other* thoughts at `j` (the authors' `trice_mode` baseline):
//!
//! ```text
//! r_i = ll_i − mean_{k≠i} ll_k           (no gradient)
//! L_REINFORCE = −mean_j Σ_i r_i · log p(thought_i)
//! ```
//!
//! so a thought better than its siblings gains probability and a worse one loses it; with one
//! thought there is no baseline and no signal.

use burn::module::{Module, Param};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Tensor};

use crate::model::layers::{Dense, Init};

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
    pub fn new(d: usize, seed: u64, device: &Device) -> Self {
        let mut init = Init::new(seed, device);
        let logit = (INITIAL_MIXING_WEIGHT / (1.0 - INITIAL_MIXING_WEIGHT)).ln() as f32;
        Self {
            hidden: Dense::new(&mut init, 2 * d, d, 0.02),
            out: Dense::new(&mut init, d, 1, 0.02),
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

/// Each thought's reward at every position: its log-likelihood minus the mean of the other
/// thoughts' (`log_lik[i]` is thought `i`'s, `[b, s]`), detached. Fewer than two thoughts give
/// zero rewards: there is nothing to compare with.
pub fn rewards(log_lik: &[Tensor<2>]) -> Vec<Tensor<2>> {
    let n = log_lik.len();
    if n < 2 {
        return log_lik.iter().map(|l| l.clone().zeros_like()).collect();
    }
    let total = log_lik
        .iter()
        .cloned()
        .reduce(Tensor::add)
        .expect("two or more")
        .detach();
    log_lik
        .iter()
        .map(|l| {
            let l = l.clone().detach();
            let others = total.clone().sub(l.clone()).div_scalar((n - 1) as f64);
            l.sub(others)
        })
        .collect()
}

/// `−mean over real positions of Σ_i r_i · log p(thought_i)`: its gradient is REINFORCE's,
/// `−r ∇ log p(thought)`. `log_p[i]` is thought `i`'s log-probability (with gradient), `[b, s]`;
/// `mask` is 1 at positions that count.
pub fn reinforce_loss(log_p: &[Tensor<2>], rewards: &[Tensor<2>], mask: Tensor<2>) -> Tensor<1> {
    let n = mask.clone().sum().add_scalar(1e-9);
    log_p
        .iter()
        .zip(rewards)
        .map(|(lp, r)| lp.clone().mul(r.clone().detach()).mul(mask.clone()).sum())
        .reduce(Tensor::add)
        .expect("one thought or more")
        .neg()
        .div(n)
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Int, TensorData};

    use super::*;
    use crate::model::fused::log_softmax;

    fn vec2(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn rewards_are_each_thoughts_log_likelihood_against_the_others_mean() {
        let dev = crate::device::test_device();
        let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, 2]), &dev);
        let r = rewards(&[
            t(vec![-1.0, -2.0]),
            t(vec![-3.0, -2.0]),
            t(vec![-2.0, -5.0]),
        ]);
        // Position 0: -1 − mean(-3, -2) = 1.5; -3 − mean(-1, -2) = -1.5; -2 − mean(-1, -3) = 0.
        let got: Vec<Vec<f32>> = r.into_iter().map(vec2).collect();
        assert_eq!(got, vec![vec![1.5, 1.5], vec![-1.5, 1.5], vec![0.0, -3.0]]);
        // One thought: no baseline, no signal.
        assert_eq!(
            vec2(rewards(&[t(vec![-1.0, -2.0])]).remove(0)),
            vec![0.0, 0.0]
        );
    }

    /// A two-thought policy: a categorical over 4 thought tokens, one token per thought.
    #[derive(Module, Debug)]
    struct Policy {
        logits: Param<Tensor<1>>,
    }

    #[test]
    fn reinforce_makes_the_better_thought_more_likely_and_the_worse_less() {
        let dev = crate::device::test_device();
        let mut policy = Policy {
            logits: Param::from_tensor(Tensor::zeros([4], &dev)),
        };
        // Thought A is token 1, thought B token 2. After A the answer is likelier (log-lik
        // −0.5) than after B (−2.0).
        let (a, b) = (1i64, 2i64);
        let log_lik = [
            Tensor::<2>::from_data(TensorData::new(vec![-0.5f32], [1, 1]), &dev),
            Tensor::<2>::from_data(TensorData::new(vec![-2.0f32], [1, 1]), &dev),
        ];
        let r = rewards(&log_lik);
        let log_p = |p: &Policy, token: i64| -> Tensor<2> {
            let lp = log_softmax(p.logits.val().reshape([1, 4]), 1);
            lp.select(
                1,
                Tensor::<1, Int>::from_data(TensorData::new(vec![token], [1]), &dev),
            )
        };
        let before = (vec2(log_p(&policy, a))[0], vec2(log_p(&policy, b))[0]);
        for _ in 0..5 {
            let loss = reinforce_loss(
                &[log_p(&policy, a), log_p(&policy, b)],
                &r,
                Tensor::ones([1, 1], &dev),
            );
            let grads = loss.backward();
            let g = policy.logits.val().grad(&grads).unwrap();
            let stepped = policy.logits.val().inner().sub(g.mul_scalar(0.5));
            policy.logits = Param::from_tensor(Tensor::from_inner(stepped).require_grad());
        }
        let after = (vec2(log_p(&policy, a))[0], vec2(log_p(&policy, b))[0]);
        assert!(
            after.0 > before.0,
            "the better thought lost probability: {before:?} → {after:?}"
        );
        assert!(
            after.1 < before.1,
            "the worse thought gained probability: {before:?} → {after:?}"
        );
        // Equal log-likelihoods: no reward, no change.
        let same = rewards(&[log_lik[0].clone(), log_lik[0].clone()]);
        let loss = reinforce_loss(
            &[log_p(&policy, a), log_p(&policy, b)],
            &same,
            Tensor::ones([1, 1], &dev),
        );
        let g = policy.logits.val().grad(&loss.backward()).unwrap();
        assert!(g.abs().max().into_scalar::<f32>() == 0.0);
    }

    #[test]
    fn a_new_mixing_head_leans_on_the_base_prediction_and_mixes_convexly() {
        let dev = crate::device::test_device();
        let head = MixingHead::new(8, 1, &dev);
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
