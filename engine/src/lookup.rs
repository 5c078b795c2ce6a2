//! Finding what a step produced, for the commands that read the store (`show`, `export`,
//! `eval`), and printing their errors with a hint.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use forge_cache::Store;
use forge_ops::OpRegistry;

use crate::exit::{FAILED as EXIT_FAILED, INVALID as EXIT_INVALID};
use crate::load::load_plan;

/// Print `error: msg` and an optional hint on stderr.
pub fn eprint_error(msg: &str, hint: Option<&str>) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "error: {msg}");
    if let Some(h) = hint {
        let _ = writeln!(e, "\nhint: {h}");
    }
}

/// Print a store error with its causes; the environment's exit code.
pub fn store_error(e: &dyn std::error::Error) -> u8 {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    eprint_error(&msg, None);
    crate::exit::INFRA
}

/// Find the latest results for a step selector among the store's step refs.
pub fn find_refs(
    store_dir: &Path,
    sel: &str,
    pipeline: Option<&Path>,
    registry: &OpRegistry,
) -> Result<(Store, Vec<forge_cache::StepRef>), u8> {
    let Some(store) = Store::open_existing(store_dir).map_err(|e| store_error(&e))? else {
        eprint_error(
            &format!("no store at `{}`", store_dir.display()),
            Some("run `forge apply <pipeline>` first"),
        );
        return Err(EXIT_FAILED);
    };
    let pipeline_name = match pipeline {
        Some(p) => Some(load_plan(p, &[], registry)?.pipeline.name),
        None => None,
    };
    let matches = |id: &str| {
        id == sel
            || id.split('[').next() == Some(sel)
            || id.split('[').next().and_then(|b| b.split('.').nth(1)) == Some(sel)
    };
    let refs: Vec<forge_cache::StepRef> = store
        .step_refs()
        .map_err(|e| store_error(&e))?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| matches(&r.step) && pipeline_name.as_ref().is_none_or(|n| *n == r.pipeline))
        .collect();
    let pipelines: BTreeSet<&str> = refs.iter().map(|r| r.pipeline.as_str()).collect();
    if refs.is_empty() {
        eprint_error(
            &format!("no results for step `{sel}` in `{}`", store_dir.display()),
            Some("run `forge status <pipeline>` to see its steps"),
        );
        return Err(EXIT_FAILED);
    }
    if pipelines.len() > 1 {
        let names: Vec<&str> = pipelines.into_iter().collect();
        eprint_error(
            &format!(
                "step `{sel}` exists in several pipelines: {}",
                names.join(", ")
            ),
            Some("pick one with `--pipeline <file>`"),
        );
        return Err(EXIT_INVALID);
    }
    let mut refs = refs;
    refs.sort_by(|a, b| a.step.cmp(&b.step));
    Ok((store, refs))
}

/// The directory of output `output` (or the only output) of the one result `sel` names.
/// Print an op's error (and its hint); the exit code of its tier.
pub fn op_failure(e: &forge_ops::OpError) -> u8 {
    eprint_error(&e.to_string(), e.hint().as_deref());
    match e.tier() {
        forge_ops::Tier::User => EXIT_FAILED,
        _ => crate::exit::for_failures([e.tier()]),
    }
}

/// What a command names as an artifact: an existing directory (an exported artifact keeps its
/// output in a `model/` or `data/` subdirectory) or a step id, whose result in the store it is.
pub fn artifact_dir(
    store: &Path,
    what: &str,
    pipeline: Option<&Path>,
    registry: &OpRegistry,
) -> Result<PathBuf, u8> {
    let p = PathBuf::from(what);
    if p.exists() {
        for sub in ["model", "data"] {
            if p.join(sub).is_dir() && !p.join("config.json").exists() {
                return Ok(p.join(sub));
            }
        }
        return Ok(p);
    }
    step_output(store, what, None, pipeline, registry)
}

pub fn step_output(
    store_dir: &Path,
    sel: &str,
    output: Option<&str>,
    pipeline: Option<&Path>,
    registry: &OpRegistry,
) -> Result<PathBuf, u8> {
    let (store, refs) = find_refs(store_dir, sel, pipeline, registry)?;
    if refs.len() > 1 {
        let ids: Vec<&str> = refs.iter().map(|r| r.step.as_str()).collect();
        eprint_error(
            &format!("`{sel}` names several results: {}", ids.join(", ")),
            Some("name one instance, e.g. `phase.step[axis=value]`"),
        );
        return Err(EXIT_INVALID);
    }
    let Some(rec) = store
        .get_action(&refs[0].key)
        .map_err(|e| store_error(&e))?
    else {
        eprint_error(
            &format!(
                "the result of `{}` is incomplete in the store",
                refs[0].step
            ),
            Some("run `forge apply` to rebuild it"),
        );
        return Err(EXIT_FAILED);
    };
    let digest = match output {
        Some(o) => rec.outputs.get(o).copied(),
        None if rec.outputs.len() == 1 => rec.outputs.values().next().copied(),
        None => None,
    };
    let Some(digest) = digest else {
        let names: Vec<&String> = rec.outputs.keys().collect();
        eprint_error(
            &format!(
                "`{}` has no single output to use (it has {names:?})",
                refs[0].step
            ),
            None,
        );
        return Err(EXIT_INVALID);
    };
    store.checkout(&digest).map_err(|e| store_error(&e))
}

/// What `forge show --json` prints for one step's latest result (and `forge serve` serves):
/// key, op, whether its outputs are intact, each output's digest, read-only path, files and
/// bytes, and its metrics. `None` when the ref points at a result the store no longer has.
pub fn step_doc(
    store: &Store,
    r: &forge_cache::StepRef,
) -> Result<Option<serde_json::Value>, forge_cache::StoreError> {
    let Some(rec) = store.read_action(&r.key)? else {
        return Ok(None);
    };
    let intact = store.get_action(&r.key)?.is_some();
    let mut outputs = serde_json::Map::new();
    for (name, d) in &rec.outputs {
        let tree = store.read_tree(d).ok();
        let path = if intact {
            store.checkout(d).ok().map(|p| p.display().to_string())
        } else {
            None
        };
        outputs.insert(
            name.clone(),
            serde_json::json!({
                "digest": d.to_hex(),
                "path": path,
                "files": tree.as_ref().map(|t| t.entries.len()),
                "bytes": tree.as_ref().map(forge_cache::Tree::total_size),
            }),
        );
    }
    Ok(Some(serde_json::json!({
        "pipeline": r.pipeline,
        "step": r.step,
        "op": rec.op,
        "key": rec.key.to_hex(),
        "intact": intact,
        "created_unix_ms": rec.created_unix_ms,
        "duration_ms": rec.duration_ms,
        "run_id": rec.run_id,
        "outputs": outputs,
        "metrics": rec.metrics,
    })))
}
