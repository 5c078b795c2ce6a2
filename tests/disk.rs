//! A store on a small filesystem that fills up (a tmpfs mounted for the test, so it needs root;
//! skipped otherwise unless FORGE_REQUIRE_TMPFS is set, as CI sets it): a step that would not
//! fit fails before writing anything (exit 3), a run whose disk falls below `--disk-stop` while
//! a step writes stops cleanly (the step keeps its checkpoint), `forge verify` passes, and apply
//! finishes once space is freed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Project, stderr};

struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` at `dir`, or `None` (the test is skipped) where that is not
    /// allowed.
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(Self(dir.to_owned()));
        }
        assert!(
            std::env::var_os("FORGE_REQUIRE_TMPFS").is_none(),
            "cannot mount a tmpfs (needs root), and FORGE_REQUIRE_TMPFS is set"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![7u8; bytes]).unwrap();
}

const CHAIN: &str = r#"
version: 1
name: full
phases:
  p:
    steps:
      a: { op: exec, with: { run: "head -c 6000000 /dev/zero > $FORGE_OUTPUT/a" } }
      b: { op: exec, inputs: { up: a }, with: { run: "head -c 6000000 /dev/urandom > $FORGE_OUTPUT/b" } }
      c: { op: exec, inputs: { up: b }, with: { run: "head -c 6000000 /dev/urandom > $FORGE_OUTPUT/c" } }
"#;

#[test]
fn a_step_that_would_not_fit_fails_before_writing_and_apply_resumes_once_space_is_freed() {
    let p = Project::new();
    let mnt = p.path().join("mnt");
    let Some(_fs) = Tmpfs::mount(&mnt, "32m") else {
        return;
    };
    p.write("full.yaml", CHAIN);
    fill(&mnt.join("filler"), 12_000_000);
    let store = mnt.join(".forge");
    let store = store.to_str().unwrap();
    let apply = |p: &Project| {
        p.run(&[
            "--store",
            store,
            "apply",
            "full.yaml",
            "--disk-stop",
            "4MB",
            "--disk-warn",
            "20MB",
        ])
    };
    // 33.5 MB: 12 filler, 6 for a; b needs 1.5 × 6 + 4 = 13 of ~15 free; c the same of ~9.
    let out = apply(&p);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("not enough free disk to start"), "{err}");
    assert!(err.contains("below --disk-warn"), "{err}");
    let status = p.run(&["--store", store, "status", "full.yaml"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("cached  p.a") && text.contains("cached  p.b"),
        "{text}"
    );
    assert!(text.contains("run     p.c"), "{text}");
    let verify = p.run(&["--store", store, "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    // Freed: the same command finishes, with a and b from the cache.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let out = apply(&p);
    assert!(out.status.success(), "{}", stderr(&out));
    let verify = p.run(&["--store", store, "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// Writes 1 MB parts into its work dir (its checkpoint), one every 0.1 s, skipping parts a
/// killed earlier attempt wrote; then its output.
const SLOW: &str = r#"
version: 1
name: slow
phases:
  p:
    steps:
      w:
        op: exec
        with: { run: "for i in $(seq 12); do [ -f $FORGE_WORK_DIR/part$i ] || { head -c 1000000 /dev/urandom > $FORGE_WORK_DIR/part$i; sleep 0.1; }; done; cat $FORGE_WORK_DIR/part* | wc -c > $FORGE_OUTPUT/n" }
"#;

#[test]
fn a_run_whose_disk_fills_while_a_step_writes_stops_cleanly() {
    let p = Project::new();
    let mnt = p.path().join("mnt");
    let Some(_fs) = Tmpfs::mount(&mnt, "16m") else {
        return;
    };
    p.write("slow.yaml", SLOW);
    fill(&mnt.join("filler"), 6_000_000);
    let store = mnt.join(".forge");
    let store = store.to_str().unwrap();
    // ~16.7 MB: 6 filler; the step's parts bring free below 5 MB after ~6 of its 12 parts.
    let out = p
        .cmd(&["--store", store, "apply", "slow.yaml", "--disk-stop", "5MB"])
        .env("FORGE_HARDWARE_INTERVAL_MS", "50")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("stopping; running steps keep their checkpoints"),
        "{err}"
    );
    let mut parts: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![mnt.join(".forge/work")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part")
            {
                parts.push(path);
            }
        }
    }
    assert!(
        !parts.is_empty() && parts.len() < 12,
        "stopped part way, its checkpoint kept: {parts:?}"
    );
    let verify = p.run(&["--store", store, "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let out = p.run(&["--store", store, "apply", "slow.yaml", "--disk-stop", "1MB"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let export = p.run(&["--store", store, "export", "p.w", "out"]);
    assert!(export.status.success(), "{}", stderr(&export));
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/out/n"))
            .unwrap()
            .trim(),
        "12000000"
    );
}
