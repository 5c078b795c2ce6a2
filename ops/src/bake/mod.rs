//! Phase 3's library (Quiet-STaR): the twelve thinking tokens — which ids they take, the
//! tokenizer that knows them, and how their embedding rows start ([`tokens`]) — and how baking
//! is measured ([`eval`]). The `bake` op trains with the `lm` objective on trace targets only
//! ([`crate::train::Targets::FromToken`]); prompt baking and the `quiet-star` objective are not
//! in yet (issue 12).

pub mod eval;
pub mod model;
pub mod strategies;
pub mod tokens;

pub use tokens::{
    END, START, STRATEGIES, Strategy, TokensError, add_thinking_tokens, init_thinking_rows,
    thinking_tokens,
};
