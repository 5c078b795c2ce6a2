//! forge's built-in ops. The ML ops (`train`, `merge`, `bake`, `quantize`) join these in later
//! releases; each lives in its own module with its params struct, key extras and tests.

pub mod archive;
pub mod download;
pub mod exec;
pub mod fetch;
pub mod tokenizer;
pub mod train;
pub mod validate;
