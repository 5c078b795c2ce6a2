//! Saved plans: `forge plan -o FILE` writes what `apply` would do — each step's key and whether
//! it runs — with the pipeline file's digest and the store it was computed against; `forge apply
//! FILE` re-plans and runs only if nothing changed in between, like terraform's saved plans
//! (`plan -out`, then `apply PLANFILE`; a stale plan is refused, never silently re-planned).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::executor::PlannedStep;
use crate::vars::VarOverride;

/// What identifies a saved plan file (and tells it apart from a pipeline).
pub const FORMAT: &str = "forge-plan";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedPlan {
    pub format: String,
    pub version: u32,
    /// The pipeline file, absolute.
    pub pipeline: PathBuf,
    /// blake3 of the pipeline file's bytes.
    pub pipeline_digest: String,
    /// The store the plan was computed against, absolute.
    pub store: PathBuf,
    /// The selection it was made with (`--force`, `--only`).
    pub force: Vec<String>,
    pub only: Vec<String>,
    /// The `--var` overrides it was made with; `apply PLANFILE` plans with the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vars: Vec<VarOverride>,
    pub steps: Vec<SavedStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedStep {
    pub id: String,
    /// `None` while an input is still to be built.
    pub key: Option<String>,
    pub status: String,
}

/// `p` absolute and canonical, also when it does not exist yet (a store not yet created).
fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    match (std::fs::canonicalize(&parent), p.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => p.to_owned(),
    }
}

/// The digest a saved plan records for the pipeline file at `path`.
pub fn pipeline_digest(path: &Path) -> std::io::Result<String> {
    Ok(blake3::hash(&std::fs::read(path)?).to_hex().to_string())
}

impl SavedPlan {
    pub fn new(
        pipeline: &Path,
        store: &Path,
        force: &[String],
        only: &[String],
        vars: &[VarOverride],
        steps: &[PlannedStep],
    ) -> std::io::Result<Self> {
        Ok(Self {
            format: FORMAT.into(),
            version: VERSION,
            pipeline: absolute(pipeline),
            pipeline_digest: pipeline_digest(pipeline)?,
            store: absolute(store),
            force: force.to_vec(),
            only: only.to_vec(),
            vars: vars.to_vec(),
            steps: saved_steps(steps),
        })
    }

    /// The saved plan in the file at `path`, or `None` when the file is not one (a pipeline).
    pub fn read(path: &Path) -> Option<Result<Self, String>> {
        let text = std::fs::read_to_string(path).ok()?;
        let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
        if doc.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return None;
        }
        if doc.get("version").and_then(serde_json::Value::as_u64) != Some(u64::from(VERSION)) {
            return Some(Err(format!(
                "`{}` is a plan of another version ({}); this forge reads version {VERSION}",
                path.display(),
                doc["version"]
            )));
        }
        Some(serde_json::from_value(doc).map_err(|e| format!("`{}`: {e}", path.display())))
    }

    /// Why this plan no longer describes what `apply` would do, given the store it is applied
    /// to and a fresh plan of the pipeline; `None` when it still does.
    pub fn stale_because(&self, store: &Path, now: &[PlannedStep]) -> Option<String> {
        match pipeline_digest(&self.pipeline) {
            Ok(d) if d == self.pipeline_digest => {}
            Ok(_) => return Some(format!("`{}` changed", self.pipeline.display())),
            Err(e) => return Some(format!("`{}`: {e}", self.pipeline.display())),
        }
        if absolute(store) != self.store {
            return Some(format!(
                "it was made against the store `{}`, not `{}`",
                self.store.display(),
                absolute(store).display()
            ));
        }
        let now = saved_steps(now);
        if now.len() != self.steps.len() {
            return Some("the pipeline's steps changed".into());
        }
        self.steps.iter().zip(&now).find(|(a, b)| a != b).map(|(a, b)| {
            let key = |k: &Option<String>| {
                k.as_deref()
                    .map_or("(pending)".to_string(), |k| k[..12.min(k.len())].to_string())
            };
            format!(
                "step `{}` was planned as {} {} and is now {} {} (its inputs or the store changed)",
                a.id,
                a.status,
                key(&a.key),
                b.status,
                key(&b.key)
            )
        })
    }
}

fn saved_steps(steps: &[PlannedStep]) -> Vec<SavedStep> {
    steps
        .iter()
        .map(|s| SavedStep {
            id: s.id.clone(),
            key: s.key.clone(),
            status: s.status.to_string(),
        })
        .collect()
}
