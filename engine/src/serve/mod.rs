//! `forge serve`: an HTTP server (axum on tokio) over one store — REST for the pipeline's state,
//! runs, steps and hardware, start/pause/resume of `forge apply`, a WebSocket of live events —
//! and the dashboard page that shows them, guarded by a token and an Origin/Host check. It reads what forge already records (plans,
//! action records, runs' `events.jsonl`); it never keeps state of its own that a run depends on.
//!
//! Routes and their OpenAPI document come from one table ([`routes`]), so the document cannot
//! name a route the server does not answer, or miss one it does.

mod api;
mod auth;
mod control;
mod feed;
mod openapi;
mod page;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::routing::{MethodRouter, get, post};
use forge_ops::OpRegistry;

use crate::vars::VarOverride;

pub use feed::{Feed, Live, to_seed_event};

/// How a route is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Reads: a token only when the server listens beyond this machine.
    Read,
    /// Changes something (or streams events): always a token.
    Token,
}

/// One documented route.
pub struct Route {
    pub method: &'static str,
    /// In axum's and OpenAPI's syntax (`/api/steps/{id}`).
    pub path: &'static str,
    pub summary: &'static str,
    pub guard: Guard,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
}

/// Everything a handler needs.
pub struct App {
    pub store: PathBuf,
    /// The pipeline file the server shows and `start` applies.
    pub pipeline: PathBuf,
    pub vars: Vec<VarOverride>,
    pub registry: OpRegistry,
    pub token: String,
    /// Whether the server listens on a loopback address only.
    pub loopback: bool,
    pub port: u16,
    pub feed: Arc<Feed>,
    pub live: Arc<Live>,
    pub control: control::Control,
    pub hardware: std::sync::Mutex<crate::hardware::Sampler>,
    /// Each route's guard, from the route table.
    pub guards: auth::Guards,
    /// The plan against the store, kept while nothing it depends on changes.
    pub status_cache:
        std::sync::Mutex<Option<(api::BaseKey, std::time::Instant, Arc<api::StatusBase>)>>,
}

pub type State = Arc<App>;

/// Every route with its documentation and handler.
pub fn routes() -> Vec<(Route, MethodRouter<State>)> {
    let r = |method, path, summary, guard, query| Route {
        method,
        path,
        summary,
        guard,
        query,
    };
    use Guard::{Read, Token};
    vec![
        (
            r(
                "get",
                "/api/pipeline/status",
                "The pipeline's phases and steps (cached or to run, and why), the latest run, each running step's progress, and recent alerts.",
                Read,
                &[],
            ),
            get(api::pipeline_status),
        ),
        (
            r(
                "get",
                "/api/phases/{phase}/status",
                "One phase's steps, as in the pipeline status.",
                Read,
                &[],
            ),
            get(api::phase_status),
        ),
        (
            r(
                "get",
                "/api/phases/{phase}/checks",
                "A phase's checks (its `validate` steps) as last measured: each threshold, the measured value, and every input model's own value (Phase 3: the per-strategy baking accuracies).",
                Read,
                &[],
            ),
            get(api::phase_checks),
        ),
        (
            r(
                "get",
                "/api/phases/cognate/diversity",
                "Phase 1's checks as last measured (the seed's diversity gates): each threshold, the measured value, and every model's own value.",
                Read,
                &[],
            ),
            get(api::cognate_diversity),
        ),
        (
            r(
                "get",
                "/api/phases/evomerge/population",
                "The evolution per generation (best/mean/worst fitness), every candidate with its recipe and fitness, the stop reason and the champion's lineage.",
                Read,
                &[],
            ),
            get(api::evomerge_population),
        ),
        (
            r(
                "get",
                "/api/phases/quietstar/anti-theater",
                "Quiet-STaR's anti-theater checks over training (divergence, ablation, correlation, …) as logged, and their final values.",
                Read,
                &[],
            ),
            get(api::quietstar_anti_theater),
        ),
        (
            r(
                "get",
                "/api/phases/bitnet/sparsity",
                "BitNet per tensor: precision, parameters, the −1/0/+1 split and sparsity, the per-layer compression metrics, and a heatmap (at most 32 × 32 cells) of one ternary matrix.",
                Read,
                &[(
                    "tensor",
                    "the ternary tensor for the heatmap (default: the largest)",
                )],
            ),
            get(api::bitnet_sparsity),
        ),
        (
            r(
                "get",
                "/api/runs",
                "The store's runs of this pipeline, newest first.",
                Read,
                &[("limit", "at most this many (default 100)")],
            ),
            get(api::runs),
        ),
        (
            r(
                "get",
                "/api/runs/{id}/events",
                "A run's events as recorded (`events.jsonl`), each with its line number as `seq`.",
                Read,
                &[
                    ("since", "first line to return (default 0)"),
                    ("limit", "at most this many (default 1000)"),
                ],
            ),
            get(api::run_events),
        ),
        (
            r(
                "get",
                "/api/steps/{id}",
                "A step's latest result (key, outputs, metrics) and the series it logged.",
                Read,
                &[],
            ),
            get(api::step),
        ),
        (
            r(
                "get",
                "/api/steps/{id}/metrics",
                "The time series a step logged while it ran: name → [[at, value], …].",
                Read,
                &[("names", "a glob over metric names (`train/*`)")],
            ),
            get(api::step_metrics),
        ),
        (
            r(
                "get",
                "/api/hardware/status",
                "CPU, memory, load and free disk on the store's filesystem, sampled now.",
                Read,
                &[],
            ),
            get(api::hardware_status),
        ),
        (
            r(
                "post",
                "/api/pipeline/start",
                "Start `forge apply` on the pipeline (body: `{only, force, vars}`, all optional).",
                Token,
                &[],
            ),
            post(control::start),
        ),
        (
            r(
                "post",
                "/api/pipeline/pause",
                "Stop the running apply cleanly, as Ctrl-C does: running steps keep their checkpoints.",
                Token,
                &[],
            ),
            post(control::pause),
        ),
        (
            r(
                "post",
                "/api/pipeline/resume",
                "Apply again: unfinished steps resume from their checkpoints (body as for start).",
                Token,
                &[],
            ),
            post(control::resume),
        ),
        (
            r(
                "get",
                "/api/events",
                "WebSocket of live events: phase:progress, phase:metric, phase:alert, phase:complete, hardware:update, each with a `seq`; reconnect with `since` to get what was missed.",
                Token,
                &[("since", "the first sequence number wanted")],
            ),
            get(api::events_ws),
        ),
        (
            r("get", "/api/openapi.json", "This document.", Read, &[]),
            get(openapi::document),
        ),
    ]
}

