//! `exec`: run a command with declared inputs and one output directory.
//!
//! The command runs under `sh -c` in the pipeline's directory with a *cleared* environment:
//! only `PATH` (for finding tools; not part of the key), the variables named in `env` (their values
//! are part of the key, stored hashed so secrets never land in the store), and forge's own:
//! `FORGE_OUTPUT` (the output directory to fill), `FORGE_WORK_DIR` (scratch that survives a crash
//! of this same step, for the command's own checkpoints), `FORGE_SEED`, `FORGE_STEP`, and
//! `FORGE_INPUT_<NAME>` per input (several artifacts are joined with `:`). Files the command
//! reads from the repository (its script) go in `deps`, whose content is part of the key.
//! `expects` optionally declares the inputs and their artifact kinds, checked at plan time.
//! A non-zero exit fails the step and shows the tail of stderr; exit code 75 (`EX_TEMPFAIL`) is
//! treated as transient and retried.

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::artifact::{ArtifactKind, InputSignature, InputSpec, OutputSpec, StepInputs};
use crate::context::StepContext;
use crate::error::{OpError, ParamsError};
use crate::op::{KeyContext, StepOutcome, TypedOp, resolve_path};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Parameters of `exec`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// The command line, run with `sh -c` in the pipeline file's directory.
    pub run: String,
    /// Environment variables passed through to the command. Their values are part of the key.
    #[serde(default)]
    pub env: Vec<String>,
    /// Files or directories the command reads (relative to the pipeline file), e.g. its script.
    /// Their content is part of the key.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Artifact kind of the `out` output.
    #[serde(default)]
    pub kind: ArtifactKind,
    /// Declared inputs and the artifact kind each accepts. When given, only these input names
    /// are allowed and every one is required; kinds are checked at plan time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expects: BTreeMap<String, ArtifactKind>,
}

pub struct Exec;

/// Exit status that marks a failure as transient (sysexits.h `EX_TEMPFAIL`).
pub const EX_TEMPFAIL: i32 = 75;
const STDERR_TAIL_LINES: usize = 20;

impl TypedOp for Exec {
    type Params = ExecParams;
    const NAME: &'static str = "exec";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Run a shell command with declared inputs and one output directory";

