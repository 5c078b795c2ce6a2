//! The read-only REST handlers of `forge serve` and its WebSocket: the pipeline's plan against
//! the store with the latest run's live state, runs and their recorded events, a step's result
//! and series, hardware samples. Every path parameter is matched against what the store or the
//! plan lists (a run id in `runs/`, a step id of the plan), never joined into a path as given.

use std::path::Path;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use forge_cache::{RunSummary, Store};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::error;
use super::feed::phase_of;
use crate::executor::{ApplyOptions, dry_run};
use crate::plan::Plan;

/// An error answer, boxed: a `Response` is too large to travel in every `Result`.
pub struct Fail(Box<Response>);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<Response> for Fail {
    fn from(r: Response) -> Self {
        Self(Box::new(r))
    }
}

fn fail(status: StatusCode, message: &str, hint: &str) -> Fail {
    error(status, message, hint).into()
}

type Answer = Result<Json<Value>, Fail>;

fn internal(e: impl std::fmt::Display) -> Fail {
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        &e.to_string(),
        "see the server's output",
    )
}

pub async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route",
        "GET /api/openapi.json lists the routes",
    )
}

/// Run blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Fail> + Send + 'static,
) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// The pipeline planned with the server's vars; an invalid pipeline is a 422 with its
/// diagnostics as text.
fn plan(app: &super::App) -> Result<Plan, Fail> {
    crate::load::try_plan(&app.pipeline, &app.vars, &app.registry).map_err(|invalid| {
        let text = crate::diag::render(&invalid.file, &invalid.diagnostics, false);
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": format!("`{}` is not a valid pipeline", app.pipeline.display()),
                "hint": "fix it; `forge plan` shows the same diagnostics",
                "diagnostics": text,
            })),
        )
            .into_response()
            .into()
    })
}

/// The store if it exists (a server may start before the first apply).
fn store(app: &super::App) -> Result<Option<Store>, Fail> {
    Store::open_existing(&app.store).map_err(internal)
}

/// The newest run of pipeline `name`, reading run summaries newest first.
fn latest_run(store: &Store, name: &str) -> Option<RunSummary> {
    let runs = store.root().join("runs");
    let mut ids: Vec<String> = std::fs::read_dir(&runs)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.iter().find_map(|id| {
        let text = std::fs::read(runs.join(id).join("run.json")).ok()?;
        let s: RunSummary = serde_json::from_slice(&text).ok()?;
        (s.pipeline == name).then_some(s)
    })
}

/// The pid of the process that made run `<ms>-<pid>`.
pub fn run_pid(s: &RunSummary) -> Option<u32> {
    s.id.rsplit('-').next()?.parse().ok()
}

/// Whether the process of a run (`<ms>-<pid>`) is still alive on this machine.
pub fn run_alive(s: &RunSummary) -> bool {
    s.status == "running" && run_pid(s).is_some_and(forge_cache::pid_alive)
}

/// What the status document needs from the plan and the store: the plan against the store
/// (each step cached or to run, and why), each step's dependencies, and the latest run.
pub struct StatusBase {
    name: String,
    steps: Vec<crate::executor::PlannedStep>,
    needs: Vec<Vec<String>>,
    pub run: Option<RunSummary>,
}

/// When a [`StatusBase`] must be recomputed: the pipeline file, the runs or a step's state
/// changed (a step finishing changes the store), or it is a second old (the store may change
/// under other commands: `gc`, `verify`).
#[derive(PartialEq, Eq, Clone)]
pub struct BaseKey {
    pipeline: Option<(std::time::SystemTime, u64)>,
    runs: Option<std::time::SystemTime>,
    changes: u64,
}

const BASE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

fn base_key(app: &super::App) -> BaseKey {
    let meta = std::fs::metadata(&app.pipeline).ok();
    BaseKey {
        pipeline: meta.and_then(|m| Some((m.modified().ok()?, m.len()))),
        runs: std::fs::metadata(app.store.join("runs"))
            .and_then(|m| m.modified())
            .ok(),
        changes: app.live.changes(),
    }
}

