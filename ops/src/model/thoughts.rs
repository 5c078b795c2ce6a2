//! Parallel thoughts (Quiet-STaR, Zelikman et al., 2024): after every text position `j` a
//! thought of a few tokens is generated, all positions at once — one pass per thought token —
//! each thought token attending to the text up to `j` and to its own thought's earlier tokens,
//! never to another position's thought or to a later text token (the "diagonal" mask of the
//! authors' code).
//!
//! The text is read once by a [`Decoder`] that keeps every pass's keys and values and, with
//! [`Decoder::record_memory`], the Titans memory state each chunk starts from. A thought token of
//! position `j`, at thought step `t`, sits at rotary position `j + 1 + t`; in every pass of every
//! recursion it attends to that pass's text keys `≤ j` (within the window) and to the same pass's
//! keys of thought tokens `(j, 0..=t)`; its memory reads the state position `j` read and never
//! writes. ACT runs for thought tokens as for text ([`super::decode::recurse`]).

use burn::tensor::{Int, Tensor, TensorData};

use super::attention::CausalAttention;
use super::decode::{Decoder, PassCache, recurse};
use super::fused::softmax;
use super::memory::NeuralMemory;

/// What one thought step gives for every thought: `[b, m, …]` for `m` positions with one.
pub struct ThoughtStep {
    /// The next-token logits after this thought token, `[b, m, vocab]` (with gradient when the
    /// model records one).
    pub logits: Tensor<3>,
    /// The final answer state (before the output norm), `[b, m, d]`.
    pub state: Tensor<3>,
    /// Recursions each thought token ran before halting, row-major `[b × m]`.
    pub halting: Vec<u32>,
}

/// The thoughts of the positions `first..len` of a text a [`Decoder`] has read (every position,
/// in training; the last, when generating with thoughts).
pub struct Thoughts<'d, 'm> {
    text: &'d Decoder<'m>,
    /// The first position with a thought.
    first: usize,
    /// Per slot: keys and values of the thought tokens so far, `[b, h, t·m, dh]` for `m`
    /// thoughts, step-major.
    kv: Vec<(Tensor<4>, Tensor<4>)>,
    /// Thought tokens appended to every position so far.
    steps: usize,
    /// Rotary positions of this step's tokens (`j + 1 + t`, row-major `[b × m]`) and its mask.
    current: Option<(Tensor<1, Int>, Tensor<4>)>,
}

impl<'d, 'm> Thoughts<'d, 'm> {
    /// Empty thoughts after each of the `text.len()` positions `text` holds.
    ///
    /// # Panics
    /// When the decoder did not record its memory states and the model has memory blocks.
    pub fn new(text: &'d Decoder<'m>) -> Self {
        Self::from(text, 0)
    }

    /// Empty thoughts after each position from `first` on.
    ///
    /// # Panics
    /// As [`Self::new`]; or when `first` is not a position of the text.
    pub fn from(text: &'d Decoder<'m>, first: usize) -> Self {
        assert!(first < text.len, "position {first} is not in the text");
        assert!(
            text.model.blocks.iter().all(|b| b.memory.is_none()) || text.record_memory,
            "thoughts read the memory's chunk states: build the decoder with record_memory()"
        );
        Self {
            text,
            first,
            kv: Vec::new(),
            steps: 0,
            current: None,
        }
    }

    /// Thought tokens each position's thought holds.
    pub fn len(&self) -> usize {
        self.steps
    }

    /// Whether no thought token has been appended.
    pub fn is_empty(&self) -> bool {
        self.steps == 0
    }

    /// Append one token to every thought: `tokens` is `[b, m]` for the `m` positions with a
    /// thought, the token of position `first + i`'s thought in column `i`.
    ///
    /// # Panics
    /// When `tokens` is not `[b, m]` for the text's rows, or the last thought token would pass
    /// `max_seq`.
    pub fn step(&mut self, tokens: Tensor<2, Int>) -> ThoughtStep {
        let [b, m] = tokens.dims();
        let (s, first) = (self.text.len, self.first);
        assert_eq!(
            (b, m),
            (self.text.rows, s - first),
            "one thought token per position with a thought"
        );
        let t = self.steps;
        assert!(
            s + t < self.text.max_seq,
            "thought position {} passes max_seq {}",
            s + t,
            self.text.max_seq
        );
        let device = self.text.device.clone();
        let positions: Vec<i64> = (0..b)
            .flat_map(|_| (first..s).map(|j| (j + 1 + t) as i64))
            .collect();
        let pos = Tensor::<1, Int>::from_data(TensorData::new(positions, [b * m]), &device);
        self.current = Some((pos, self.mask(s, t)));
        let (model, levels, threshold) = (self.text.model, self.text.levels, self.text.threshold);
        let out = recurse(self, model, levels, threshold, tokens, &device);
        self.current = None;
        self.steps += 1;
        ThoughtStep {
            logits: model.logits_of(out.y.clone()),
            state: out.y,
            halting: out.halting,
        }
    }

