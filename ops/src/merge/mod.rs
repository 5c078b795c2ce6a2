//! Model merging (Phase 2, EvoMerge), on safetensors state dicts and without burn: the six
//! techniques, the eight three-stage combos and the evolution loop. The `merge` op
//! (`builtin/merge.rs`) adds what needs the model: fitness by running candidates.
//!
//! | module | owns |
//! |---|---|
//! | [`tensors`] | memory-mapped reading, streaming writing, in-memory state dicts |
//! | [`methods`] | linear, slerp, ties, dare (per tensor, mergekit semantics) |
//! | [`layers`] | frankenmerge slices and dfs routing (per layer) |
//! | [`combo`] | the eight combos, degenerate-model detection |
//! | [`evolve`] | the genetic loop, diversity, lineage, resumable state |
//! | [`files`] | streaming file-to-file merges (what the benchmark times) |

pub mod combo;
pub mod evolve;
pub mod files;
pub mod layers;
pub mod methods;
pub mod tensors;
