//! Incremental decoding: a [`Decoder`] keeps, for every pass of the network, the attention keys
//! and values and the Titans memory state of the positions it has seen, so each new token costs
//! its own passes plus attention over the cache — not a recompute of the prefix.
//!
//! Under TRM every position runs `levels` recursions (ACT's `max_steps`) of
//! `cycles × (n_inner + 1)` passes through the block stack, and in pass `p` of recursion `r` a
//! position attends to the earlier positions' pass-`p` states *of recursion `r`*. So the cache has
//! one slot per (recursion, pass, block). ACT freezes a halted token's state, but the full
//! computation ([`TrmTitansMag::infer`]) still runs that frozen state through later recursions,
//! and later tokens attend to what it gives; the decoder therefore runs every recursion for every
//! token (a halted token with its frozen state), which keeps every slot filled and makes the
//! logits those of the full recompute (a test checks it). Halting steps are reported as `infer`
//! reports them: recursions before the halting head said stop.
//!
//! The memory reads, at a position of chunk `c`, the state written by chunks before `c`; the
//! decoder keeps that state and the current chunk's inputs, and writes the chunk when it is
//! complete, exactly as the chunked forward does.
//!
//! Every row of a batch holds the same number of positions: each call appends the same number of
//! tokens to every row (a prompt prefix, then one token per step — a row still reading its prompt
//! feeds the prompt's next token, the others their last prediction).

use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::attention::CausalAttention;
use super::block::MagBlock;
use super::config::ModelConfig;
use super::fused::softmax;
use super::memory::NeuralMemory;
use super::memory::l2_normalize;
use super::trm::{Halting, Tables, TrmTitansMag, rms};

/// Keys and values of one attention pass, `[b, heads, cap, head_dim]` (positions ≥ a row's
/// length are zero until written).
pub(super) struct KvSlot {
    pub(super) k: Tensor<4>,
    pub(super) v: Tensor<4>,
}

/// The memory of one pass: the matrix and momentum after the last complete chunk, `[b, slots, d]`,
/// and the inputs of the chunk being filled, `[b, chunk, d]`.
pub(super) struct MemSlot {
    m: Tensor<3>,
    mom: Tensor<3>,
    pending: Tensor<3>,
    /// With [`Decoder::record_memory`]: the memory each chunk read, `chunk_starts[c]` for chunk `c`
    /// (what a thought at a position of chunk `c` reads, [`super::thoughts`]).
    pub(super) chunk_starts: Vec<Tensor<3>>,
}

/// What [`Decoder::extend`] gives for the new positions.
pub struct Extended {
    /// `[b, n, vocab]`.
    pub logits: Tensor<3>,
    /// The final answer states, `[b, n, d]`. Both carry a gradient when the model records one
    /// (a training step reading text through the decoder, e.g. Quiet-STaR's).
    pub state: Tensor<3>,
    /// Recursions each new token ran before halting, `[b][n]`.
    pub halting_steps: Vec<Vec<u32>>,
}

/// The incremental state of a batch of sequences for one model.
pub struct Decoder<'m> {
    pub(super) model: &'m TrmTitansMag,
    pub(super) tables: &'m Tables,
    pub(super) threshold: f64,
    pub(super) levels: usize,
    pub(super) window: usize,
    pub(super) max_seq: usize,
    pub(super) heads: usize,
    pub(super) device: Device,
    /// Positions every row holds.
    pub(super) len: usize,
    pub(super) rows: usize,
    pub(super) cap: usize,
    pub(super) kv: Vec<KvSlot>,
    pub(super) mem: Vec<Option<MemSlot>>,
    /// Keep the memory state at every chunk start (for thoughts).
    pub(super) record_memory: bool,
    /// The rotary positions and attention mask of the positions being appended.
    pub(super) current: Option<(Tensor<1, Int>, Tensor<4>)>,
}

