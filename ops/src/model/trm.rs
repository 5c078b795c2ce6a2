//! The `trm-titans-mag` language model: a stack of MAG blocks used as the shared network of a
//! Tiny Recursive Model (Jolicoeur-Martineau, 2025), with deep supervision and an ACT halting head.
//!
//! Per position, a latent `z` and an answer state `y` are refined from the token embedding `e`:
//!
//! ```text
//! repeat T cycles (gradient only through the last):
//!     repeat n times:  z ← rms(net(e + y + z)) · ‖e‖
//!     y ← rms(net(y + z)) · ‖e‖
//! logits = head(norm(y)),   q = σ(halt(norm(y)))   (probability the prediction is already right)
//! ```
//!
//! `rms` is a parameter-free RMS normalisation of the state, as TRM's post-norm blocks give, and
//! `‖e‖` the RMS of the token's embedding: the state keeps the scale of the embeddings however
//! many passes run, so a recursion can be repeated (deep supervision, ACT) without the residual
//! stream growing, and the token signal is never drowned by the state it is added to. `y` and `z` start from fixed random
//! vectors (`y_init`, `z_init`, TRM's `H_init`/`L_init` buffers): saved with the model, never
//! trained.
//!
//! Training runs `sup_steps` such recursions, carrying `(y, z)` detached from one to the next, with
//! a cross-entropy loss on the shifted next-token labels at every step plus a BCE loss teaching `q`
//! whether the step's argmax prediction was correct. At inference a token stops once `q` reaches the
//! ACT threshold: its state is frozen and, when every token has halted, the recursion stops.
//! Everything per position is causal: attention is masked, the memory reads only earlier chunks.

use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::attention::causal_window_bias;
use super::block::{BlockSpec, MagBlock};
use super::config::ModelConfig;
use super::fused::log_softmax;
use super::layers::{Dense, Init, RmsNorm, Rope};

#[derive(Module, Debug)]
pub struct TrmTitansMag {
    pub embed: Param<Tensor<2>>,
    /// Fixed (no gradient) initial answer state.
    pub y_init: Param<Tensor<1>>,
    /// Fixed (no gradient) initial latent state.
    pub z_init: Param<Tensor<1>>,
    pub blocks: Vec<MagBlock>,
    pub norm_out: RmsNorm,
    pub head: Option<Dense>,
    pub halt: Dense,
    pub halt_bias: Param<Tensor<1>>,
    /// Quiet-STaR's mixing head (a model whose config has `mixing_head: true`).
    pub talk: Option<super::mixing::MixingHead>,
    pub n_inner: usize,
    pub cycles: usize,
    pub pad_id: usize,
    /// A quantized model's embedding kept as the file stores it (then `embed` holds a 1×1
    /// zero tensor): lookups and the tied projection read it instead.
    #[module(skip)]
    pub embed_host: Option<std::sync::Arc<super::ternary::HostTable>>,
}

/// Tensors shared by every forward pass of one config: the rotary tables and the causal
/// sliding-window mask for `max_seq` positions, which each batch cuts to its length
/// ([`Tables::causal_mask`]) unless it brings a mask of its own (the `*_masked` forwards).
pub struct Tables {
    rope: Rope,
    causal: Tensor<4>,
}

impl Tables {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        Self {
            rope: Rope::new(cfg.max_seq, cfg.d_model / cfg.heads, cfg.rope_theta, device),
            causal: causal_window_bias(cfg.max_seq, cfg.window, device),
        }
    }

    /// The rotary tables.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The additive causal mask of a batch of `seq` positions, `[1, 1, seq, seq]`.
    pub fn causal_mask(&self, seq: usize) -> Tensor<4> {
        self.causal.clone().narrow(2, 0, seq).narrow(3, 0, seq)
    }
}

/// Loss and statistics of one training forward.
pub struct TrainOutput {
    /// Mean over supervision steps of (CE + act_weight · BCE): what to minimise.
    pub loss: Tensor<1>,
    /// Cross-entropy of the last supervision step (nats/token).
    pub ce: Tensor<1>,
    pub act_bce: Tensor<1>,
    /// Mean halting probability of the last step.
    pub halt_prob: Tensor<1>,
    /// Per block: each head's largest attention logit over every pass of the block in the last
    /// supervision step (for QK-clip), `[heads]`.
    pub max_logits: Vec<Tensor<1>>,
    pub memory_usage: Option<Tensor<1>>,
    pub memory_surprise: Option<Tensor<1>>,
    /// Next-token log-probabilities of the last supervision step (with gradient), `[b, s, vocab]`.
    pub logp: Tensor<3>,
    /// The logits they come from (with gradient), `[b, s, vocab]`.
    pub logits: Tensor<3>,
    /// 1 where the target is a real token, 0 for padding, `[b, s]`.
    pub mask: Tensor<2>,
}

