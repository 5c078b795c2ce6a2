//! Errors of ops: [`OpError`] (a step failed while running) and [`ParamsError`] (a step's `with:`
//! block does not fit its op, found at plan time).
//!
//! A run-time failure carries its [`Tier`] — who can fix it — after buck2's user / infra / internal
//! split. The executor reads the tier, never the message: `Infra` failures marked transient are
//! retried with backoff, every tier has its own exit code and hint, and `Internal` ones (a broken
//! invariant, a panic) are reported as bugs.

use std::path::{Path, PathBuf};

/// Who can fix a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The user: the data, the parameters or the inputs wired into the step are wrong for it.
    User,
    /// The environment: network, a server, the disk, the accelerator. May be transient.
    Infra,
    /// forge itself: a broken invariant or a panic in an op (please report it).
    Internal,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Infra => "infra",
            Self::Internal => "internal",
        }
    }
}

/// A step failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Wrong input for what the step was asked to do (see [`Tier::User`]).
    #[error("{message}")]
    User {
        message: String,
        hint: Option<String>,
        /// Extra lines to show under the error (e.g. a command's stderr tail).
        detail: Option<String>,
    },
    /// The environment failed (see [`Tier::Infra`]); `transient` ones are retried.
    #[error("{message}")]
    Infra {
        message: String,
        transient: bool,
        detail: Option<String>,
    },
    /// A bug (see [`Tier::Internal`]).
    #[error("{0}")]
    Internal(String),
    /// The step was cancelled (Ctrl-C, a sibling's failure, its timeout). Not a failure of the op.
    #[error("cancelled: {0}")]
    Cancelled(String),
    #[error("I/O error on `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] forge_cache::StoreError),
}

impl OpError {
    /// A failure the user fixes by changing data, parameters or wiring.
    pub fn user(message: impl Into<String>) -> Self {
        Self::User {
            message: message.into(),
            hint: None,
            detail: None,
        }
    }
    /// A failure of the environment that is worth retrying (network, a busy server).
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Infra {
            message: message.into(),
            transient: true,
            detail: None,
        }
    }
    /// A failure of the environment that retrying will not fix.
    pub fn infra(message: impl Into<String>) -> Self {
        Self::Infra {
            message: message.into(),
            transient: false,
            detail: None,
        }
    }
    /// A broken invariant.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Add a hint (what to change); kept only on user failures, where it is actionable.
    pub fn with_hint(mut self, h: impl Into<String>) -> Self {
        if let Self::User { hint, .. } = &mut self {
            *hint = Some(h.into());
        }
        self
    }
    /// Add extra lines to show under the message.
    pub fn with_detail(mut self, d: impl Into<String>) -> Self {
        match &mut self {
            Self::User { detail, .. } | Self::Infra { detail, .. } => *detail = Some(d.into()),
            _ => {}
        }
        self
    }

    pub fn tier(&self) -> Tier {
        match self {
            Self::User { .. } | Self::Cancelled(_) => Tier::User,
            Self::Infra { .. } | Self::Io { .. } | Self::Store(_) => Tier::Infra,
            Self::Internal(_) => Tier::Internal,
        }
    }
    /// Whether retrying may succeed: the retry policy reads this, never the message.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Infra {
                transient: true,
                ..
            }
        )
    }
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::User { detail, .. } | Self::Infra { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }
    /// What to do about it: the op's hint, or the tier's.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::User { hint, .. } => hint.clone(),
            Self::Infra {
                transient: true, ..
            } => Some("this looks transient: run `forge apply` again to retry".into()),
            Self::Io { .. } | Self::Store(_) => Some(
                "check the disk and permissions of the store; `forge verify` checks its objects"
                    .into(),
            ),
            Self::Internal(_) => Some(
                "this is a bug in forge or in the op; please report it with the step's events (`forge show`, runs/<id>/events.jsonl)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// A step's `with:` block does not fit the op's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError {
    /// Path inside `with:` to the offending value (map keys and list indices).
    pub path: Vec<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl ParamsError {
    pub fn at(path: &[&str], message: impl Into<String>) -> Self {
        Self {
            path: path.iter().map(std::string::ToString::to_string).collect(),
            message: message.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tier_decides_retries_not_the_message() {
        assert!(OpError::transient("x").is_transient());
        assert!(!OpError::infra("transient network error").is_transient());
        assert!(!OpError::user("timed out, try again").is_transient());
        assert_eq!(OpError::user("x").tier(), Tier::User);
        assert_eq!(OpError::internal("x").tier(), Tier::Internal);
        let io = OpError::io(Path::new("/x"), std::io::Error::other("disk"));
        assert_eq!(io.tier(), Tier::Infra);
        let e = OpError::user("bad").with_hint("fix it").with_detail("line");
        assert_eq!(e.hint().as_deref(), Some("fix it"));
        assert_eq!(e.detail(), Some("line"));
    }
}
