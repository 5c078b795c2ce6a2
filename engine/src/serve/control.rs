//! Start, pause and resume from `forge serve`: start and resume run `forge apply` as a child
//! process on the served pipeline and store (the same binary, so custom ops come along); pause
//! sends the running apply SIGINT, the clean cancel Ctrl-C gives (running steps keep their
//! checkpoints, and the next apply resumes them). Settings go in as pipeline vars, as `--var`.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::error;

/// The apply this server started last, and what it printed on stderr.
#[derive(Default)]
pub struct Control {
    child: Mutex<Option<(Child, Arc<Mutex<String>>)>>,
    /// Set when pause signalled this server's child: a start or resume right after waits for it
    /// to finish stopping instead of answering 409.
    stopping: std::sync::atomic::AtomicBool,
}

impl Control {
    fn child(&self) -> std::sync::MutexGuard<'_, Option<(Child, Arc<Mutex<String>>)>> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long a start or resume waits for a paused apply to finish stopping.
const STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    force: Vec<String>,
    /// Pipeline vars for this apply (on top of the server's `--var`s).
    #[serde(default)]
    vars: BTreeMap<String, Value>,
}

/// The pid of the apply of this pipeline that is running now, if any: this server's child, or
/// the process of the latest run (what the status document calls running).
fn running_pid(app: &super::App) -> Option<u32> {
    {
        let mut guard = app.control.child();
        if let Some((child, _)) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Some(child.id());
            }
            *guard = None;
        }
    }
    let base = super::api::base(app).ok()?;
    let run = base.run.as_ref().filter(|r| super::api::run_alive(r))?;
    super::api::run_pid(run)
}

fn launch(app: &super::App, body: &Bytes) -> Response {
    let body: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body is not a start request: {e}"),
                    r#"send e.g. {"only": ["cognate.init"], "vars": {"base_steps": 300}}"#,
                );
            }
        }
    };
    if app
        .control
        .stopping
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        let deadline = Instant::now() + STOP_WAIT;
        let mut guard = app.control.child();
        if let Some((child, _)) = guard.as_mut() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    if let Some(pid) = running_pid(app) {
        return error(
            StatusCode::CONFLICT,
            &format!("an apply of this pipeline is running (pid {pid})"),
            "pause it first (POST /api/pipeline/pause), or wait for it to finish",
        );
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), ""),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(&app.store)
        .args(["--log-format", "json", "apply"])
        .arg(&app.pipeline);
    for s in &body.only {
        cmd.args(["--only", s]);
    }
    for s in &body.force {
        cmd.args(["--force", s]);
    }
    let mut vars: BTreeMap<String, String> = app
        .vars
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    for (k, v) in &body.vars {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        vars.insert(k.clone(), text);
    }
    for (k, v) in &vars {
        cmd.arg("--var").arg(format!("{k}={v}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("starting forge apply: {e}"),
                "",
            );
        }
    };
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(mut pipe) = child.stderr.take() {
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = stderr
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > 64 << 10 {
                    let cut = s.len() - (32 << 10);
                    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                    s.drain(..cut);
                }
            }
        });
    }
    let pid = child.id();
    // An invalid request (a bad var, an unknown --only) fails at once: answer with its reason.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(50));
            let text = stderr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            return if status.code() == Some(2) {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({ "error": "forge apply refused the request", "hint": "see `output`", "output": text })),
                )
                    .into_response()
            } else {
                Json(json!({ "status": "finished", "pid": pid, "exit_code": status.code(), "output": text }))
                    .into_response()
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    *app.control.child() = Some((child, stderr));
    (
        StatusCode::ACCEPTED,
        Json(json!({ "status": "started", "pid": pid })),
    )
        .into_response()
}

pub async fn start(State(app): State<super::State>, body: Bytes) -> Response {
    tokio::task::spawn_blocking(move || launch(&app, &body))
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), ""))
}

pub async fn resume(state: State<super::State>, body: Bytes) -> Response {
    start(state, body).await
}

pub async fn pause(State(app): State<super::State>) -> Response {
    tokio::task::spawn_blocking(move || {
        let Some(pid) = running_pid(&app) else {
            return error(
                StatusCode::CONFLICT,
                "nothing of this pipeline is running",
                "start it with POST /api/pipeline/start",
            );
        };
        let pid_t = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
        match nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGINT) {
            Ok(()) => {
                app.control
                    .stopping
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                (
                    StatusCode::ACCEPTED,
                    Json(json!({ "status": "stopping", "pid": pid })),
                )
                    .into_response()
            }
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("signalling pid {pid}: {e}"),
                "the apply may belong to another user",
            ),
        }
    })
    .await
    .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), ""))
}
