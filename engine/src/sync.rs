//! `forge push` and `forge pull`: explicit sync between the local store and the remote cache
//! (`--remote`/`FORGE_REMOTE`). `apply --remote` does the same step by step as it runs; these
//! move a pipeline's results without running anything — push what was built here, pull what
//! another machine built so the next `apply` finds it cached.

use std::sync::Arc;

use forge_cache::{Remote, Store};

use crate::executor::{ApplyOptions, PlannedStep, dry_run};
use crate::exit::{INFRA, INVALID};
use crate::hardware::human_bytes;
use crate::lookup::eprint_error;
use crate::plan::Plan;
use crate::report::human_duration;

/// The remote a sync command needs, or a usage error.
pub fn require(remote: Option<Arc<Remote>>, cmd: &str) -> Result<Arc<Remote>, u8> {
    remote.ok_or_else(|| {
        eprint_error(
            &format!("`forge {cmd}` needs a remote cache"),
            Some("give `--remote URL` or set FORGE_REMOTE (s3://bucket/prefix, file:///dir, a directory…)"),
        );
        INVALID
    })
}

fn planned(plan: &Plan, store: &Store, opts: &ApplyOptions) -> Result<Vec<PlannedStep>, u8> {
    dry_run(plan, store, opts).map_err(|e| {
        eprint_error(&e.to_string(), None);
        INFRA
    })
}

/// Upload the current results of `steps` (indices into the plan; all when empty). A step not
/// built in this store is named and skipped.
pub fn push(plan: &Plan, store: &Store, remote: &Remote, steps: &[usize]) -> Result<u8, u8> {
    let all = planned(plan, store, &ApplyOptions::default())?;
    let wanted = |id: &str| steps.is_empty() || steps.iter().any(|&i| plan.steps[i].id == id);
    let mut failed = false;
    for p in all.iter().filter(|p| wanted(&p.id)) {
        let (Some(k), "cached") = (&p.key, p.status) else {
            eprintln!("{:>12} {}: not built in this store", "Skipped", p.id);
            continue;
        };
        let key = k.parse().expect("planned keys are hex");
        match remote.push(store, &key) {
            Ok(m) => eprintln!(
                "{:>12} {} ({} new objects, {} in {})",
                "Uploaded",
                p.id,
                m.objects,
                human_bytes(m.bytes),
                human_duration(m.millis)
            ),
            Err(e) => {
                eprint_error(&format!("{}: {e}", p.id), None);
                failed = true;
            }
        }
    }
    Ok(if failed { INFRA } else { 0 })
}

/// Download every result of `plan` the remote has and this store lacks, in the plan's order
/// (a downloaded result gives the steps after it their keys).
pub fn pull(plan: &Plan, store: &Store, remote: Arc<Remote>) -> Result<u8, u8> {
    let opts = ApplyOptions {
        remote: Some(remote.clone()),
        ..ApplyOptions::default()
    };
    let all = planned(plan, store, &opts)?;
    let (mut got, mut failed) = (0, false);
    for p in &all {
        match (&p.key, p.status) {
            (Some(k), "remote") => {
                match remote.fetch(store, &k.parse().expect("planned keys are hex")) {
                    Ok(Some((_, m))) => {
                        got += 1;
                        eprintln!(
                            "{:>12} {} ({} objects, {} in {})",
                            "Downloaded",
                            p.id,
                            m.objects,
                            human_bytes(m.bytes),
                            human_duration(m.millis)
                        );
                    }
                    Ok(None) => eprintln!("{:>12} {}: gone from the remote", "Skipped", p.id),
                    Err(e) => {
                        eprint_error(&format!("{}: {e}", p.id), None);
                        failed = true;
                    }
                }
            }
            (_, "cached") => eprintln!("{:>12} {}", "Cached", p.id),
            _ => eprintln!("{:>12} {}: not on the remote", "Missing", p.id),
        }
    }
    eprintln!(
        "{:>12} {got} of {} steps from {}",
        "Pulled",
        all.len(),
        remote.url()
    );
    Ok(if failed { INFRA } else { 0 })
}