/// Mean over real tokens of KL(p_ref ‖ p) = Σ_v p_ref (log p_ref − log p), for a frozen reference's
/// log-probabilities `ref_logp` (no gradient) and the model's `logp`.
pub fn kl_divergence(ref_logp: Tensor<3>, logp: Tensor<3>, mask: Tensor<2>) -> Tensor<1> {
    let [b, s, _] = logp.dims();
    let ref_logp = ref_logp.detach();
    let per_token = ref_logp
        .clone()
        .exp()
        .mul(ref_logp.sub(logp))
        .sum_dim(2)
        .reshape([b, s]);
    per_token
        .mul(mask.clone())
        .sum()
        .div(mask.sum().add_scalar(1e-9))
}

/// Result of ACT inference.
pub struct InferOutput {
    pub logits: Tensor<3>,
    /// Supervision steps each token ran before halting, `[batch][seq]`.
    pub halting_steps: Vec<Vec<u32>>,
    /// Recursions actually executed (each is a full `cycles × (n_inner + 1)` pass).
    pub recursions: usize,
    /// The memory blocks' slot usage in the last recursion (`None` without memory blocks).
    pub memory_usage: Option<f64>,
}

/// Per block, the elementwise max over its passes: `stats` holds one entry per block per pass of
/// the stack, in order (pass 0 blocks 0..n, pass 1 blocks 0..n, …).
pub fn per_block_max(stats: &[Tensor<1>], blocks: usize) -> Vec<Tensor<1>> {
    assert!(
        blocks > 0 && stats.len().is_multiple_of(blocks),
        "{} entries are not whole passes of {blocks} blocks",
        stats.len()
    );
    (0..blocks)
        .map(|b| {
            stats[b..]
                .iter()
                .step_by(blocks)
                .cloned()
                .reduce(Tensor::max_pair)
                .expect("at least one pass")
        })
        .collect()
}

/// ACT's bookkeeping over a batch of tokens: which have halted, after how many recursions.
/// A recursion's new states replace the old only where a token still runs ([`Self::freeze`]);
/// then every running token counts the recursion and halts once its halting probability reaches
/// the threshold ([`Self::update`]).
pub(super) struct Halting {
    halted: Vec<bool>,
    /// Recursions each token ran before halting, row-major `[b × n]`.
    pub steps: Vec<u32>,
    shape: [usize; 2],
    threshold: f64,
    device: Device,
}

impl Halting {
    pub fn new(b: usize, n: usize, threshold: f64, device: &Device) -> Self {
        Self {
            halted: vec![false; b * n],
            steps: vec![0; b * n],
            shape: [b, n],
            threshold,
            device: device.clone(),
        }
    }

    /// `(y, z)`: the new states of running tokens, the old states of halted ones.
    pub fn freeze(
        &self,
        y_new: Tensor<3>,
        z_new: Tensor<3>,
        y: Tensor<3>,
        z: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [b, n] = self.shape;
        let d = y.dims()[2];
        let frozen: Tensor<3, Bool> = Tensor::<2, Bool>::from_data(
            TensorData::new(self.halted.clone(), [b, n]),
            &self.device,
        )
        .reshape([b, n, 1])
        .expand([b, n, d]);
        (
            y_new.mask_where(frozen.clone(), y),
            z_new.mask_where(frozen, z),
        )
    }

    /// Count the recursion that just ran for every running token, then halt those whose halting
    /// probability `q` (`[b, n, 1]`) reached the threshold.
    pub fn update(&mut self, q: Tensor<3>) {
        for (h, s) in self.halted.iter().zip(self.steps.iter_mut()) {
            if !h {
                *s += 1;
            }
        }
        let q: Vec<f32> = q
            .into_data()
            .try_to_vec()
            .expect("f32 halting probabilities");
        for (h, p) in self.halted.iter_mut().zip(q) {
            if p as f64 >= self.threshold {
                *h = true;
            }
        }
    }