fn compute_base(app: &super::App) -> Result<StatusBase, Fail> {
    let plan = plan(app)?;
    let store = store(app)?;
    let steps = if let Some(s) = &store {
        dry_run(&plan, s, &ApplyOptions::default()).map_err(internal)?
    } else {
        // No store yet: plan against an empty one (everything runs).
        let tmp = tempfile::tempdir().map_err(internal)?;
        let s = Store::open(tmp.path().join("store")).map_err(internal)?;
        dry_run(&plan, &s, &ApplyOptions::default()).map_err(internal)?
    };
    let needs = steps
        .iter()
        .map(|p| {
            let idx = plan.steps.iter().position(|s| s.id == p.id).unwrap_or(0);
            plan.deps[idx]
                .iter()
                .map(|&d| plan.steps[d].id.clone())
                .collect()
        })
        .collect();
    let run = store
        .as_ref()
        .and_then(|s| latest_run(s, &plan.pipeline.name));
    Ok(StatusBase {
        name: plan.pipeline.name.clone(),
        steps,
        needs,
        run,
    })
}

/// The current [`StatusBase`], from the cache while nothing it depends on changed.
pub fn base(app: &super::App) -> Result<std::sync::Arc<StatusBase>, Fail> {
    let key = base_key(app);
    {
        let cache = app
            .status_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((k, at, b)) = cache.as_ref()
            && *k == key
            && at.elapsed() < BASE_TTL
        {
            return Ok(b.clone());
        }
    }
    let b = std::sync::Arc::new(compute_base(app)?);
    *app.status_cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((key, std::time::Instant::now(), b.clone()));
    Ok(b)
}

/// The status document, all phases or one.
fn status(app: &super::App, only_phase: Option<&str>) -> Result<Value, Fail> {
    let base = base(app)?;
    let (steps, run) = (&base.steps, &base.run);
    let live = run.as_ref().and_then(|r| app.live.run(&r.id));
    let running = run.as_ref().is_some_and(run_alive);
    let mut phases: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, p) in steps.iter().enumerate() {
        let phase = phase_of(&p.id).to_owned();
        if only_phase.is_some_and(|o| o != phase) {
            continue;
        }
        let step_live = live.as_ref().and_then(|l| l.steps.get(&p.id));
        let recorded = run
            .as_ref()
            .and_then(|r| r.steps.iter().find(|s| s.id == p.id))
            .map(|s| s.status.clone());
        let state = match step_live.map(|s| s.state.as_str()) {
            Some(s) if !s.is_empty() && (running || !matches!(s, "running" | "queued")) => {
                s.to_owned()
            }
            _ => recorded.unwrap_or_else(|| "pending".into()),
        };
        let needs = &base.needs[i];
        let doc = json!({
            "id": p.id,
            "phase": phase,
            "op": p.op,
            "plan": p.status,
            "reason": p.reason,
            "key": p.key,
            "state": state,
            "progress": step_live.and_then(|s| s.progress.clone()),
            "needs": needs,
        });
        match phases.iter_mut().find(|(n, _)| *n == phase) {
            Some((_, v)) => v.push(doc),
            None => phases.push((phase, vec![doc])),
        }
    }
    if only_phase.is_some() && phases.is_empty() {
        return Err(fail(
            StatusCode::NOT_FOUND,
            &format!("no phase `{}` in `{}`", only_phase.unwrap_or(""), base.name),
            "GET /api/pipeline/status lists the phases",
        ));
    }
    let phases: Vec<Value> = phases
        .into_iter()
        .map(|(name, steps)| {
            let states: Vec<&str> = steps.iter().filter_map(|s| s["state"].as_str()).collect();
            let state = if states.iter().any(|s| matches!(*s, "running" | "retrying")) {
                "running"
            } else if states.contains(&"failed") {
                "failed"
            } else if states.iter().all(|s| matches!(*s, "ran" | "cached")) {
                "complete"
            } else {
                "pending"
            };
            json!({ "name": name, "state": state, "steps": steps })
        })
        .collect();
    Ok(json!({
        "pipeline": base.name,
        "file": app.pipeline.display().to_string(),
        "running": running,
        "run": run.as_ref().map(|r| json!({
            "id": r.id, "status": if running || r.status != "running" { r.status.clone() } else { "interrupted".into() },
            "started_unix_ms": r.started_unix_ms, "finished_unix_ms": r.finished_unix_ms,
        })),
        "phases": phases,
        "alerts": live.map(|l| l.alerts).unwrap_or_default(),
        "next_seq": app.feed.next_seq(),
        "server_id": app.feed.server_id,
    }))
}

