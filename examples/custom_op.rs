//! A user-defined op, registered next to the built-ins and run from a pipeline.
//!
//! `hash-chain` applies blake3 `rounds` times to a seed string, pausing `delay_ms` per round so a
//! demo or test has time to interrupt it. It checkpoints its state every `checkpoint_every` rounds through
//! [`StepContext::save_checkpoint`], so if the process is killed, the next `apply` resumes from the
//! last checkpoint — and produces exactly the bytes an uninterrupted run would.
//!
//! ```text
//! cargo run --example custom_op -- apply examples/hash-chain.yaml
//! ```

use forge::ops::{
    ArtifactKind, InputSignature, OpError, OpRegistry, OutputSpec, StepContext, StepInputs,
    StepOutcome, TypedOp,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Parameters of `hash-chain`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HashChainParams {
    /// The string hashed first.
    seed: String,
    /// How many times to apply blake3.
    rounds: u64,
    /// Save a checkpoint every this many rounds.
    #[serde(default = "default_every")]
    checkpoint_every: u64,
    /// Pause per round, in milliseconds, so a run can be interrupted mid-way (not part of the result).
    #[serde(default)]
    delay_ms: u64,
}

fn default_every() -> u64 {
    10
}

#[derive(Serialize, Deserialize)]
struct State {
    round: u64,
    digest: [u8; 32],
}

struct HashChain;

impl TypedOp for HashChain {
    type Params = HashChainParams;
    const NAME: &'static str = "hash-chain";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Iterate blake3 over a seed, with checkpoints (example op)";

    fn inputs(&self, _p: &HashChainParams) -> InputSignature {
        InputSignature::Fixed(vec![])
    }

    fn outputs(&self, _p: &HashChainParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "chain".into(),
            kind: ArtifactKind::Files,
        }]
    }

    fn run(
        &self,
        ctx: &StepContext,
        _inputs: &StepInputs,
        p: &HashChainParams,
    ) -> Result<StepOutcome, OpError> {
        let mut state = match ctx.load_checkpoint_json::<State>("state.json")? {
            Some(s) => {
                ctx.log(format!("resuming at round {}", s.round));
                s
            }
            None => State {
                round: 0,
                digest: *blake3::hash(p.seed.as_bytes()).as_bytes(),
            },
        };
        let resumed_at = state.round;
        while state.round < p.rounds {
            state.digest = *blake3::hash(&state.digest).as_bytes();
            state.round += 1;
            if p.delay_ms > 0 {
                std::thread::sleep(std::time::Duration::from_millis(p.delay_ms));
            }
            if state.round % p.checkpoint_every == 0 {
                ctx.save_checkpoint_json("state.json", &state)?;
                ctx.progress(state.round, Some(p.rounds), "rounds");
                // Stop cleanly (after checkpointing) on Ctrl-C or a failing sibling.
                ctx.check_cancelled()?;
            }
        }
        let out = ctx.output_dir("chain")?;
        let text = format!("{}\n", blake3::Hash::from_bytes(state.digest).to_hex());
        std::fs::write(out.join("result.txt"), text).map_err(|e| OpError::io(&out, e))?;
        let mut metrics = serde_json::Map::new();
        metrics.insert("chain/rounds".into(), p.rounds.into());
        metrics.insert("chain/resumed_at_round".into(), resumed_at.into());
        Ok(StepOutcome { metrics })
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = OpRegistry::builtin();
    registry.register(HashChain);
    forge::main_with_registry(registry)
}