    pub fn all_halted(&self) -> bool {
        self.halted.iter().all(|h| *h)
    }
}

/// Parameter-free RMS normalisation over the last dimension.
pub(super) fn rms(x: Tensor<3>) -> Tensor<3> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .mean_dim(2)
        .add_scalar(1e-6)
        .sqrt();
    x.div(norm)
}

/// Each token's state is kept at its embedding's RMS: `[b, s, 1]` for embeddings `e`.
pub(super) fn state_scale(e: &Tensor<3>) -> Tensor<3> {
    e.clone()
        .powf_scalar(2.0)
        .mean_dim(2)
        .add_scalar(1e-12)
        .sqrt()
}

/// The halting bias a fresh model starts from: "not yet right".
pub const INITIAL_HALT_BIAS: f32 = -2.0;
/// σ([`INITIAL_HALT_BIAS`]): the halting probability of every token before training.
pub const INITIAL_HALT_PROBABILITY: f64 = 0.119_202_922_022_117_57;

fn logit(p: f64) -> f32 {
    (p / (1.0 - p)).ln() as f32
}

impl TrmTitansMag {
    /// A fresh model of `cfg`, its weights drawn from `seed`.
    pub fn new(cfg: &ModelConfig, seed: u64, device: &Device) -> Self {
        Self::build(cfg, Init::new(seed, device))
    }

    /// The model of `cfg` with every parameter declared but none drawn or allocated
    /// ([`Init::shapes`]): what loading a weights file fills.
    pub fn skeleton(cfg: &ModelConfig, device: &Device) -> Self {
        Self::build(cfg, Init::shapes(device))
    }

    fn build(cfg: &ModelConfig, mut init: Init) -> Self {
        let d = cfg.d_model;
        // GPT-2 style: projections into the residual stream scaled by 1/sqrt(2·layers).
        let out_std = 0.02 / (2.0 * cfg.layers as f64).sqrt();
        let gates = cfg.initial_mem_gates().map(logit);
        let blocks = (0..cfg.layers)
            .map(|l| {
                let spec = BlockSpec {
                    d,
                    heads: cfg.heads,
                    window: cfg.window,
                    d_ff: cfg.d_ff,
                    memory: cfg.memory_layers.contains(&l).then_some((
                        cfg.ltm_slots,
                        cfg.mem_chunk,
                        gates,
                    )),
                    out_std,
                };
                MagBlock::new(&mut init, &spec)
            })
            .collect();
        Self {
            embed: init.normal([cfg.vocab_size, d], 0.02),
            y_init: init.normal([d], 0.02).set_require_grad(false),
            z_init: init.normal([d], 0.02).set_require_grad(false),
            blocks,
            norm_out: RmsNorm::new(&mut init, d),
            head: (!cfg.tie_embeddings).then(|| Dense::new(&mut init, d, cfg.vocab_size, 0.02)),
            halt: Dense::new(&mut init, d, 1, 0.02),
            // Start pessimistic: "not yet right" (p ≈ 0.12).
            halt_bias: init.constant([1], INITIAL_HALT_BIAS),
            // Drawn last, so every other weight is the same with or without it.
            talk: cfg
                .mixing_head
                .then(|| super::mixing::MixingHead::new(&mut init, d)),
            n_inner: cfg.n_inner,
            cycles: cfg.cycles,
            pad_id: 0,
            embed_host: None,
        }
    }

