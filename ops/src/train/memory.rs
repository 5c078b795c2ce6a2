//! Micro-batch size from a memory budget, and halving it when the backend runs out of memory.
//!
//! `batch_size` stays the number of rows an optimizer step learns from (so the data and the
//! schedule do not depend on the machine); a budget only splits those rows into micro-batches
//! whose gradients are accumulated. The estimate is deliberately simple and errs high:
//!
//! ```text
//! static     = params × 4 B × 5            weights, gradients, two optimizer moments, Grokfast EMA
//! per token  = 4 B × sup_steps × [ (n_inner + 1) × layers × (16·d + 3·d_ff + 3·heads·seq)
//!                                  + slots·d / chunk × memory_layers + 4·vocab ]
//! step bytes = static + micro_batch × seq × per token
//! ```
//!
//! (attention scores are `[heads, seq, seq]` per sample, kept three times for the backward pass;
//! the memory keeps one `slots × d` state per chunk; the head keeps logits and log-probabilities.)
//! When the backend still fails to allocate — libtorch reports CUDA and CPU allocation failures as
//! a panic saying "out of memory" — the step is retried with half the micro-batch. A Rust
//! allocation failure on the flex backend aborts the process instead; the budget is what protects
//! it.

use crate::model::ModelConfig;

/// Estimated peak bytes of one training step with `micro_batch` rows of `seq` tokens.
pub fn estimate_step_bytes(
    cfg: &ModelConfig,
    params: usize,
    micro_batch: usize,
    seq: usize,
) -> u64 {
    let f = 4u64;
    let static_bytes = params as u64 * f * 5;
    let d = cfg.d_model as u64;
    let passes = (cfg.n_inner as u64 + 1) * cfg.layers as u64;
    let per_pass = 16 * d + 3 * cfg.d_ff as u64 + 3 * cfg.heads as u64 * seq as u64;
    let memory =
        cfg.ltm_slots as u64 * d / cfg.mem_chunk.max(1) as u64 * cfg.memory_layers.len() as u64;
    let per_token =
        f * cfg.sup_steps.max(1) as u64 * (passes * per_pass + memory + 4 * cfg.vocab_size as u64);
    static_bytes + micro_batch as u64 * seq as u64 * per_token
}

/// The largest micro-batch — `batch` halved until it fits — whose estimate is within
/// `budget_bytes`; an error when even one row does not fit.
pub fn micro_batch_for(
    cfg: &ModelConfig,
    params: usize,
    batch: usize,
    seq: usize,
    budget_bytes: u64,
) -> Result<usize, String> {
    let mut micro = batch.max(1);
    loop {
        let need = estimate_step_bytes(cfg, params, micro, seq);
        if need <= budget_bytes {
            return Ok(micro);
        }
        if micro == 1 {
            return Err(format!(
                "one row of {seq} tokens needs an estimated {} MiB, over the memory budget of {} MiB",
                need.div_ceil(1 << 20),
                budget_bytes >> 20
            ));
        }
        micro = micro.div_ceil(2);
    }
}

/// Whether a caught panic is the backend failing to allocate.
pub fn is_out_of_memory(panic: &(dyn std::any::Any + Send)) -> bool {
    let msg = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("");
    let msg = msg.to_ascii_lowercase();
    msg.contains("out of memory") || msg.contains("failed to allocate")
}

/// Run `step(micro)`; when it panics because memory ran out, halve `micro` and try again (down
/// to 1). Returns the result and the micro-batch that worked; other panics propagate.
pub fn with_halving<T>(
    mut micro: usize,
    mut on_halve: impl FnMut(usize, usize),
    mut step: impl FnMut(usize) -> T,
) -> Result<(T, usize), String> {
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(micro))) {
            Ok(v) => return Ok((v, micro)),
            Err(p) if is_out_of_memory(p.as_ref()) => {
                if micro == 1 {
                    return Err("out of memory with a micro-batch of one row".into());
                }
                let next = micro.div_ceil(2);
                on_halve(micro, next);
                micro = next;
            }
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_grows_with_the_batch_and_the_budget_picks_the_largest_fit() {
        let cfg = ModelConfig::tiny();
        let params = 1_255_172;
        let one = estimate_step_bytes(&cfg, params, 1, 128);
        let two = estimate_step_bytes(&cfg, params, 2, 128);
        let per_row = two - one;
        assert!(per_row > 0 && one > params as u64 * 20);
        // Room for exactly 5 rows: 16 → 8 → 4.
        let budget = one - per_row + 5 * per_row;
        assert_eq!(micro_batch_for(&cfg, params, 16, 128, budget), Ok(4));
        assert_eq!(micro_batch_for(&cfg, params, 16, 128, u64::MAX), Ok(16));
        let err = micro_batch_for(&cfg, params, 16, 128, one - 1).unwrap_err();
        assert!(err.contains("over the memory budget"), "{err}");
    }

    #[test]
    fn out_of_memory_panics_halve_the_micro_batch_until_it_fits() {
        let mut halvings = Vec::new();
        let (v, micro) = with_halving(
            16,
            |from, to| halvings.push((from, to)),
            |m| {
                if m > 3 {
                    panic!("CUDA out of memory. Tried to allocate {m} GiB");
                }
                m * 10
            },
        )
        .unwrap();
        assert_eq!((v, micro), (20, 2));
        assert_eq!(halvings, vec![(16, 8), (8, 4), (4, 2)]);
        let err = with_halving(2, |_, _| {}, |_| -> () { panic!("out of memory") }).unwrap_err();
        assert!(err.contains("one row"), "{err}");
    }

    #[test]
    fn other_panics_are_not_mistaken_for_memory() {
        let r = std::panic::catch_unwind(|| {
            with_halving(8, |_, _| {}, |_| -> () { panic!("index out of bounds") })
        });
        assert!(r.is_err());
    }
}
