//! forge's built-in ops, each in its own module with its params struct, key extras and tests.
//! `bake` and `quantize` join `train` and `merge` in later releases.

pub mod archive;
pub mod download;
pub mod exec;
pub mod fetch;
pub mod merge;
pub mod tokenizer;
pub mod train;
pub mod validate;
