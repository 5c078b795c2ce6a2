//! `verify` and `gc`: the store's self-checks and clean-up. Both hold the store lock exclusively,
//! so no `apply` is using an object while it is checked, moved or deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use crate::digest::{ObjectDigest, StepKey};
use crate::error::{IoContext, Result};
use crate::hashing::hash_file_uncached;
use crate::store::{Store, now_ms, read_dir_sorted, sharded_entries};

/// One corrupt object found by `verify`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CorruptObject {
    pub digest: ObjectDigest,
    pub actual: Option<ObjectDigest>,
    pub quarantined_to: PathBuf,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub objects_checked: u64,
    pub bytes_checked: u64,
    pub corrupt: Vec<CorruptObject>,
    /// Actions that now lack an output and will be rebuilt by the next apply.
    pub actions_invalidated: u64,
    pub memo_entries_checked: u64,
    /// Memo entries whose value no longer matches its recorded digest: removed.
    pub memo_entries_corrupt: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub runs_kept: usize,
    pub runs_removed: usize,
    pub actions_removed: usize,
    pub objects_removed: usize,
    pub bytes_freed: u64,
    pub work_dirs_removed: usize,
    pub views_removed: usize,
    /// Memo entries no kept run used.
    pub memo_entries_removed: usize,
}

impl Store {
    fn all_objects(&self) -> Result<Vec<(ObjectDigest, PathBuf)>> {
        Ok(sharded_entries(&self.root().join("objects"), "")?
            .into_iter()
            .filter_map(|(name, path)| Some((name.parse().ok()?, path)))
            .collect())
    }

