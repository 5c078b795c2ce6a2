//! Every random number forge draws comes from one of these named, domain-separated streams: a
//! ChaCha8 generator keyed by blake3 over the stream's domain, the step's seed and the stream's
//! own coordinates (a step index, a tensor name, …). Two streams never share bytes unless they are
//! the same stream, whatever their seeds, so e.g. a variant's data order cannot correlate with its
//! initial weights, and every draw can be rebuilt alone (which is what makes resume bit-exact).
//!
//! The seed is the step's effective seed (`StepContext::seed`), resolved once at plan time and
//! recorded in the step's key. Sub-seeds drawn from one stream (an evolution choosing a combo's
//! seed) key further streams the same way.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is for, with its coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream<'a> {
    /// Built-in data: draw `index` of generator `category`.
    Data { category: &'a str, index: u64 },
    /// Initial weights of a fresh model.
    ModelInit,
    /// Training rows of optimizer step `step`, micro-batch `micro`.
    TrainBatch { step: u64, micro: u64 },
    /// Fixed validation rows, batch `index`.
    ValBatch { index: u64 },
    /// Fixed rows a merge candidate's fitness is measured on, batch `index`.
    FitnessBatch { index: u64 },
    /// The choices of evolution generation `generation` (mutations, groups, combos, seeds).
    Evolve { generation: u32 },
    /// DARE's keep mask of one task vector: tensor `tensor` of model `model`.
    DareMask { tensor: &'a str, model: usize },
    /// A combo's layer routing.
    ComboRouting,
}

/// The generator of `stream` under `seed`.
pub fn stream(seed: u64, stream: Stream<'_>) -> ChaCha8Rng {
    let keyed = |parts: &[&[u8]]| {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(p);
        }
        ChaCha8Rng::from_seed(*h.finalize().as_bytes())
    };
    let s = seed.to_le_bytes();
    match stream {
        Stream::Data { category, index } => keyed(&[
            b"forge-builtin-data\0",
            &s,
            category.as_bytes(),
            &index.to_le_bytes(),
        ]),
        Stream::ModelInit => ChaCha8Rng::seed_from_u64(seed),
        Stream::TrainBatch { step, micro } => {
            keyed(&[b"train", &s, &step.to_le_bytes(), &micro.to_le_bytes()])
        }
        Stream::ValBatch { index } => {
            keyed(&[b"val", &s, &index.to_le_bytes(), &0u64.to_le_bytes()])
        }
        Stream::FitnessBatch { index } => {
            keyed(&[b"fitness", &s, &index.to_le_bytes(), &0u64.to_le_bytes()])
        }
        Stream::Evolve { generation } => keyed(&[&s, &generation.to_le_bytes(), b"evolve"]),
        Stream::DareMask { tensor, model } => keyed(&[&s, format!("{tensor}#{model}").as_bytes()]),
        Stream::ComboRouting => ChaCha8Rng::seed_from_u64(seed.wrapping_add(0x9e37_79b9_7f4a_7c15)),
    }
}
