//! Model merging (Phase 2, EvoMerge), on safetensors state dicts and without burn: the six
//! techniques, the eight three-stage combos and the evolution loop. What needs the model —
//! fitness by running candidates — is in `eval::fitness`; the `merge` op (`builtin/merge.rs`)
//! wires the two together.
//!
//! | module | owns |
//! |---|---|
//! | [`tensors`] | memory-mapped reading, streaming writing, in-memory state dicts |
//! | [`methods`] | linear, slerp, ties, dare (per tensor, mergekit semantics) |
//! | [`layers`] | frankenmerge slices and per-layer routing |
//! | [`combo`] | the eight combos, degenerate-model detection |
//! | [`evolve`] | the evolution: the generation-0 pool, the CMA-ES search, recipes, resumable state |
//! | [`cmaes`] | CMA-ES, ask-and-tell, with a serialisable state |
//! | [`evomerge`] | the evolution as a step runs it: generation checkpoints, metrics, lineage files |
//! | [`technique`] | the techniques a step names and the shared task-arithmetic settings |
//! | [`files`] | streaming file-to-file merges (what the benchmark times) |

pub mod cmaes;
pub mod combo;
pub mod evolve;
pub mod evomerge;
pub mod files;
pub mod layers;
pub mod methods;
pub mod technique;
pub mod tensors;

/// Entries per parallel chunk, of decoding ([`tensors`]) and of every technique ([`methods`]).
/// Each technique computes an output entry from the same entries of its inputs in the same order
/// whichever thread runs its chunk, and its sums over a whole tensor run in one sequence, so
/// results do not depend on the number of threads.
const CHUNK: usize = 1 << 16;
