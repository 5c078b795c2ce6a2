//! `forge apply --watch`: apply, then re-plan and re-apply whenever the pipeline file or a file
//! its steps read (`file:` sources, `exec` deps) changes. Changes are debounced; an invalid edit
//! prints its diagnostics and waits for the next one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use forge_ops::OpRegistry;
use notify::{RecursiveMode, Watcher};

use crate::plan::Plan;

const DEBOUNCE: Duration = Duration::from_millis(300);

fn watched_paths(path: &Path, plan: Option<&Plan>) -> BTreeSet<PathBuf> {
    let mut set = BTreeSet::new();
    set.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()));
    if let Some(plan) = plan {
        for s in &plan.steps {
            for p in s.op.watch_paths(&s.params, &plan.pipeline.dir) {
                set.insert(std::fs::canonicalize(&p).unwrap_or(p));
            }
        }
    }
    set
}

pub fn watch(
    path: &Path,
    vars: &[crate::vars::VarOverride],
    registry: &OpRegistry,
    interrupted: &AtomicBool,
    mut apply: impl FnMut(Plan) -> u8,
) -> Result<u8, u8> {
    let mut last_code = 0;
    loop {
        let plan = crate::load::load_plan(path, vars, registry).ok();
        let paths = watched_paths(path, plan.as_ref());
        if let Some(plan) = plan {
            last_code = apply(plan);
        }
        if interrupted.load(Ordering::SeqCst) {
            return Ok(last_code);
        }
        eprintln!(
            "{:>12} {} file(s) for changes (Ctrl-C to stop)",
            "Watching",
            paths.len()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let _ = tx.send(ev);
            }
        })
        .map_err(|e| {
            eprintln!("error: cannot watch files: {e}");
            crate::exit::INFRA
        })?;
        // Watch parent directories: editors replace files by rename, which a file watch misses.
        let dirs: BTreeSet<PathBuf> = paths
            .iter()
            .map(|p| {
                if p.is_dir() {
                    p.clone()
                } else {
                    p.parent().map(Path::to_owned).unwrap_or_default()
                }
            })
            .collect();
        for d in &dirs {
            let mode = if paths.contains(d) {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            let _ = watcher.watch(d, mode);
        }
        let relevant = |ev: &notify::Event| {
            !matches!(ev.kind, notify::EventKind::Access(_))
                && ev
                    .paths
                    .iter()
                    .any(|p| paths.iter().any(|w| p == w || p.starts_with(w)))
        };
        loop {
            if interrupted.load(Ordering::SeqCst) {
                return Ok(last_code);
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(ev) if relevant(&ev) => {
                    // Debounce: let a burst of writes settle.
                    while rx.recv_timeout(DEBOUNCE).is_ok() {}
                    eprintln!("{:>12} change detected; re-planning", "Changed");
                    break;
                }
                _ => continue,
            }
        }
    }
}
