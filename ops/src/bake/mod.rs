//! Phase 3's library (Quiet-STaR): the twelve thinking tokens — which ids they take, the
//! tokenizer that knows them, and how their embedding rows start.
//!
//! The `bake` op (supervised and prompt baking) and the `quiet-star` training objective build on
//! this; they are not in yet (issue 12).

pub mod strategies;
pub mod tokens;

pub use tokens::{
    END, START, STRATEGIES, Strategy, TokensError, add_thinking_tokens, init_thinking_rows,
    thinking_tokens,
};
