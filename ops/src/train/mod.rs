//! The training core: one loop ([`trainer`]) that every objective ([`objective`]) runs on, with
//! its schedule, memory budget and loss alerts. Ops build a [`trainer::Run`], hand it a start
//! model, [`trainer::Batches`] and an objective, and write what comes back.
//!
//! | module | owns |
//! |---|---|
//! | [`trainer`] | the loop: accumulation, optimizer step, QK-clip, logging, checkpoints, rollback |
//! | [`objective`] | what is minimised: [`Objective`], the `lm` objective [`Lm`], prompt baking [`PromptBake`] |
//! | [`quiet_star`] | Quiet-STaR: parallel thinking, rewards, REINFORCE, the objective |
//! | [`anti_theater`] | the anti-theater checks' statistics and verdicts (seed thresholds) |
//! | [`ste`] | quantization-aware training: ternary forward, straight-through gradient (Phase 4) |
//! | [`schedule`] | warm-up + cosine learning-rate factor |
//! | [`memory`] | micro-batch size from a memory budget; halving on out-of-memory |
//! | [`alerts`] | rising-loss and plateau alerts |

pub mod alerts;
pub mod anti_theater;
pub mod memory;
pub mod objective;
pub mod quiet_star;
pub mod schedule;
pub mod ste;
pub mod trainer;

pub use objective::{Draw, Knobs, Lm, Objective, ObjectiveStep, PromptBake, Reference, Targets};
pub use schedule::lr_factor;
pub use trainer::{Batches, Checked, LoopConfig, Monitor, Run, Trained};