    fn check(&self, p: &ExecParams) -> Result<(), ParamsError> {
        if p.run.trim().is_empty() {
            return Err(ParamsError::at(&["run"], "the command is empty"));
        }
        for (i, name) in p.env.iter().enumerate() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ParamsError::at(
                    &["env", &i.to_string()],
                    format!("`{name}` is not an environment variable name"),
                ));
            }
        }
        Ok(())
    }

    fn inputs(&self, p: &ExecParams) -> InputSignature {
        if p.expects.is_empty() {
            return InputSignature::Open;
        }
        InputSignature::Fixed(
            p.expects
                .iter()
                .map(|(name, kind)| InputSpec::many(name, &[*kind]))
                .collect(),
        )
    }

    fn outputs(&self, p: &ExecParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "out".into(),
            kind: p.kind,
        }]
    }

    fn key_extras(&self, p: &ExecParams, cx: &KeyContext<'_>) -> Result<Value, OpError> {
        let mut env = BTreeMap::new();
        for name in &p.env {
            let v = std::env::var_os(name)
                .map(|v| blake3::hash(v.as_encoded_bytes()).to_hex().to_string());
            env.insert(name.clone(), v);
        }
        let mut deps = BTreeMap::new();
        for d in &p.deps {
            let path = resolve_path(cx.pipeline_dir, d);
            let digest = cx.store.tree_digest_of(&path).map_err(|e| match e {
                forge_cache::StoreError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    OpError::user(format!(
                        "dependency `{d}` does not exist (looked for `{}`)",
                        path.display()
                    ))
                }
                other => other.into(),
            })?;
            deps.insert(d.clone(), digest.to_hex());
        }
        Ok(json!({ "env_blake3": env, "deps": deps }))
    }

    fn watch_paths(&self, p: &ExecParams, pipeline_dir: &Path) -> Vec<PathBuf> {
        p.deps
            .iter()
            .map(|d| resolve_path(pipeline_dir, d))
            .collect()
    }

    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        p: &ExecParams,
    ) -> Result<StepOutcome, OpError> {
        let out = ctx.output_dir("out")?;
        let scratch = ctx.scratch_dir()?;
        let logs = ctx.work_dir().join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| OpError::io(&logs, e))?;
        let stdout_path = logs.join(format!("stdout.{}", ctx.attempt()));
        let stderr_path = logs.join(format!("stderr.{}", ctx.attempt()));
        let stdout =
            std::fs::File::create(&stdout_path).map_err(|e| OpError::io(&stdout_path, e))?;
        let stderr =
            std::fs::File::create(&stderr_path).map_err(|e| OpError::io(&stderr_path, e))?;

        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&p.run)
            .current_dir(ctx.pipeline_dir())
            .env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for name in &p.env {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.env("FORGE_OUTPUT", &out)
            .env("FORGE_WORK_DIR", &scratch)
            .env("FORGE_SEED", ctx.seed().to_string())
            .env("FORGE_STEP", ctx.step_id());
        for (name, arts) in inputs {
            let joined = std::env::join_paths(arts.iter().map(|a| a.path.as_os_str()))
                .map_err(|e| OpError::user(format!("input `{name}`: {e}")))?;
            cmd.env(format!("FORGE_INPUT_{}", env_name(name)), joined);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // If forge dies (even by SIGKILL) the command dies with it.
        crate::sys::die_with_parent(&mut cmd);
        let pgid_file = ctx.work_dir().join("exec.pgid");
        kill_leftover_group(ctx, &pgid_file);
        let mut child = cmd
            .spawn()
            .map_err(|e| OpError::infra(format!("could not start `sh`: {e}")))?;
        let pgid = child.id() as i32;
        let _ = std::fs::write(&pgid_file, pgid.to_string());
        ctx.log(format!("started `{}` (pid {pgid})", p.run));
        // Copy the command's output to the log files and, line by line, into log events.
        let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
        let status = std::thread::scope(|scope| {
            scope.spawn(|| tee_lines(out_pipe, stdout, ctx, ""));
            scope.spawn(|| tee_lines(err_pipe, stderr, ctx, "stderr: "));
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => return Ok(status),
                    Ok(None) => {}
                    Err(e) => return Err(OpError::infra(e.to_string())),
                }
                if ctx.is_cancelled() {
                    kill_group(pgid, &mut child);
                    let reason = ctx
                        .cancel_token()
                        .reason()
                        .unwrap_or_else(|| "cancelled".into());
                    return Err(OpError::Cancelled(reason));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
        let _ = std::fs::remove_file(&pgid_file);
        if status.success() {
            return Ok(StepOutcome::default());
        }
        let tail = tail_lines(&stderr_path, STDERR_TAIL_LINES);
        let what = match (status.code(), status.signal()) {
            (Some(c), _) => format!("command exited with status {c}"),
            (None, Some(s)) => format!("command was killed by signal {s}"),
            _ => "command failed".into(),
        };
        if status.code() == Some(EX_TEMPFAIL) {
            return Err(OpError::transient(format!(
                "{what} (EX_TEMPFAIL, will retry)"
            )));
        }
        Err(OpError::user(format!("{what}: `{}`", p.run)).with_detail(tail))
    }
}

/// Copy a child's output pipe into `file`, emitting each line as a log event.
fn tee_lines(
    pipe: Option<impl std::io::Read>,
    mut file: std::fs::File,
    ctx: &StepContext,
    prefix: &str,
) {
    use std::io::{BufRead, Write};
    let Some(pipe) = pipe else { return };
    let mut reader = std::io::BufReader::new(pipe);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        let _ = file.write_all(&line);
        let text = String::from_utf8_lossy(&line);
        ctx.log(format!("{prefix}{}", text.trim_end()));
        line.clear();
    }
    let _ = file.flush();
}

/// `my-input` → `MY_INPUT`.
pub fn env_name(input: &str) -> String {
    input
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A previous attempt of this step that was killed may have left its command's process group
/// running (e.g. children of the shell that did not get the parent-death signal). Stop it before
/// starting again, so two attempts never share the scratch dir.
fn kill_leftover_group(ctx: &StepContext, pgid_file: &Path) {
    let Some(pgid) = std::fs::read_to_string(pgid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    // Signal 0 probes; SIGKILL ends a process group this step started earlier.
    if pgid > 1 && signal_group(pgid, None) {
        ctx.log(format!(
            "stopping process group {pgid} left over from an interrupted attempt"
        ));
        signal_group(pgid, Some(Signal::SIGKILL));
        for _ in 0..100 {
            if !signal_group(pgid, None) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(pgid_file);
}

/// Send `signal` (`None`: only probe) to process group `pgid`; whether it exists.
fn signal_group(pgid: i32, signal: Option<Signal>) -> bool {
    nix::sys::signal::killpg(Pid::from_raw(pgid), signal).is_ok()
}

fn kill_group(pgid: i32, child: &mut std::process::Child) {
    signal_group(pgid, Some(Signal::SIGTERM));
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(pgid, Some(Signal::SIGKILL));
    let _ = child.wait();
}

fn tail_lines(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::ctx_in;

    fn params(run: &str) -> ExecParams {
        ExecParams {
            run: run.into(),
            env: vec![],
            deps: vec![],
            kind: ArtifactKind::Files,
            expects: BTreeMap::new(),
        }
    }

    #[test]
    fn writes_output_and_sees_inputs_and_seed() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx_in(d.path());
        let inp = d.path().join("in");
        std::fs::create_dir_all(&inp).unwrap();
        std::fs::write(inp.join("x.txt"), "42").unwrap();
        let inputs: StepInputs = [(
            "my-data".to_string(),
            vec![crate::InputArtifact {
                path: inp,
                digest: forge_cache::ObjectDigest::of(b""),
                kind: ArtifactKind::Files,
                from_step: "a".into(),
            }],
        )]
        .into();
        Exec.run(
            &ctx,
            &inputs,
            &params(r#"echo "$(cat $FORGE_INPUT_MY_DATA/x.txt) $FORGE_SEED" > $FORGE_OUTPUT/r"#),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(ctx.outputs_root().join("out/r")).unwrap(),
            "42 7\n"
        );
    }

    #[test]
    fn output_lines_become_log_events() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, seen) = ctx_in(d.path());
        Exec.run(
            &ctx,
            &StepInputs::new(),
            &params("echo step one; echo warn >&2"),
        )
        .unwrap();
        let logs: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                crate::StepEvent::Log { message } => Some(message.clone()),
                _ => None,
            })
            .collect();
        assert!(logs.contains(&"step one".to_string()), "{logs:?}");
        assert!(logs.contains(&"stderr: warn".to_string()), "{logs:?}");
    }

    #[test]
    fn failure_shows_stderr_tail_and_tempfail_is_transient() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx_in(d.path());
        let e = Exec
            .run(&ctx, &StepInputs::new(), &params("echo boom >&2; exit 3"))
            .unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("status 3"), "{e}");
        assert_eq!(e.detail(), Some("boom"));
        let e = Exec
            .run(&ctx, &StepInputs::new(), &params("exit 75"))
            .unwrap_err();
        assert!(e.is_transient());
    }

    #[test]
    fn environment_is_cleared_except_allowlist() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx_in(d.path());
        // HOME is set in any test environment but not allowlisted.
        Exec.run(
            &ctx,
            &StepInputs::new(),
            &params(r#"echo "home=${HOME:-unset}" > $FORGE_OUTPUT/e"#),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(ctx.outputs_root().join("out/e")).unwrap(),
            "home=unset\n"
        );
    }

    #[test]
    fn cancel_kills_the_process_group() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx_in(d.path());
        let token = ctx.cancel_token().clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            token.cancel("test");
        });
        let start = std::time::Instant::now();
        let e = Exec
            .run(
                &ctx,
                &StepInputs::new(),
                &params("sleep 30 & sleep 30; wait"),
            )
            .unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, OpError::Cancelled(_)));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
