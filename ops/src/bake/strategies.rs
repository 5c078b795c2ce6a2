//! The names of the twelve thinking tokens and the ten strategies they tag (a leaf: the data
//! generators and the tokenizer code both read it). Their ids are 3–14 in this order
//! ([`super::tokens`]).

/// The start-of-thought token.
pub const START: &str = "[thinking]";
/// The end-of-thought token.
pub const END: &str = "[/endthinking]";

/// A reasoning strategy: its token and the seed's name for it in metrics
/// (`baking/accuracy_<metric>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategy {
    pub token: &'static str,
    pub metric: &'static str,
}

/// The ten strategies, in id order (ids 5–14).
pub const STRATEGIES: [Strategy; 10] = [
    Strategy {
        token: "<step>",
        metric: "chain_of_thought",
    },
    Strategy {
        token: "<mece>",
        metric: "mece",
    },
    Strategy {
        token: "<falsify>",
        metric: "falsification",
    },
    Strategy {
        token: "<expert>",
        metric: "expert",
    },
    Strategy {
        token: "<orthogonal>",
        metric: "orthogonal",
    },
    Strategy {
        token: "<doubt>",
        metric: "doubt",
    },
    Strategy {
        token: "<bayesian>",
        metric: "bayesian",
    },
    Strategy {
        token: "<multidomain>",
        metric: "multidomain",
    },
    Strategy {
        token: "<correct>",
        metric: "correction",
    },
    Strategy {
        token: "<uncertain>",
        metric: "uncertainty",
    },
];

/// The twelve tokens in id order: start, end, then the strategies.
pub fn thinking_tokens() -> Vec<&'static str> {
    let mut v = vec![START, END];
    v.extend(STRATEGIES.iter().map(|s| s.token));
    v
}