    /// Every dense layer with the path of its weight's name without `.weight`
    /// (`blocks.0.attn.wq`), in a fixed order.
    pub fn denses_mut(&mut self) -> Vec<(String, &mut Dense)> {
        let mut out: Vec<(String, &mut Dense)> = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let at = |name: &str| format!("blocks.{i}.{name}");
            let attn = &mut block.attn;
            out.push((at("attn.wq"), &mut attn.wq));
            out.push((at("attn.wk"), &mut attn.wk));
            out.push((at("attn.wv"), &mut attn.wv));
            out.push((at("attn.wo"), &mut attn.wo));
            if let Some(mem) = &mut block.memory {
                out.push((at("memory.wk"), &mut mem.wk));
                out.push((at("memory.wv"), &mut mem.wv));
                out.push((at("memory.wq"), &mut mem.wq));
                out.push((at("memory.address"), &mut mem.address));
                out.push((at("memory.wo"), &mut mem.wo));
                out.push((at("memory.gates"), &mut mem.gates));
            }
            if let Some(gate) = &mut block.gate {
                out.push((at("gate"), gate));
            }
            let ffn = &mut block.ffn;
            out.push((at("ffn.gate"), &mut ffn.gate));
            out.push((at("ffn.up"), &mut ffn.up));
            out.push((at("ffn.down"), &mut ffn.down));
        }
        if let Some(head) = &mut self.head {
            out.push(("head".into(), head));
        }
        out.push(("halt".into(), &mut self.halt));
        if let Some(talk) = &mut self.talk {
            out.push(("talk.hidden".into(), &mut talk.hidden));
            out.push(("talk.out".into(), &mut talk.out));
        }
        out
    }

    /// Replace the memory gates (η, θ, α) of every memory block, e.g. after loading a shared
    /// initialisation into a variant that sets its own.
    pub fn set_memory_gates(&mut self, gates: [f64; 3]) {
        for block in &mut self.blocks {
            if let Some(mem) = &mut block.memory {
                let device = mem.gate_bias.val().device();
                let logits: Vec<f32> = gates.iter().map(|g| logit(*g)).collect();
                mem.gate_bias =
                    Param::from_tensor(Tensor::from_data(TensorData::new(logits, [3]), &device));
            }
        }
    }

    pub fn num_params(&self) -> usize {
        Module::num_params(self)
    }

    /// The token embeddings injected into every latent update.
    pub(super) fn embed_tokens(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        if let Some(table) = &self.embed_host {
            return table.lookup(tokens);
        }
        let [b, s] = tokens.dims();
        let w = self.embed.val();
        let d = w.dims()[1];
        w.select(0, tokens.reshape([b * s])).reshape([b, s, d])
    }

    /// The block stack: one application of the shared network.
    fn net(
        &self,
        x: Tensor<3>,
        t: &Tables,
        mask: &Tensor<4>,
        stats: &mut Vec<super::block::BlockStats>,
    ) -> Tensor<3> {
        let mut h = x;
        for block in &self.blocks {
            let (out, st) = block.forward(h, &t.rope, mask);
            h = out;
            stats.push(st);
        }
        h
    }

    /// One recursion: `cycles` cycles of `n_inner` latent updates and one answer update, with
    /// gradient only through the last cycle.
    fn recurse(
        &self,
        e: &Tensor<3>,
        y: Tensor<3>,
        z: Tensor<3>,
        t: &Tables,
        mask: &Tensor<4>,
        stats: &mut Vec<super::block::BlockStats>,
    ) -> (Tensor<3>, Tensor<3>) {
        let (mut y, mut z) = (y, z);
        let scale = state_scale(e);
        // The cycles before the last carry no gradient: they run on an untracked copy of the
        // weights (a cheap handle clone) with detached inputs, so autodiff records nothing for
        // them. The values are exactly those of a tracked run.
        let untracked = (self.cycles > 1).then(|| self.clone().no_grad());
        for c in 0..self.cycles {
            let last = c + 1 == self.cycles;
            let mut scratch = Vec::new();
            let (model, st, e, scale) = match (&untracked, last) {
                (Some(m), false) => {
                    (y, z) = (y.detach(), z.detach());
                    (m, &mut scratch, e.clone().detach(), scale.clone().detach())
                }
                _ => (self, &mut *stats, e.clone(), scale.clone()),
            };
            for _ in 0..self.n_inner {
                z = rms(model.net(e.clone().add(y.clone()).add(z), t, mask, st)).mul(scale.clone());
            }
            y = rms(model.net(y.add(z.clone()), t, mask, st)).mul(scale);
            if !last {
                y = y.detach();
                z = z.detach();
            }
        }
        (y, z)
    }

    /// The next-token logits of answer states `y` (`[b, s, d]`), e.g. a mix of two states.
    pub fn logits_of(&self, y: Tensor<3>) -> Tensor<3> {
        self.readout(y).0
    }

    pub(super) fn readout(&self, y: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let h = self.norm_out.forward(y);
        let logits = if let Some(head) = &self.head {
            head.forward(h.clone())
        } else if let Some(table) = &self.embed_host {
            table.project(h.clone())
        } else {
            let [b, s, d] = h.dims();
            let w = self.embed.val();
            let v = w.dims()[0];
            h.clone()
                .reshape([b * s, d])
                .matmul(w.transpose())
                .reshape([b, s, v])
        };
        (logits, self.halting(h))
    }

    /// The halting probability of answer states `y`, without the logits (the decoder's
    /// per-recursion halting decision needs only this).
    pub(super) fn halt_prob(&self, y: Tensor<3>) -> Tensor<3> {
        self.halting(self.norm_out.forward(y))
    }

    /// σ(halt(h) + bias) for normed states `h`.
    fn halting(&self, h: Tensor<3>) -> Tensor<3> {
        sigmoid(
            self.halt
                .forward(h)
                .add(self.halt_bias.val().reshape([1, 1, 1])),
        )
    }

    pub(super) fn initial_state(&self, b: usize, s: usize) -> (Tensor<3>, Tensor<3>) {
        let d = self.y_init.val().dims()[0];
        let y = self.y_init.val().reshape([1, 1, d]).expand([b, s, d]);
        let z = self.z_init.val().reshape([1, 1, d]).expand([b, s, d]);
        (y, z)
    }

    /// The RMS of the answer and latent states after each of `steps` recursions (for tests and
    /// diagnostics: the state must keep its scale).
    pub fn state_rms(&self, tokens: Tensor<2, Int>, steps: usize, t: &Tables) -> Vec<(f64, f64)> {
        let [b, s] = tokens.dims();
        let mask = t.causal_mask(s);
        let e = self.embed_tokens(tokens).detach();
        let (mut y, mut z) = self.initial_state(b, s);
        let rms_of =
            |x: &Tensor<3>| (x.clone().powf_scalar(2.0).mean().into_scalar::<f32>() as f64).sqrt();
        (0..steps)
            .map(|_| {
                (y, z) = self.recurse(&e, y.clone(), z.clone(), t, &mask, &mut Vec::new());
                (rms_of(&y), rms_of(&z))
            })
            .collect()
    }

    /// Logits after `steps` full recursions (no halting), for tests and evaluation.
    pub fn forward_logits(&self, tokens: Tensor<2, Int>, steps: usize, t: &Tables) -> Tensor<3> {
        let mask = t.causal_mask(tokens.dims()[1]);
        self.forward_logits_masked(tokens, steps, t, &mask)
    }

    /// [`Self::forward_logits`] with the batch's own additive attention mask `[1|b, 1, s, s]`.
    pub fn forward_logits_masked(
        &self,
        tokens: Tensor<2, Int>,
        steps: usize,
        t: &Tables,
        mask: &Tensor<4>,
    ) -> Tensor<3> {
        let [b, s] = tokens.dims();
        let e = self.embed_tokens(tokens);
        let (mut y, mut z) = self.initial_state(b, s);
        for _ in 0..steps.max(1) {
            let mut stats = Vec::new();
            (y, z) = self.recurse(&e, y, z, t, mask, &mut stats);
        }
        self.readout(y).0
    }

    /// Deep-supervised training loss for `inputs` → `targets` (the labels, already shifted: the
    /// target at position i is the token at i + 1). Targets equal to the pad id are ignored.
    pub fn forward_train(
        &self,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        sup_steps: usize,
        act_weight: f64,
        t: &Tables,
    ) -> TrainOutput {
        let mask = t.causal_mask(inputs.dims()[1]);
        self.forward_train_masked(inputs, targets, &mask, t, sup_steps, act_weight)
    }

    /// [`Self::forward_train`] with the batch's own additive attention mask `[1|b, 1, s, s]`.
    pub fn forward_train_masked(
        &self,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        mask: &Tensor<4>,
        t: &Tables,
        sup_steps: usize,
        act_weight: f64,
    ) -> TrainOutput {
        let [b, s] = inputs.dims();
        let e = self.embed_tokens(inputs);
        let (mut y, mut z) = self.initial_state(b, s);
        let weight = targets.clone().not_equal_elem(self.pad_id as i64).float();
        let n_real = weight.clone().sum().add_scalar(1e-9);
        let mut total: Option<Tensor<1>> = None;
        let (mut ce_last, mut bce_last, mut q_last, mut logp_last) = (None, None, None, None);
        let mut logits_last = None;
        let mut stats = Vec::new();
        for step in 0..sup_steps.max(1) {
            stats.clear();
            (y, z) = self.recurse(&e, y, z, t, mask, &mut stats);
            let (logits, q) = self.readout(y.clone());
            let logp = log_softmax(logits.clone(), 2);
            logp_last = Some(logp.clone());
            logits_last = Some(logits.clone());
            let picked = logp
                .gather(2, targets.clone().reshape([b, s, 1]))
                .reshape([b, s]);
            let ce = picked.mul(weight.clone()).sum().neg().div(n_real.clone());
            let correct = logits
                .detach()
                .argmax(2)
                .reshape([b, s])
                .equal(targets.clone())
                .float();
            let q = q.reshape([b, s]).clamp(1e-6, 1.0 - 1e-6);
            let bce_tok = correct
                .clone()
                .mul(q.clone().log())
                .add(
                    correct
                        .neg()
                        .add_scalar(1.0)
                        .mul(q.clone().neg().add_scalar(1.0).log()),
                )
                .neg();
            let bce = bce_tok.mul(weight.clone()).sum().div(n_real.clone());
            let step_loss = ce.clone().add(bce.clone().mul_scalar(act_weight));
            total = Some(match total {
                None => step_loss,
                Some(t) => t.add(step_loss),
            });
            ce_last = Some(ce.detach());
            bce_last = Some(bce.detach());
            q_last = Some(q.detach().mean());
            if step + 1 < sup_steps {
                y = y.detach();
                z = z.detach();
            }
        }
        let loss = total
            .expect("at least one step")
            .div_scalar(sup_steps.max(1) as f64);
        let max_logits = per_block_max(
            &stats
                .iter()
                .map(|s| s.max_logit.clone())
                .collect::<Vec<_>>(),
            self.blocks.len(),
        );
        let mem: Vec<_> = stats.iter().filter_map(|s| s.memory.clone()).collect();
        let (memory_usage, memory_surprise) = if mem.is_empty() {
            (None, None)
        } else {
            let n = mem.len() as f64;
            let usage = Tensor::cat(mem.iter().map(|m| m.usage.clone()).collect(), 0)
                .sum()
                .div_scalar(n);
            let surprise = Tensor::cat(mem.iter().map(|m| m.surprise.clone()).collect(), 0)
                .sum()
                .div_scalar(n);
            (Some(usage), Some(surprise))
        };
        TrainOutput {
            loss,
            ce: ce_last.expect("step ran"),
            act_bce: bce_last.expect("step ran"),
            halt_prob: q_last.expect("step ran"),
            max_logits,
            memory_usage,
            memory_surprise,
            logp: logp_last.expect("step ran"),
            logits: logits_last.expect("step ran"),
            mask: weight,
        }
    }

    /// ACT inference: each token recurses until its halting probability reaches `threshold` (at
    /// most `max_steps` recursions); halted tokens are frozen; the loop ends when all have halted.
    pub fn infer(
        &self,
        tokens: Tensor<2, Int>,
        threshold: f64,
        max_steps: usize,
        t: &Tables,
    ) -> InferOutput {
        let [b, s] = tokens.dims();
        let device = tokens.device();
        let mask = t.causal_mask(s);
        let e = self.embed_tokens(tokens).detach();
        let (y0, z0) = self.initial_state(b, s);
        let (mut y, mut z) = (y0.detach(), z0.detach());
        let mut act = Halting::new(b, s, threshold, &device);
        let mut recursions = 0;
        let mut logits = None;
        let mut memory_usage = None;
        for _ in 0..max_steps.max(1) {
            let mut stats = Vec::new();
            let (y_new, z_new) = self.recurse(&e, y.clone(), z.clone(), t, &mask, &mut stats);
            let usage: Vec<f64> = stats
                .iter()
                .filter_map(|s| s.memory.as_ref())
                .map(|m| m.usage.clone().into_scalar::<f32>() as f64)
                .collect();
            if !usage.is_empty() {
                memory_usage = Some(usage.iter().sum::<f64>() / usage.len() as f64);
            }
            (y, z) = act.freeze(y_new.detach(), z_new.detach(), y, z);
            recursions += 1;
            let (l, q) = self.readout(y.clone());
            logits = Some(l.detach());
            act.update(q);
            if act.all_halted() {
                break;
            }
        }
        let steps = act.steps;
        let halting_steps = steps.chunks(s).map(<[u32]>::to_vec).collect();
        InferOutput {
            logits: logits.expect("one step ran"),
            halting_steps,
            recursions,
            memory_usage,
        }
    }
}
