//! Artifact kinds and the input/output signatures ops declare, checked at plan time so a model
//! can never be wired into an input that expects a dataset.

use std::fmt;
use std::path::PathBuf;

use forge_cache::ObjectDigest;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What an artifact is. `Files` is the untyped kind: it is accepted where any kind is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    Dataset,
    Tokenizer,
    Model,
    QuantizedModel,
    Report,
    #[default]
    Files,
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dataset => "dataset",
            Self::Tokenizer => "tokenizer",
            Self::Model => "model",
            Self::QuantizedModel => "quantized-model",
            Self::Report => "report",
            Self::Files => "files",
        })
    }
}

/// One named input an op takes.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    /// Kinds accepted; empty means any.
    pub accepts: Vec<ArtifactKind>,
    /// More than one artifact may be wired in (e.g. the three models to merge).
    pub multiple: bool,
    pub required: bool,
}

impl InputSpec {
    pub fn one(name: &str, accepts: &[ArtifactKind]) -> Self {
        Self {
            name: name.into(),
            accepts: accepts.to_vec(),
            multiple: false,
            required: true,
        }
    }
    pub fn many(name: &str, accepts: &[ArtifactKind]) -> Self {
        Self {
            name: name.into(),
            accepts: accepts.to_vec(),
            multiple: true,
            required: true,
        }
    }
    /// The same input, required only when `required` holds.
    pub fn required(self, required: bool) -> Self {
        Self { required, ..self }
    }
    pub fn accepts(&self, kind: ArtifactKind) -> bool {
        self.accepts.is_empty() || kind == ArtifactKind::Files || self.accepts.contains(&kind)
    }
}

/// An op's inputs: a fixed list, or any names (e.g. `exec`, whose command reads what it likes).
#[derive(Debug, Clone)]
pub enum InputSignature {
    Fixed(Vec<InputSpec>),
    Open,
}

/// One named output an op produces: a directory the op fills under [`crate::StepContext::output_dir`].
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: String,
    pub kind: ArtifactKind,
}

/// An upstream artifact handed to a running op: a read-only checkout in the store.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    pub path: PathBuf,
    pub digest: ObjectDigest,
    pub kind: ArtifactKind,
    /// The step instance it came from, e.g. `cognate.model[variant=memory]`.
    pub from_step: String,
}

/// Inputs by name, each a list (one element unless the input takes several).
pub type StepInputs = std::collections::BTreeMap<String, Vec<InputArtifact>>;