    /// `[1, 1, m, s + (t + 1)·m]`: what the thought token of position `j = first + i` at step
    /// `t` may see — text positions `j' ≤ j` within the window of its own position `j + 1 + t`,
    /// and the tokens `(j, 0..=t)` of its own thought (keys laid out step-major after the
    /// text's).
    fn mask(&self, s: usize, t: usize) -> Tensor<4> {
        let m = s - self.first;
        let width = s + (t + 1) * m;
        let window = self.text.window;
        let mut v = vec![-1e9f32; m * width];
        for i in 0..m {
            let j = self.first + i;
            let p = j + 1 + t;
            for jt in p.saturating_sub(window - 1)..=j {
                v[i * width + jt] = 0.0;
            }
            for tt in 0..=t {
                if p - (j + 1 + tt) < window {
                    v[i * width + s + tt * m + i] = 0.0;
                }
            }
        }
        Tensor::from_data(TensorData::new(v, [1, 1, m, width]), &self.text.device)
    }
}

impl PassCache for Thoughts<'_, '_> {
    fn attention(&mut self, attn: &CausalAttention, slot: usize, x: Tensor<3>) -> Tensor<3> {
        let (pos, mask) = self.current.clone().expect("inside step");
        let [b, m, d] = x.dims();
        let s = self.text.len;
        let h = self.text.heads;
        let dh = d / h;
        let split = |t: Tensor<3>| t.reshape([b, m, h, dh]).swap_dims(1, 2);
        let rope = self.text.tables.rope();
        let q = rope.apply_at(split(attn.wq.forward(x.clone())), pos.clone());
        let k = rope.apply_at(split(attn.wk.forward(x.clone())), pos);
        let v = split(attn.wv.forward(x));
        if self.kv.len() <= slot {
            self.kv.resize_with(slot + 1, || {
                let empty = Tensor::<4>::zeros([b, h, 0, dh], &self.text.device);
                (empty.clone(), empty)
            });
        }
        let (tk, tv) = &mut self.kv[slot];
        *tk = Tensor::cat(vec![tk.clone(), k], 2);
        *tv = Tensor::cat(vec![tv.clone(), v], 2);
        let text = &self.text.kv[slot];
        let keys = Tensor::cat(vec![text.k.clone().narrow(2, 0, s), tk.clone()], 2);
        let values = Tensor::cat(vec![text.v.clone().narrow(2, 0, s), tv.clone()], 2);
        let scores = q
            .matmul(keys.swap_dims(2, 3))
            .div_scalar((dh as f64).sqrt())
            .add(mask);
        let out = softmax(scores, 3)
            .matmul(values)
            .swap_dims(1, 2)
            .reshape([b, m, d]);
        attn.wo.forward(out)
    }

    fn memory(&mut self, mem: &NeuralMemory, slot: usize, h: Tensor<3>) -> Tensor<3> {
        let [b, m, d] = h.dims();
        let state = self.text.mem[slot]
            .as_ref()
            .expect("a memory block has a memory slot");
        // Position j read the state its chunk started from; its thought reads the same.
        let chunks: Vec<i64> = (self.first..self.text.len)
            .map(|j| (j / mem.chunk) as i64)
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(chunks, [m]), &self.text.device);
        let starts: Vec<Tensor<4>> = state
            .chunk_starts
            .iter()
            .map(|state| state.clone().unsqueeze_dim(1))
            .collect();
        let states = Tensor::cat(starts, 1).select(1, idx); // [b, m, slots, d]
        let r = super::memory::l2_normalize(mem.address.forward(mem.wq.forward(h)));
        let slots = mem.slots;
        let read = r
            .reshape([b, m, 1, slots])
            .matmul(states)
            .reshape([b, m, d]);
        mem.wo.forward(read)
    }
}
