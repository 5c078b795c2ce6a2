//! forge's exit codes: one per kind of outcome, so scripts and CI can tell "fix your pipeline"
//! from "retry later" from "report a bug".
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a step failed for a reason the user can fix (its data, parameters, a command, a check) |
//! | 2 | invalid input: the pipeline or the command line; nothing ran |
//! | 3 | the environment failed (network, disk, the store, a lock timeout); retrying may help |
//! | 4 | an internal error: a bug in forge or an op |
//! | 130 | interrupted (Ctrl-C) |

use forge_ops::Tier;

pub const SUCCESS: u8 = 0;
pub const FAILED: u8 = 1;
pub const INVALID: u8 = 2;
pub const INFRA: u8 = 3;
pub const INTERNAL: u8 = 4;
pub const INTERRUPTED: u8 = 130;

/// The exit code of a run whose failed steps have these tiers: the most serious one wins (a bug
/// over the environment over the user's input).
pub fn for_failures(tiers: impl IntoIterator<Item = Tier>) -> u8 {
    tiers
        .into_iter()
        .map(|t| match t {
            Tier::User => FAILED,
            Tier::Infra => INFRA,
            Tier::Internal => INTERNAL,
        })
        .max_by_key(|&c| match c {
            INTERNAL => 3,
            INFRA => 2,
            _ => 1,
        })
        .unwrap_or(FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_serious_failure_decides_the_code() {
        assert_eq!(for_failures([Tier::User]), FAILED);
        assert_eq!(for_failures([Tier::User, Tier::Infra]), INFRA);
        assert_eq!(
            for_failures([Tier::Infra, Tier::Internal, Tier::User]),
            INTERNAL
        );
        assert_eq!(for_failures([]), FAILED);
    }
}
