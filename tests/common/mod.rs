//! Helpers for the CLI integration tests: a temporary project directory, running the `forge`
//! binary in it, waiting for a step's work files, and reading its JSON events.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join(".forge")
    }

    /// Replace `from` with `to` in the project file `rel` (which must contain it).
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.path().join(rel)).unwrap();
        assert!(text.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &text.replace(from, to));
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_forge"));
        c.args(args)
            .current_dir(self.path())
            .env_remove("FORGE_STORE")
            .env_remove("FORGE_REMOTE")
            .env("NO_COLOR", "1")
            .env("FORGE_RETRY_BASE_MS", "10");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run forge")
    }

    /// Wait until some step's file `rel` under `<store>/work/<key>/` exists and its text satisfies
    /// `ready` (e.g. a checkpoint far enough along to kill forge); returns its path. Panics with
    /// `what` after `limit`.
    pub fn wait_for_work_file(
        &self,
        rel: &str,
        limit: std::time::Duration,
        what: &str,
        ready: impl Fn(&str) -> bool,
    ) -> PathBuf {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let found = std::fs::read_dir(self.store().join("work"))
                .ok()
                .and_then(|rd| {
                    rd.flatten()
                        .map(|e| e.path().join(rel))
                        .find(|s| s.exists())
                });
            if let Some(path) = found
                && let Ok(text) = std::fs::read_to_string(&path)
                && ready(&text)
            {
                return path;
            }
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Start `forge <args>`, wait as [`Self::wait_for_work_file`] does, then kill forge outright
    /// (SIGKILL); returns the file's path.
    pub fn kill_when(
        &self,
        args: &[&str],
        rel: &str,
        limit: std::time::Duration,
        what: &str,
        ready: impl Fn(&str) -> bool,
    ) -> PathBuf {
        let mut child = self
            .cmd(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let path = self.wait_for_work_file(rel, limit, what, ready);
        child.kill().unwrap();
        child.wait().unwrap();
        path
    }

    /// `forge --log-format json apply <pipeline> [extra]`, asserting success; returns the events.
    pub fn apply_ok(&self, pipeline: &str, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["--log-format", "json", "apply", pipeline];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "apply failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        events(&out)
    }
}

pub fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect()
}

/// Step ids with events of kind `kind`, in order.
pub fn steps_with(evs: &[serde_json::Value], kind: &str) -> Vec<String> {
    evs.iter()
        .filter(|e| e["event"] == kind)
        .map(|e| e["step"].as_str().unwrap().to_owned())
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Like [`steps_with`], sorted (for steps that run concurrently).
pub fn sorted_steps_with(evs: &[serde_json::Value], kind: &str) -> Vec<String> {
    let mut v = steps_with(evs, kind);
    v.sort();
    v
}

/// The Python named by `$python_var` (default `python3`) if it can import `modules`; otherwise
/// `None` (the caller skips, saying how to install them), or a failure when `$require_var` is
/// set (CI sets it, so a missing install fails rather than skips).
pub fn python_with(
    python_var: &str,
    modules: &str,
    require_var: &str,
    install: &str,
) -> Option<String> {
    let python = std::env::var(python_var).unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .env_remove("PYTHONPATH")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os(require_var).is_none(),
        "`{python}` cannot import {modules}, and {require_var} is set"
    );
    eprintln!("skipped: no Python that imports {modules} (eval \"$({install})\")");
    None
}