pub async fn pipeline_status(State(app): State<super::State>) -> Answer {
    blocking(move || status(&app, None).map(Json)).await
}

pub async fn phase_status(
    State(app): State<super::State>,
    UrlPath(phase): UrlPath<String>,
) -> Answer {
    blocking(move || status(&app, Some(&phase)).map(Json)).await
}

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<usize>,
    since: Option<u64>,
}

pub async fn runs(State(app): State<super::State>, Query(q): Query<Limit>) -> Answer {
    blocking(move || {
        let name = plan(&app)?.pipeline.name;
        let Some(store) = store(&app)? else {
            return Ok(Json(json!([])));
        };
        let mut runs: Vec<RunSummary> = store
            .runs()
            .map_err(internal)?
            .into_iter()
            .filter(|r| r.pipeline == name)
            .collect();
        runs.reverse();
        runs.truncate(q.limit.unwrap_or(100));
        Ok(Json(serde_json::to_value(runs).map_err(internal)?))
    })
    .await
}

/// The directory of run `id` when the store has that run (matched against `runs/`, so no
/// `..` or encoded path can reach anything else).
fn run_dir(app: &super::App, id: &str) -> Result<std::path::PathBuf, Fail> {
    let runs = app.store.join("runs");
    let known = std::fs::read_dir(&runs)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_str() == Some(id));
    if !known || id.starts_with('.') {
        return Err(fail(
            StatusCode::NOT_FOUND,
            &format!("no run `{id}` in the store"),
            "GET /api/runs lists them",
        ));
    }
    Ok(runs.join(id))
}

/// Lines `since..since+limit` of a run's `events.jsonl`, each with `seq` = its line number.
fn lines(path: &Path, since: u64, limit: usize) -> std::io::Result<Vec<Value>> {
    use std::io::BufRead;
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for (i, line) in f
        .lines()
        .enumerate()
        .skip(usize::try_from(since).unwrap_or(usize::MAX))
    {
        if out.len() >= limit {
            break;
        }
        if let Ok(mut v) = serde_json::from_str::<Value>(&line?) {
            v["seq"] = json!(i);
            out.push(v);
        }
    }
    Ok(out)
}

pub async fn run_events(
    State(app): State<super::State>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<Limit>,
) -> Answer {
    blocking(move || {
        let dir = run_dir(&app, &id)?;
        let evs = lines(
            &dir.join("events.jsonl"),
            q.since.unwrap_or(0),
            q.limit.unwrap_or(1000),
        )
        .map_err(internal)?;
        Ok(Json(json!({ "run": id, "events": evs })))
    })
    .await
}

/// A step of the plan by id, its latest result, and the metric series of the run that made it.
fn step_with_series(app: &super::App, id: &str) -> Result<(Value, Value), Fail> {
    let plan = plan(app)?;
    if !plan.steps.iter().any(|s| s.id == id) {
        let ids = plan.steps.iter().map(|s| s.id.as_str());
        let hint = crate::diag::did_you_mean(id, ids)
            .unwrap_or_else(|| "GET /api/pipeline/status lists the steps".into());
        return Err(fail(
            StatusCode::NOT_FOUND,
            &format!("no step `{id}` in `{}`", plan.pipeline.name),
            &hint,
        ));
    }
    let none = || {
        fail(
            StatusCode::NOT_FOUND,
            &format!("step `{id}` has no result yet"),
            "apply the pipeline (POST /api/pipeline/start)",
        )
    };
    let store = store(app)?.ok_or_else(none)?;
    let r = store
        .step_ref(&plan.pipeline.name, id)
        .map_err(internal)?
        .ok_or_else(none)?;
    let doc = crate::lookup::step_doc(&store, &r)
        .map_err(internal)?
        .ok_or_else(none)?;
    let mut series = serde_json::Map::new();
    if let Some(run) = doc["run_id"].as_str()
        && let Ok(dir) = run_dir(app, run)
    {
        for ev in lines(&dir.join("events.jsonl"), 0, usize::MAX).map_err(internal)? {
            if ev["event"] == "metric" && ev["step"] == id {
                let name = ev["name"].as_str().unwrap_or("").to_owned();
                let points = series.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = points.as_array_mut() {
                    a.push(json!([ev["at"], ev["value"]]));
                }
            }
        }
    }
    Ok((doc, Value::Object(series)))
}

