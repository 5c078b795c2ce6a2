//! Loading a pipeline file into a [`Plan`] for the commands that need one: every problem is
//! printed as a located diagnostic and the caller gets exit code 2, with nothing written. Under
//! `--log-format json` ([`diagnostics_as_json`]) each problem is also one JSON object on stdout.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use forge_ops::OpRegistry;

use crate::diag::render;
use crate::exit;
use crate::plan::Plan;
use crate::report::fancy_terminal;
use crate::vars::VarOverride;

/// Whether invalid pipelines are also reported as JSON lines on stdout (the process's
/// `--log-format`, set once by the command line before anything is loaded).
static JSON: AtomicBool = AtomicBool::new(false);

/// Report invalid pipelines as JSON lines on stdout too ([`crate::diag::to_json`]).
pub fn diagnostics_as_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Load and plan a pipeline with `--var` overrides applied, returning every problem found.
pub fn try_plan(
    path: &Path,
    vars: &[VarOverride],
    registry: &OpRegistry,
) -> Result<Plan, crate::pipeline::Invalid> {
    let plan = |mut p: crate::pipeline::Pipeline| {
        if let Err(diagnostics) = crate::vars::apply(&mut p, vars) {
            return Err(crate::pipeline::Invalid {
                file: p.file.clone(),
                diagnostics,
                partial: None,
            });
        }
        // Absolute, so ops (e.g. `exec`'s working directory) see the same dir wherever they run.
        if let Ok(d) = std::fs::canonicalize(&p.dir) {
            p.dir = d;
        }
        crate::plan::build(p, registry)
    };
    crate::pipeline::load(path)
        .and_then(plan)
        .map_err(|mut invalid| {
            // The file's structure held: plan what was read, so every problem shows at once.
            if let Some(partial) = invalid.partial.take()
                && let Err(more) = plan(*partial)
            {
                invalid.diagnostics.extend(more.diagnostics);
                invalid
                    .diagnostics
                    .sort_by_key(|d| d.labels.first().map(|(s, _)| s.offset).unwrap_or(0));
            }
            invalid
        })
}

/// Load and plan a pipeline with `--var` overrides applied; on any problem print every
/// diagnostic and return exit code 2.
pub fn load_plan(path: &Path, vars: &[VarOverride], registry: &OpRegistry) -> Result<Plan, u8> {
    let result = try_plan(path, vars, registry);
    result.map_err(|invalid| {
        let n = invalid.diagnostics.len();
        if JSON.load(Ordering::Relaxed) {
            let mut out = std::io::stdout().lock();
            for d in &invalid.diagnostics {
                let _ = writeln!(out, "{}", crate::diag::to_json(&invalid.file, d));
            }
        }
        let text = render(&invalid.file, &invalid.diagnostics, fancy_terminal());
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(text.as_bytes());
        let s = if n == 1 { "" } else { "s" };
        let only_vars = invalid
            .diagnostics
            .iter()
            .all(|d| d.code.is_some_and(|c| c.starts_with("vars::")));
        let _ = if only_vars {
            let file = path.display();
            writeln!(
                e,
                "error: the --var values do not fit `{file}` ({n} error{s}); nothing was run"
            )
        } else {
            let file = path.display();
            writeln!(
                e,
                "error: `{file}` is not a valid pipeline ({n} error{s}); nothing was run"
            )
        };
        if !vars.is_empty() {
            let flags: Vec<String> = vars.iter().map(|v| format!("--var {v}")).collect();
            let _ = writeln!(e, "note: read with {}", flags.join(" "));
        }
        exit::INVALID
    })
}
