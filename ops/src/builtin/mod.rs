//! forge's built-in ops. Each module is one op: its parameter struct, its plan-time checks and
//! key extras, and a `run` that reads its inputs, calls the library (`data`, `text`, `train`,
//! `eval`, `merge`, `fetch`) and writes its outputs. No op module uses another op module.

pub mod bake;
pub mod download;
pub mod exec;
pub mod merge;
pub mod quantize;
pub mod tokenizer;
pub mod train;
pub mod validate;

use crate::op::OpRegistry;

impl OpRegistry {
    /// forge's built-in ops.
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        r.register(bake::Bake);
        r.register(download::Download);
        r.register(exec::Exec);
        r.register(merge::Merge);
        r.register(quantize::Quantize);
        r.register(tokenizer::Tokenizer);
        r.register(train::Train);
        r.register(validate::Validate);
        r
    }
}