pub async fn step(State(app): State<super::State>, UrlPath(id): UrlPath<String>) -> Answer {
    blocking(move || {
        let (mut doc, series) = step_with_series(&app, &id)?;
        doc["series"] = series;
        Ok(Json(doc))
    })
    .await
}

#[derive(Deserialize)]
pub struct Names {
    names: Option<String>,
}

pub async fn step_metrics(
    State(app): State<super::State>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<Names>,
) -> Answer {
    blocking(move || {
        let (_, series) = step_with_series(&app, &id)?;
        let pattern = match q.names.as_deref() {
            Some(g) => Some(glob::Pattern::new(g).map_err(|e| {
                fail(
                    StatusCode::BAD_REQUEST,
                    &format!("`names={g}` is not a glob: {e}"),
                    "e.g. `names=train/*`",
                )
            })?),
            None => None,
        };
        let kept: serde_json::Map<String, Value> = series
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| pattern.as_ref().is_none_or(|p| p.matches(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Json(json!({ "step": id, "series": kept })))
    })
    .await
}

/// The machine now (`/api/hardware/status`, `hardware:update`), with the time it was taken.
pub fn sample_hardware(app: &super::App) -> Value {
    let sample = app
        .hardware
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .sample();
    let mut v = serde_json::to_value(sample).unwrap_or_default();
    v["ts_unix_ms"] = json!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    );
    v
}

pub async fn hardware_status(State(app): State<super::State>) -> Answer {
    blocking(move || Ok(Json(sample_hardware(&app)))).await
}

/// `GET /api/events` (WebSocket): a `hello` with the server id and the next sequence number,
/// then every event from `since` (default: only new ones) as it arrives; a `reset` when `since`
/// is older than the server keeps.
pub async fn events_ws(
    State(app): State<super::State>,
    Query(q): Query<Limit>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| stream(app, socket, q.since))
}