impl<'m> Decoder<'m> {
    /// An empty decoder for `batch` rows, running ACT as deployed: the config's threshold and at
    /// most `sup_steps` recursions.
    pub fn new(
        model: &'m TrmTitansMag,
        cfg: &ModelConfig,
        tables: &'m Tables,
        batch: usize,
        device: &Device,
    ) -> Self {
        let levels = cfg.sup_steps.max(1);
        let passes = model.cycles * (model.n_inner + 1);
        let slots = levels * passes * model.blocks.len();
        let d = cfg.d_model;
        let dh = d / cfg.heads;
        let cap = 0;
        let kv = (0..slots)
            .map(|_| KvSlot {
                k: Tensor::zeros([batch, cfg.heads, cap, dh], device),
                v: Tensor::zeros([batch, cfg.heads, cap, dh], device),
            })
            .collect();
        let mem = (0..slots)
            .map(|i| {
                let block = &model.blocks[i % model.blocks.len()];
                block.memory.as_ref().map(|m| MemSlot {
                    m: Tensor::zeros([batch, m.slots, d], device),
                    mom: Tensor::zeros([batch, m.slots, d], device),
                    pending: Tensor::zeros([batch, m.chunk, d], device),
                    chunk_starts: Vec::new(),
                })
            })
            .collect();
        Self {
            model,
            tables,
            threshold: cfg.act_threshold,
            levels,
            window: cfg.window,
            max_seq: cfg.max_seq,
            heads: cfg.heads,
            device: device.clone(),
            len: 0,
            rows: batch,
            cap,
            kv,
            mem,
            record_memory: false,
            current: None,
        }
    }

    /// Keep the memory state each chunk starts from, so thoughts can read it
    /// ([`super::thoughts::Thoughts`]); call before the first [`Self::extend`].
    pub fn record_memory(mut self) -> Self {
        self.record_memory = true;
        self
    }

    /// Positions every row holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position has been appended yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many more positions a row may take (the rotary tables end at `max_seq`).
    pub fn room(&self) -> usize {
        self.max_seq - self.len
    }

    /// Keep only the rows `keep` (in that order), e.g. dropping finished sequences.
    pub fn retain(&mut self, keep: &[usize]) {
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(keep.iter().map(|&i| i as i64).collect(), [keep.len()]),
            &self.device,
        );
        for s in &mut self.kv {
            s.k = s.k.clone().select(0, idx.clone());
            s.v = s.v.clone().select(0, idx.clone());
        }
        for s in self.mem.iter_mut().flatten() {
            s.m = s.m.clone().select(0, idx.clone());
            s.mom = s.mom.clone().select(0, idx.clone());
            s.pending = s.pending.clone().select(0, idx.clone());
            for m in &mut s.chunk_starts {
                *m = m.clone().select(0, idx.clone());
            }
        }
        self.rows = keep.len();
    }

    /// Append `tokens` (`[b, n]`, `n` new positions for each row) and return their logits.
    ///
    /// # Panics
    /// When `b` is not the decoder's row count or the rows would pass `max_seq`.
    pub fn extend(&mut self, tokens: Tensor<2, Int>) -> Extended {
        let [b, n] = tokens.dims();
        assert_eq!(b, self.rows, "one row of tokens per sequence");
        let start = self.len;
        let end = start + n;
        assert!(
            end <= self.max_seq,
            "{end} positions pass max_seq {}",
            self.max_seq
        );
        self.grow(end);
        let pos_ids = Tensor::<1, Int>::from_data(
            TensorData::new(
                (0..b).flat_map(|_| start..end).map(|p| p as i64).collect(),
                [b * n],
            ),
            &self.device,
        );
        let mask = self.attention_mask(start, n);
        self.current = Some((pos_ids, mask));
        let (model, levels, threshold, device) =
            (self.model, self.levels, self.threshold, self.device.clone());
        let out = recurse(self, model, levels, threshold, tokens, &device);
        self.current = None;
        self.len = end;
        Extended {
            logits: model.logits_of(out.y.clone()),
            state: out.y,
            halting_steps: out.halting.chunks(n).map(<[u32]>::to_vec).collect(),
        }
    }
}