fn router(app: State) -> Router {
    let mut router = Router::new();
    for (route, handler) in routes() {
        router = router.route(route.path, handler);
    }
    router
        .route("/", get(page::index))
        .route("/assets/{name}", get(page::asset))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::guard,
        ))
        .with_state(app)
}

/// `forge serve` options, as parsed by the CLI.
pub struct Options {
    pub store: PathBuf,
    pub pipeline: PathBuf,
    pub vars: Vec<VarOverride>,
    pub host: IpAddr,
    pub port: u16,
    pub token: Option<String>,
}

/// A random token: 24 bytes as hex.
fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(std::io::Error::other)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Serve until Ctrl-C. Prints the address (with the token, as Jupyter does) on stdout first.
pub fn serve(opts: Options, registry: OpRegistry) -> Result<(), String> {
    let token = match opts.token {
        Some(t) if t.len() >= 16 => t,
        Some(_) => return Err("--token must be at least 16 characters".into()),
        None => new_token().map_err(|e| format!("generating a token: {e}"))?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(opts.host, opts.port))
            .await
            .map_err(|e| format!("listening on {}:{}: {e}", opts.host, opts.port))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let server_id = new_token().map_err(|e| e.to_string())?[..12].to_owned();
        let feed = Arc::new(Feed::new(server_id, 100_000));
        let live = Arc::new(Live::default());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (runs, feed, live, stop) = (
                opts.store.join("runs"),
                feed.clone(),
                live.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || feed::tail_runs(&runs, &feed, &live, &stop));
        }
        let app = Arc::new(App {
            store: opts.store.clone(),
            pipeline: opts.pipeline.clone(),
            vars: opts.vars,
            registry,
            token: token.clone(),
            loopback: opts.host.is_loopback(),
            port: addr.port(),
            feed: feed.clone(),
            live,
            control: control::Control::default(),
            hardware: std::sync::Mutex::new(crate::hardware::Sampler::new(&opts.store)),
            status_cache: std::sync::Mutex::new(None),
            guards: auth::guards(),
        });
        // hardware:update every 10 s.
        {
            let app = app.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    let sample = api::sample_hardware(&app);
                    app.feed.push(serde_json::json!({
                        "type": "hardware:update",
                        "ts_unix_ms": sample["ts_unix_ms"],
                        "data": sample,
                    }));
                }
            });
        }
        let shown = if opts.host.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        println!(
            "Serving {} on http://{shown}:{}/?token={token}",
            opts.pipeline.display(),
            addr.port()
        );
        eprintln!(
            "  store {}; Ctrl-C to stop{}",
            opts.store.display(),
            if app.loopback {
                ""
            } else {
                "; every request needs the token (listening beyond this machine)"
            }
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let result = axum::serve(
            listener,
            router(app).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    })
}