async fn stream(app: super::State, mut socket: WebSocket, since: Option<u64>) {
    let mut changed = app.feed.subscribe();
    let mut cursor = since.unwrap_or_else(|| app.feed.next_seq());
    let hello = json!({
        "type": "hello",
        "server_id": app.feed.server_id,
        "next_seq": app.feed.next_seq(),
    });
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        match app.feed.since(cursor) {
            Ok(evs) => {
                for e in evs {
                    cursor = e.seq + 1;
                    if socket
                        .send(Message::Text(e.text.to_string().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(first) => {
                let reset = json!({ "type": "reset", "first_seq": first, "missed_from": cursor });
                if socket
                    .send(Message::Text(reset.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
                cursor = first;
                continue;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            msg = socket.recv() => match msg {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The latest result of step `id` of the plan, when there is a store and it has one.
fn latest_result(
    plan: &Plan,
    store: Option<&Store>,
    id: &str,
) -> Result<Option<forge_cache::ActionRecord>, Fail> {
    let Some(store) = store else {
        return Ok(None);
    };
    let Some(r) = store.step_ref(&plan.pipeline.name, id).map_err(internal)? else {
        return Ok(None);
    };
    store.get_action(&r.key).map_err(internal)
}

/// The steps of `phase` that run `op` (and have `param` = value, if given), or a 404 naming
/// what the view shows.
fn view_steps<'p>(
    plan: &'p Plan,
    phase: &str,
    op: &str,
    param: Option<(&str, &str)>,
    shows: &str,
) -> Result<Vec<&'p crate::plan::StepInstance>, Fail> {
    let steps: Vec<&crate::plan::StepInstance> = plan
        .steps
        .iter()
        .filter(|s| phase_of(&s.id) == phase && s.op.name() == op)
        .filter(|s| param.is_none_or(|(k, v)| s.params.value()[k] == v))
        .collect();
    if steps.is_empty() {
        return Err(fail(
            StatusCode::NOT_FOUND,
            &format!(
                "`{}` has no `{op}` step in a phase `{phase}`",
                plan.pipeline.name
            ),
            &format!("this view shows {shows}"),
        ));
    }
    Ok(steps)
}

/// A file of one output of a result, parsed as JSON (read-only view of the store's copy).
fn output_json(
    store: &Store,
    rec: &forge_cache::ActionRecord,
    output: &str,
    file: &str,
) -> Result<Option<Value>, Fail> {
    let Some(d) = rec.outputs.get(output) else {
        return Ok(None);
    };
    let dir = store.checkout(d).map_err(internal)?;
    match std::fs::read(dir.join(file)) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(internal(e)),
    }
}

/// The checks of a phase's `validate` steps as they were last measured, each with the value of
/// its metric for every input (so a spread check shows the models it spreads over).
fn checks_view(app: &super::App, phase: &str) -> Result<Value, Fail> {
    let plan = plan(app)?;
    let steps = view_steps(
        &plan,
        phase,
        "validate",
        None,
        "a phase's checks (the tiny pipeline's `cognate.diversity`)",
    )?;
    let store = store(app)?;
    let mut out = Vec::new();
    for s in steps {
        let rec = latest_result(&plan, store.as_ref(), &s.id)?;
        let report = match (&store, &rec) {
            (Some(st), Some(r)) => output_json(st, r, "report", "report.json")?,
            _ => None,
        };
        // Every input's recorded metrics, by the input's step id.
        let mut inputs: Vec<(String, serde_json::Map<String, Value>)> = Vec::new();
        for up in s.inputs.values().flatten() {
            let id = &plan.steps[up.step].id;
            let metrics = latest_result(&plan, store.as_ref(), id)?
                .map(|r| r.metrics)
                .unwrap_or_default();
            inputs.push((id.clone(), metrics));
        }
        let checks: Vec<Value> = s.params.value()["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let metric = c["metric"].as_str().unwrap_or("");
                let per_input: serde_json::Map<String, Value> = inputs
                    .iter()
                    .filter_map(|(id, m)| Some((id.clone(), m.get(metric)?.clone())))
                    .collect();
                let measured: Vec<&Value> = report
                    .as_ref()
                    .and_then(|r| r["checks"].as_array())
                    .into_iter()
                    .flatten()
                    .filter(|r| r["metric"] == metric)
                    .collect();
                json!({
                    "metric": metric, "op": c["op"], "threshold": c["value"],
                    "severity": c.get("severity").cloned().unwrap_or(json!("error")),
                    "aggregate": c.get("aggregate").cloned().unwrap_or(json!("each")),
                    "measured": measured, "per_input": per_input,
                })
            })
            .collect();
        out.push(json!({
            "step": s.id,
            "ran": rec.is_some(),
            "passed": report.as_ref().map(|r| r["passed"].clone()),
            "checks": checks,
        }));
    }
    Ok(json!({ "phase": phase, "validations": out }))
}

pub async fn cognate_diversity(State(app): State<super::State>) -> Answer {
    blocking(move || checks_view(&app, "cognate").map(Json)).await
}

pub async fn phase_checks(
    State(app): State<super::State>,
    UrlPath(phase): UrlPath<String>,
) -> Answer {
    blocking(move || checks_view(&app, &phase).map(Json)).await
}

/// The evolution of each `merge` step of phase `evomerge` that ran with `strategy: evolve`:
/// per generation its best/mean/worst fitness, every candidate (kind, recipe with its parents,
/// fitness), the stop reason and the champion's lineage — from the step's own
/// `evolution_log.json` and `lineage.json`.
fn population(app: &super::App) -> Result<Value, Fail> {
    let plan = plan(app)?;
    let merges = view_steps(
        &plan,
        "evomerge",
        "merge",
        None,
        "an EvoMerge evolution (`strategy: evolve`)",
    )?;
    let store = store(app)?;
    let mut out = Vec::new();
    for s in merges {
        let rec = latest_result(&plan, store.as_ref(), &s.id)?;
        let (log, lineage) = match (&store, &rec) {
            (Some(st), Some(r)) => (
                output_json(st, r, "model", "evolution_log.json")?,
                output_json(st, r, "model", "lineage.json")?,
            ),
            _ => (None, None),
        };
        // The input models in the order recipes index them.
        let models: Vec<&str> = s
            .inputs
            .get("models")
            .into_iter()
            .flatten()
            .map(|u| plan.steps[u.step].id.as_str())
            .collect();
        out.push(json!({
            "step": s.id,
            "ran": rec.is_some(),
            "models": models,
            "improvement_over_parents": rec.as_ref().and_then(|r| r.metrics.get("evolution/improvement_over_parents").cloned()),
            "parents_avg_fitness": rec.as_ref().and_then(|r| r.metrics.get("parents/avg_fitness").cloned()),
            "generations": log.as_ref().map(|l| l["generations"].clone()),
            "candidates": log.as_ref().map(|l| l["candidates"].clone()),
            "stop_reason": log.as_ref().map(|l| l["stop_reason"].clone()),
            "lineage": lineage,
        }));
    }
    Ok(json!({ "phase": "evomerge", "evolutions": out }))
}

pub async fn evomerge_population(State(app): State<super::State>) -> Answer {
    blocking(move || population(&app).map(Json)).await
}

/// Quiet-STaR's anti-theater checks over training: for each `train` step of phase `quietstar`
/// with `objective: quiet-star`, every `anti_theater/*` series it logged (measured every
/// `check_every` steps on validation prompts) and its final values.
fn anti_theater(app: &super::App) -> Result<Value, Fail> {
    let plan = plan(app)?;
    let steps = view_steps(
        &plan,
        "quietstar",
        "train",
        Some(("objective", "quiet-star")),
        "Quiet-STaR training (`objective: quiet-star`)",
    )?;
    let mut out = Vec::new();
    for s in steps {
        let Ok((doc, series)) = step_with_series(app, &s.id) else {
            out.push(json!({ "step": s.id, "ran": false }));
            continue;
        };
        let keep = |m: &serde_json::Map<String, Value>| -> serde_json::Map<String, Value> {
            m.iter()
                .filter(|(k, _)| k.starts_with("anti_theater/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        out.push(json!({
            "step": s.id,
            "ran": true,
            "series": keep(series.as_object().unwrap_or(&serde_json::Map::new())),
            "final": doc["metrics"].as_object().map(keep),
        }));
    }
    Ok(json!({ "phase": "quietstar", "trainings": out }))
}

pub async fn quietstar_anti_theater(State(app): State<super::State>) -> Answer {
    blocking(move || anti_theater(&app).map(Json)).await
}

#[derive(Deserialize)]
pub struct TensorQuery {
    tensor: Option<String>,
}

/// Cells of at most 32 × 32 over a ternary matrix (`[out, in]`): each the share of zeros and
/// the mean weight sign in its block.
fn heatmap(p: &forge_ops::quant::packed::PackedTernary) -> Value {
    let side = 32usize;
    let (rows, cols) = (p.rows, p.cols);
    let (cr, cc) = (rows.min(side).max(1), cols.min(side).max(1));
    let mut zeros = vec![vec![0f64; cc]; cr];
    let mut sign = vec![vec![0f64; cc]; cr];
    let mut count = vec![vec![0f64; cc]; cr];
    for r in 0..rows {
        for c in 0..cols {
            let (i, j) = (r * cr / rows, c * cc / cols);
            let v = p.get(r, c);
            count[i][j] += 1.0;
            zeros[i][j] += f64::from(u8::from(v == 0));
            sign[i][j] += f64::from(v);
        }
    }
    let div = |m: Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        m.into_iter()
            .zip(&count)
            .map(|(row, n)| {
                row.into_iter()
                    .zip(n)
                    .map(|(x, n)| if *n > 0.0 { x / n } else { 0.0 })
                    .collect()
            })
            .collect()
    };
    json!({ "rows": rows, "cols": cols, "cell_rows": cr, "cell_cols": cc, "zeros": div(zeros), "mean_sign": div(sign) })
}

/// BitNet's result per tensor — precision, parameters, the ternary split (−1/0/+1) and
/// sparsity — and a down-sampled heatmap of one ternary matrix (`?tensor=`, default the
/// largest), read from the `quantize` step's packed model file.
fn sparsity(app: &super::App, tensor: Option<&str>) -> Result<Value, Fail> {
    use forge_ops::quant::model::{QuantizedModel, Stored};
    let plan = plan(app)?;
    let steps = view_steps(
        &plan,
        "bitnet",
        "quantize",
        None,
        "a BitNet `quantize` step",
    )?;
    let store = store(app)?;
    let mut out = Vec::new();
    for s in steps {
        let rec = latest_result(&plan, store.as_ref(), &s.id)?;
        let (Some(st), Some(rec)) = (&store, rec) else {
            out.push(json!({ "step": s.id, "ran": false }));
            continue;
        };
        let Some(d) = rec.outputs.get("model") else {
            continue;
        };
        let dir = st.checkout(d).map_err(internal)?;
        let model = QuantizedModel::from_file(&dir.join("model.safetensors")).map_err(internal)?;
        let mut tensors = Vec::new();
        for (name, t) in &model.tensors {
            let (precision, split) = match t {
                Stored::Ternary { packed, .. } => {
                    let v = packed.unpack();
                    let count = |x: i8| v.iter().filter(|&&y| y == x).count();
                    (
                        "ternary",
                        json!({ "minus": count(-1), "zero": count(0), "plus": count(1) }),
                    )
                }
                Stored::F16 { .. } => ("f16", Value::Null),
                Stored::Int8 { .. } => ("int8", Value::Null),
                Stored::F32(_) => ("f32", Value::Null),
            };
            let n = t.numel();
            tensors.push(json!({
                "name": name, "shape": t.shape(), "precision": precision, "params": n,
                "stored_bytes": t.stored_bytes(), "split": split,
                "sparsity": if t.is_ternary() && n > 0 { json!(t.zeros() as f64 / n as f64) } else { Value::Null },
            }));
        }
        let chosen = match tensor {
            Some(name) => match model.tensors.get(name) {
                Some(Stored::Ternary { packed, .. }) => Some((name.to_owned(), packed)),
                _ => {
                    return Err(fail(
                        StatusCode::NOT_FOUND,
                        &format!("`{name}` is not a ternary tensor of {}", s.id),
                        "the `tensors` list names them (precision `ternary`)",
                    ));
                }
            },
            None => model
                .tensors
                .iter()
                .filter_map(|(n, t)| match t {
                    Stored::Ternary { packed, .. } => Some((n.clone(), packed)),
                    _ => None,
                })
                .max_by_key(|(_, p)| p.rows * p.cols),
        };
        let layers: serde_json::Map<String, Value> = rec
            .metrics
            .iter()
            .filter(|(k, _)| k.starts_with("compression/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.push(json!({
            "step": s.id,
            "ran": true,
            "tensors": tensors,
            "compression": layers,
            "heatmap": chosen.map(|(n, p)| { let mut h = heatmap(p); h["tensor"] = json!(n); h }),
        }));
    }
    Ok(json!({ "phase": "bitnet", "quantizations": out }))
}

pub async fn bitnet_sparsity(
    State(app): State<super::State>,
    Query(q): Query<TensorQuery>,
) -> Answer {
    blocking(move || sparsity(&app, q.tensor.as_deref()).map(Json)).await
}