impl PassCache for Decoder<'_> {
    /// [`CausalAttention::forward`] for the new positions over the cached keys and values.
    fn attention(&mut self, attn: &CausalAttention, slot: usize, x: Tensor<3>) -> Tensor<3> {
        let (pos, mask) = self.current.clone().expect("inside extend");
        let [b, n, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let split = |t: Tensor<3>| t.reshape([b, n, h, dh]).swap_dims(1, 2);
        let rope = self.tables.rope();
        let q = rope.apply_at(split(attn.wq.forward(x.clone())), pos.clone());
        let k = rope.apply_at(split(attn.wk.forward(x.clone())), pos);
        let v = split(attn.wv.forward(x));
        let start = self.len;
        let cache = &mut self.kv[slot];
        let at = [0..b, 0..h, start..start + n, 0..dh];
        cache.k = cache.k.clone().slice_assign(at.clone(), k);
        cache.v = cache.v.clone().slice_assign(at, v);
        let scores = q
            .matmul(cache.k.clone().swap_dims(2, 3))
            .div_scalar((dh as f64).sqrt())
            .add(mask);
        let out = softmax(scores, 3)
            .matmul(cache.v.clone())
            .swap_dims(1, 2)
            .reshape([b, n, d]);
        attn.wo.forward(out)
    }

    /// [`NeuralMemory::forward`] for the new positions: read the state of the chunks before each
    /// position's own, keep the position as an input of its chunk, write complete chunks.
    fn memory(&mut self, mem: &NeuralMemory, slot: usize, h: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = h.dims();
        let c = mem.chunk;
        let start = self.len;
        let record = self.record_memory;
        let r = l2_normalize(mem.address.forward(mem.wq.forward(h.clone())));
        let state = self.mem[slot]
            .as_mut()
            .expect("a memory block has a memory slot");
        let mut reads = Vec::new();
        let mut t = 0;
        while t < n {
            let fill = (start + t) % c;
            let seg = (c - fill).min(n - t);
            if fill == 0 && record {
                state.chunk_starts.push(state.m.clone());
            }
            reads.push(r.clone().narrow(1, t, seg).matmul(state.m.clone()));
            state.pending = state
                .pending
                .clone()
                .slice_assign([0..b, fill..fill + seg, 0..d], h.clone().narrow(1, t, seg));
            if fill + seg == c {
                (state.m, state.mom) = write_chunk(mem, state);
            }
            t += seg;
        }
        mem.wo.forward(Tensor::cat(reads, 1))
    }
}

impl Decoder<'_> {
    /// Make room for `end` positions in every key/value slot.
    fn grow(&mut self, end: usize) {
        if end <= self.cap {
            return;
        }
        let cap = end.next_multiple_of(64).min(self.max_seq).max(end);
        let extra = cap - self.cap;
        for s in &mut self.kv {
            let [b, h, _, dh] = s.k.dims();
            let zeros = Tensor::<4>::zeros([b, h, extra, dh], &self.device);
            s.k = Tensor::cat(vec![s.k.clone(), zeros.clone()], 2);
            s.v = Tensor::cat(vec![s.v.clone(), zeros], 2);
        }
        self.cap = cap;
    }

    /// `[1, 1, n, cap]`: 0 where new position `start + i` may attend — itself and the
    /// `window − 1` positions before it — and −1e9 elsewhere, as
    /// [`super::attention::causal_window_bias`] gives the full forward.
    fn attention_mask(&self, start: usize, n: usize) -> Tensor<4> {
        let mut v = vec![-1e9f32; n * self.cap];
        for i in 0..n {
            let p = start + i;
            for j in p.saturating_sub(self.window - 1)..=p {
                v[i * self.cap + j] = 0.0;
            }
        }
        Tensor::from_data(TensorData::new(v, [1, 1, n, self.cap]), &self.device)
    }
}
/// Where one pass of the block stack reads and writes: what differs between appending text
/// positions ([`Decoder`]) and a step of parallel thoughts ([`super::thoughts::Thoughts`]).
pub(super) trait PassCache {
    /// The attention output of the new positions `x` (normed) in cache slot `slot`.
    fn attention(&mut self, attn: &CausalAttention, slot: usize, x: Tensor<3>) -> Tensor<3>;
    /// The memory's output for the new positions `h` (normed) in slot `slot`.
    fn memory(&mut self, mem: &NeuralMemory, slot: usize, h: Tensor<3>) -> Tensor<3>;
}

