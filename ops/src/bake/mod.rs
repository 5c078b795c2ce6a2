//! Phase 3's library (Quiet-STaR): the twelve thinking tokens — which ids they take, the
//! tokenizer that knows them, and how their embedding rows start ([`tokens`]) — and how baking
//! is measured ([`eval`]), the baked model's files ([`model`]), and Quiet-STaR training of a baked
//! model: its settings, check sets and report ([`rl`]). The objectives themselves live in
//! [`crate::train`] (`lm` on trace targets, prompt baking, `quiet-star`).

pub mod eval;
pub mod model;
pub mod rl;
pub mod strategies;
pub mod tokens;

pub use tokens::{
    END, START, STRATEGIES, Strategy, TokensError, add_thinking_tokens, init_thinking_rows,
    thinking_tokens,
};