    /// Re-hash every object. Corrupt ones are moved to `quarantine/` (never served again), and the
    /// shared views are dropped since they may hard-link the corrupt bytes; the actions that
    /// referenced them become cache misses and the next `apply` rebuilds them.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        let _lock = self.lock_store(true)?;
        let objects = self.all_objects()?;
        let total = objects.len() as u64;
        let mut report = VerifyReport::default();
        for (i, (digest, path)) in objects.into_iter().enumerate() {
            progress(i as u64, total);
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let actual = hash_file_uncached(&path).ok();
            report.objects_checked += 1;
            report.bytes_checked += size;
            if actual != Some(digest) {
                let q = self.root().join("quarantine").join(format!(
                    "{}-{}",
                    digest.to_hex(),
                    now_ms()
                ));
                fs::rename(&path, &q).at(&path)?;
                report.corrupt.push(CorruptObject {
                    digest,
                    actual,
                    quarantined_to: q,
                });
            }
        }
        progress(total, total);
        for entry in crate::memo::entries(&self.root().join("memo"))? {
            report.memo_entries_checked += 1;
            let bytes = fs::read(&entry).at(&entry)?;
            if crate::memo::intact(&bytes).is_none() {
                fs::remove_file(&entry).at(&entry)?;
                report.memo_entries_corrupt += 1;
            }
        }
        if !report.corrupt.is_empty() {
            let views = self.root().join("views");
            for v in read_dir_sorted(&views)? {
                fs::remove_dir_all(&v).at(&v)?;
            }
            for key in self.all_action_keys()? {
                if self.read_action(&key)?.is_some() && self.get_action(&key)?.is_none() {
                    report.actions_invalidated += 1;
                }
            }
        }
        Ok(report)
    }

    /// Delete everything not reachable from the kept runs — the last `keep_last` runs of each
    /// pipeline, or with `across_pipelines` the last `keep_last` of all runs together: older
    /// runs, the actions, step refs, objects, work dirs and views only they used, temp files.
    pub fn gc(&self, keep_last: usize, across_pipelines: bool) -> Result<GcReport> {
        let _lock = self.lock_store(true)?;
        let mut report = GcReport::default();
        let run_dirs = read_dir_sorted(&self.root().join("runs"))?;
        let summaries = run_dirs
            .iter()
            .map(|dir| {
                crate::store::read_json_opt::<crate::runs::RunSummary>(
                    &dir.join("run.json"),
                    "run summary",
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // Run ids sort by start time: count back from the newest.
        let mut kept_of: BTreeMap<&str, usize> = BTreeMap::new();
        let keep: Vec<bool> = (0..run_dirs.len())
            .rev()
            .map(|i| {
                let group = match (&summaries[i], across_pipelines) {
                    (Some(s), false) => s.pipeline.as_str(),
                    _ => "",
                };
                let n = kept_of.entry(group).or_default();
                *n += 1;
                *n <= keep_last
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        report.runs_kept = keep.iter().filter(|k| **k).count();

        let mut live_keys: BTreeSet<StepKey> = BTreeSet::new();
        let mut live_trees: BTreeSet<ObjectDigest> = BTreeSet::new();
        // Memo entries untouched since the oldest kept run began were used by no kept run.
        let mut memo_horizon_ms = u64::MAX;
        for (s, _) in summaries.iter().zip(&keep).filter(|(_, k)| **k) {
            if let Some(s) = s {
                memo_horizon_ms = memo_horizon_ms.min(s.started_unix_ms);
                for st in &s.steps {
                    live_keys.extend(st.key);
                    live_trees.extend(st.outputs.values().copied());
                }
            }
        }
        for (dir, _) in run_dirs.iter().zip(&keep).filter(|(_, k)| !**k) {
            fs::remove_dir_all(dir).at(dir)?;
            report.runs_removed += 1;
        }
        for key in self.all_action_keys()? {
            if live_keys.contains(&key) {
                if let Some(rec) = self.read_action(&key)? {
                    live_trees.extend(rec.outputs.values().copied());
                }
            } else {
                self.remove_action(&key)?;
                report.actions_removed += 1;
            }
        }
        for (path, r) in self.step_refs()? {
            if !live_keys.contains(&r.key) {
                fs::remove_file(&path).at(&path)?;
            }
        }
        let mut live_objects: BTreeSet<ObjectDigest> = live_trees.clone();
        for t in &live_trees {
            if let Ok(tree) = self.read_tree(t) {
                live_objects.extend(tree.entries.iter().map(|e| e.digest));
            }
        }
        for (d, path) in self.all_objects()? {
            if !live_objects.contains(&d) {
                report.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).at(&path)?;
                report.objects_removed += 1;
            }
        }
        for w in read_dir_sorted(&self.root().join("work"))? {
            let keep = w
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<StepKey>().ok())
                .is_some_and(|k| live_keys.contains(&k));
            if !keep {
                fs::remove_dir_all(&w).at(&w)?;
                report.work_dirs_removed += 1;
            }
        }
        for v in read_dir_sorted(&self.root().join("views"))? {
            let keep = v
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<ObjectDigest>().ok())
                .is_some_and(|d| live_trees.contains(&d));
            if !keep {
                fs::remove_dir_all(&v).at(&v)?;
                report.views_removed += 1;
            }
        }
        for entry in crate::memo::entries(&self.root().join("memo"))? {
            let used_ms = fs::metadata(&entry)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            if memo_horizon_ms == u64::MAX || used_ms < memo_horizon_ms {
                fs::remove_file(&entry).at(&entry)?;
                report.memo_entries_removed += 1;
            }
        }
        for t in read_dir_sorted(&self.root().join("tmp"))? {
            let _ = if t.is_dir() {
                fs::remove_dir_all(&t)
            } else {
                fs::remove_file(&t)
            };
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ActionRecord, Tree, TreeEntry};
    use std::os::unix::fs::PermissionsExt;

    fn record(s: &Store, key: StepKey, content: &[u8], run: &str) -> ObjectDigest {
        let blob = s.put_bytes(content).unwrap();
        let tree = s
            .put_tree_manifest(&Tree {
                forge_tree: 1,
                entries: vec![TreeEntry {
                    path: "f".into(),
                    digest: blob,
                    size: content.len() as u64,
                    executable: false,
                }],
            })
            .unwrap();
        s.put_action(&ActionRecord {
            key,
            step: "s".into(),
            op: "exec".into(),
            outputs: [("out".to_string(), tree)].into(),
            metrics: Default::default(),
            preimage: serde_json::json!({}),
            created_unix_ms: 0,
            duration_ms: 0,
            run_id: run.into(),
        })
        .unwrap();
        tree
    }

    #[test]
    fn verify_quarantines_corrupt_objects_and_invalidates_their_actions() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join(".forge")).unwrap();
        let key = StepKey::of(b"k");
        let tree = record(&s, key, b"payload", "r1");
        let blob = s.read_tree(&tree).unwrap().entries[0].digest;
        let p = s.object_path(&blob);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"tampered").unwrap();
        let r = s.verify(&mut |_, _| {}).unwrap();
        assert_eq!(r.corrupt.len(), 1);
        assert_eq!(r.corrupt[0].digest, blob);
        assert_eq!(r.actions_invalidated, 1);
        assert!(!s.has_object(&blob));
        assert!(s.get_action(&key).unwrap().is_none());
        // A clean store verifies clean.
        assert!(s.verify(&mut |_, _| {}).unwrap().corrupt.is_empty());
    }

    /// Runs of `pipeline` that each produced one `(key, tree)`, oldest first.
    fn runs(s: &Store, pipeline: &str, results: &[(StepKey, ObjectDigest)]) {
        for &(key, tree) in results {
            let w = s.new_run().unwrap();
            w.write_summary(&crate::runs::RunSummary {
                id: w.id.clone(),
                pipeline: pipeline.into(),
                pipeline_path: "p.yaml".into(),
                started_unix_ms: 0,
                finished_unix_ms: Some(1),
                status: "succeeded".into(),
                steps: vec![crate::runs::RunStep {
                    id: "s".into(),
                    op: "exec".into(),
                    key: Some(key),
                    status: "ran".into(),
                    outputs: [("out".to_string(), tree)].into(),
                    duration_ms: 0,
                    error: None,
                }],
            })
            .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
    }

    #[test]
    fn gc_keeps_what_recent_runs_reference() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join(".forge")).unwrap();
        let old_key = StepKey::of(b"old");
        let new_key = StepKey::of(b"new");
        let old_tree = record(&s, old_key, b"old output", "r1");
        let new_tree = record(&s, new_key, b"new output", "r2");
        runs(&s, "p", &[(old_key, old_tree), (new_key, new_tree)]);
        let r = s.gc(1, true).unwrap();
        assert_eq!((r.runs_kept, r.runs_removed, r.actions_removed), (1, 1, 1));
        assert_eq!(r.objects_removed, 2); // the old blob and the old tree
        assert!(s.get_action(&new_key).unwrap().is_some());
        assert!(s.read_action(&old_key).unwrap().is_none());
    }

    #[test]
    fn gc_keeps_the_last_runs_of_each_pipeline_unless_told_to_count_across_them() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join(".forge")).unwrap();
        let keys = [b"a1", b"b1", b"b2"].map(|k| StepKey::of(k));
        let trees: Vec<ObjectDigest> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| record(&s, *k, format!("output {i}").as_bytes(), &format!("r{i}")))
            .collect();
        runs(&s, "a", &[(keys[0], trees[0])]);
        runs(&s, "b", &[(keys[1], trees[1]), (keys[2], trees[2])]);
        // Per pipeline: a's only run stays although two newer runs of b exist.
        let r = s.gc(1, false).unwrap();
        assert_eq!((r.runs_kept, r.runs_removed), (2, 1));
        assert!(s.get_action(&keys[0]).unwrap().is_some(), "a's result kept");
        assert!(s.read_action(&keys[1]).unwrap().is_none());
        assert!(s.get_action(&keys[2]).unwrap().is_some());
        // Across pipelines: only the newest run of all stays.
        let r = s.gc(1, true).unwrap();
        assert_eq!((r.runs_kept, r.runs_removed), (1, 1));
        assert!(s.read_action(&keys[0]).unwrap().is_none());
        assert!(s.get_action(&keys[2]).unwrap().is_some());
    }

    #[test]
    fn verify_removes_corrupt_memo_entries_and_gc_keeps_what_kept_runs_used() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join("s")).unwrap();
        let m = s.memos().bucket("fitness", 1).unwrap();
        let (good, bad) = (m.key(&"good"), m.key(&"bad"));
        m.put(&good, b"1").unwrap();
        m.put(&bad, b"2").unwrap();
        // Corrupt one entry's value.
        let bad_path = crate::memo::entries(&s.root().join("memo"))
            .unwrap()
            .into_iter()
            .find(|p| fs::read(p).unwrap().ends_with(b"2"))
            .unwrap();
        let mut bytes = fs::read(&bad_path).unwrap();
        *bytes.last_mut().unwrap() = b'3';
        fs::write(&bad_path, bytes).unwrap();
        let r = s.verify(&mut |_, _| {}).unwrap();
        assert_eq!((r.memo_entries_checked, r.memo_entries_corrupt), (2, 1));
        assert_eq!(m.get(&good).unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(m.get(&bad).unwrap(), None);
        // No kept run: nothing used the entry since, so gc removes it.
        let r = s.gc(0, true).unwrap();
        assert_eq!(r.memo_entries_removed, 1);
        assert_eq!(m.get(&good).unwrap(), None);
        // An entry used after the oldest kept run began survives.
        let run = s.new_run().unwrap();
        run.write_summary(&crate::runs::RunSummary {
            id: run.id.clone(),
            pipeline: "p".into(),
            pipeline_path: "p.yaml".into(),
            started_unix_ms: now_ms() - 10_000,
            finished_unix_ms: None,
            status: "succeeded".into(),
            steps: vec![],
        })
        .unwrap();
        m.put(&good, b"1").unwrap();
        let r = s.gc(1, true).unwrap();
        assert_eq!(r.memo_entries_removed, 0);
        assert_eq!(m.get(&good).unwrap().as_deref(), Some(&b"1"[..]));
    }
}