/// What [`recurse`] leaves: the final answer state and each token's halting steps.
pub(super) struct Recursed {
    pub y: Tensor<3>,
    pub halting: Vec<u32>,
}

/// ACT inference of new tokens `[b, n]` against `cache`: every one of `levels` recursions runs
/// for every token (a token halted by the `threshold` keeps its state, frozen), slot after slot
/// (recursion, pass, block), as [`TrmTitansMag::infer`] runs them.
pub(super) fn recurse<C: PassCache>(
    cache: &mut C,
    model: &TrmTitansMag,
    levels: usize,
    threshold: f64,
    tokens: Tensor<2, Int>,
    device: &Device,
) -> Recursed {
    let [b, n] = tokens.dims();
    let e = model.embed_tokens(tokens);
    let scale = super::trm::state_scale(&e);
    let (y0, z0) = model.initial_state(b, n);
    let (mut y, mut z) = (y0.detach(), z0.detach());
    let mut act = Halting::new(b, n, threshold, device);
    let mut slot = 0;
    let net = |cache: &mut C, x: Tensor<3>, slot: &mut usize| {
        let mut h = x;
        for block in &model.blocks {
            h = block_pass(cache, block, *slot, h);
            *slot += 1;
        }
        h
    };
    for _ in 0..levels {
        let (mut yn, mut zn) = (y.clone(), z.clone());
        for _ in 0..model.cycles {
            for _ in 0..model.n_inner {
                let x = e.clone().add(yn.clone()).add(zn);
                zn = rms(net(cache, x, &mut slot)).mul(scale.clone());
            }
            let x = yn.add(zn.clone());
            yn = rms(net(cache, x, &mut slot)).mul(scale.clone());
        }
        (y, z) = act.freeze(yn, zn, y, z);
        act.update(model.halt_prob(y.clone()));
    }
    Recursed {
        y,
        halting: act.steps,
    }
}

/// [`MagBlock::forward`] with attention and memory from `cache`.
fn block_pass<C: PassCache>(
    cache: &mut C,
    block: &MagBlock,
    slot: usize,
    x: Tensor<3>,
) -> Tensor<3> {
    let d = x.dims()[2];
    let h = block.norm_attn.forward(x.clone());
    let att = cache.attention(&block.attn, slot, h.clone());
    let mixed = match (&block.memory, &block.gate, &block.gate_bias) {
        (Some(mem), Some(gate), Some(gb)) => {
            let m = cache.memory(mem, slot, h.clone());
            let g = sigmoid(gate.forward(h).add(gb.val().reshape([1, 1, d])));
            let one_minus = g.clone().neg().add_scalar(1.0);
            g.mul(att).add(one_minus.mul(m))
        }
        _ => att,
    };
    let x = x.add(mixed);
    x.clone().add(block.ffn.forward(block.norm_ffn.forward(x)))
}

/// The memory after writing the complete chunk in `state.pending` (one step of the associative
/// loss with momentum and forgetting, as in [`NeuralMemory::forward`]).
fn write_chunk(mem: &NeuralMemory, state: &MemSlot) -> (Tensor<3>, Tensor<3>) {
    let h = state.pending.clone();
    let len = h.dims()[1];
    let a = l2_normalize(mem.address.forward(mem.wk.forward(h.clone())));
    let v = mem.wv.forward(h.clone());
    let g = sigmoid(
        mem.gates
            .forward(h.mean_dim(1))
            .add(mem.gate_bias.val().reshape([1, 1, 3])),
    );
    let eta = g.clone().narrow(2, 0, 1);
    let theta = g.clone().narrow(2, 1, 1);
    let alpha = g.narrow(2, 2, 1);
    let err = a.clone().matmul(state.m.clone()).sub(v);
    let grad = a.swap_dims(1, 2).matmul(err).mul_scalar(2.0 / len as f64);
    let mom = eta.mul(state.mom.clone()).sub(theta.mul(grad));
    let m = alpha
        .neg()
        .add_scalar(1.0)
        .mul(state.m.clone())
        .add(mom.clone());
    (m, mom)
}
