//! `forge serve` end to end: every route of its OpenAPI document answers, the token, Host and
//! Origin checks hold (no token → 401, another host without a token → 401, traversal → 404),
//! the WebSocket catches a reconnecting client up from a sequence number, and pause stops a
//! running apply cleanly so that resume finishes it from its checkpoint.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Project;
use serde_json::Value;

const PIPELINE: &str = r#"
version: 1
name: srv
vars: { word: hello }
phases:
  p:
    steps:
      a:
        op: exec
        with: { run: "echo ${vars.word} > $FORGE_OUTPUT/a.txt" }
      b:
        op: exec
        inputs: { up: a }
        with: { run: "tr a-z A-Z < $FORGE_INPUT_UP/a.txt > $FORGE_OUTPUT/b.txt" }
  q:
    steps:
      c:
        op: exec
        inputs: { up: p.b }
        with: { run: "cat $FORGE_INPUT_UP/b.txt > $FORGE_OUTPUT/c.txt" }
"#;

/// A long step that checkpoints: the first attempt notes itself in its work dir and sleeps; an
/// attempt that finds the note (a resume) finishes at once.
const LONG: &str = r#"
version: 1
name: long
phases:
  p:
    steps:
      slow:
        op: exec
        with: { run: "if [ -f $FORGE_WORK_DIR/begun ]; then echo resumed > $FORGE_OUTPUT/r; else touch $FORGE_WORK_DIR/begun; sleep 60; echo slept > $FORGE_OUTPUT/r; fi" }
"#;

struct Server {
    child: Child,
    base: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(p: &Project, pipeline: &str, extra: &[&str]) -> Server {
    let mut args = vec!["serve", pipeline, "--port", "0"];
    args.extend_from_slice(extra);
    let mut child = p
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let (base, token) = url.split_once("/?token=").unwrap();
    // Reached from here through 127.0.0.1 whatever the server listens on.
    let port = base.rsplit(':').next().unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        token: token.trim().to_owned(),
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = http().get(format!("{}{path}", s.base)).send().unwrap();
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

fn post(s: &Server, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = http()
        .post(format!("{}{path}", s.base))
        .body(body.to_owned());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().unwrap();
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

fn latest_run(p: &Project) -> String {
    let mut runs: Vec<String> = std::fs::read_dir(p.store().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    runs.sort();
    runs.pop().unwrap()
}

#[test]
fn every_documented_route_answers_and_nothing_else_does() {
    let p = Project::new();
    p.write("srv.yaml", PIPELINE);
    p.apply_ok("srv.yaml", &[]);
    let s = serve(&p, "srv.yaml", &[]);
    let (code, doc) = get(&s, "/api/openapi.json");
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let run = latest_run(&p);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{}", paths.len());
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            let filled = path
                .replace("{phase}", "p")
                .replace("{id}", if path.contains("/runs/") { &run } else { "p.a" });
            let mut req = http().request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{filled}", s.base),
            );
            if op.get("security").is_some() {
                req = req.bearer_auth(&s.token);
            }
            let r = req.send().unwrap();
            let code = r.status().as_u16();
            let body = r.text().unwrap_or_default();
            // Answered by its route: not the fallback's "no such route" (a route may still say
            // 404 about what it looks for: this pipeline has no `evomerge` phase).
            assert!(
                code != 405 && code < 500 && !body.contains("no such route"),
                "{method} {path} answered {code}: {body}"
            );
        }
    }
    // Routes the document does not name are not answered.
    for path in [
        "/api/nothing",
        "/api/steps",
        "/api/pipeline",
        "/api/runs/x/y/z",
    ] {
        assert_eq!(get(&s, path).0, 404, "{path}");
    }
    let r = http()
        .delete(format!("{}/api/runs", s.base))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // What the routes say, briefly: the plan, a step's result, a run's events.
    let (_, status) = get(&s, "/api/pipeline/status");
    let phases: Vec<&str> = status["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ph| ph["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["p", "q"]);
    assert_eq!(status["phases"][0]["state"], "complete");
    assert_eq!(status["phases"][1]["steps"][0]["needs"][0], "p.b");
    let (_, step) = get(&s, "/api/steps/p.b");
    assert_eq!(step["op"], "exec");
    assert!(step["outputs"]["out"]["digest"].is_string());
    let (_, evs) = get(&s, &format!("/api/runs/{run}/events?since=1&limit=2"));
    let seqs: Vec<u64> = evs["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(get(&s, "/api/phases/nope/status").0, 404);
    assert_eq!(get(&s, "/api/steps/p.nope").0, 404);
}

#[test]
fn tokens_hosts_origins_and_paths_are_checked() {
    let p = Project::new();
    p.write("srv.yaml", PIPELINE);
    p.apply_ok("srv.yaml", &[]);
    let run = latest_run(&p);
    let s = serve(&p, "srv.yaml", &[]);
    // Mutations and the WebSocket need the token, even on this machine.
    assert_eq!(post(&s, "/api/pipeline/pause", None, "").0, 401);
    assert_eq!(
        post(
            &s,
            "/api/pipeline/start",
            Some("wrong-token-wrong-token"),
            ""
        )
        .0,
        401
    );
    assert_eq!(post(&s, "/api/pipeline/pause", Some(&s.token), "").0, 409);
    let ws = tungstenite::connect(format!("{}/api/events", s.base.replace("http", "ws")));
    assert!(
        matches!(ws, Err(tungstenite::Error::Http(ref r)) if r.status() == 401),
        "{ws:?}"
    );
    assert_eq!(
        get(&s, "/api/runs").0,
        200,
        "reads need no token on loopback"
    );
    // Another Host (DNS rebinding) or a foreign Origin (another site's page) is refused.
    let host = http()
        .get(format!("{}/api/runs", s.base))
        .header("Host", "attacker.test")
        .send()
        .unwrap();
    assert_eq!(host.status().as_u16(), 403);
    let origin = |o: &str| {
        http()
            .post(format!("{}/api/pipeline/pause", s.base))
            .bearer_auth(&s.token)
            .header("Origin", o)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(origin("http://attacker.test"), 403);
    assert_eq!(origin(&s.base), 409, "the server's own origin passes");
    // Nothing outside the store, whatever the path says.
    for path in [
        "/api/runs/..%2F..%2F..%2Fetc%2Fpasswd/events".to_string(),
        "/api/runs/../events".into(),
        "/api/runs/%2e%2e/events".into(),
        "/api/runs/.%2E/events".into(),
        format!("/api/runs/{run}%2F..%2F..%2Fstore.lock/events"),
        "/api/steps/..%2F..%2Fetc%2Fpasswd".into(),
        "/api/steps/%2e%2e%2f%2e%2e%2fetc%2fpasswd/metrics".into(),
        "/%2e%2e/%2e%2e/etc/passwd".into(),
        "/../../etc/passwd".into(),
        "/api/openapi.json/../../../../etc/passwd".into(),
    ] {
        let r = http().get(format!("{}{path}", s.base)).send().unwrap();
        let code = r.status().as_u16();
        let text = r.text().unwrap();
        // (`/api/runs/../events` is `/api/events` once the client normalises it: the
        // WebSocket, which wants the token.)
        assert!([400, 401, 404].contains(&code), "{path}: {code} {text}");
        assert!(!text.contains("root:"), "{path}: {text}");
    }

    // Listening beyond this machine: every request needs the token.
    drop(s);
    let open = serve(&p, "srv.yaml", &["--host", "0.0.0.0"]);
    assert_eq!(get(&open, "/api/runs").0, 401);
    let with = http()
        .get(format!("{}/api/runs", open.base))
        .bearer_auth(&open.token)
        .send()
        .unwrap();
    assert_eq!(with.status().as_u16(), 200);
}

/// Read WebSocket messages until `done` says so; returns them (without `hello`).
fn read_until(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while !done(&out) {
        assert!(Instant::now() < deadline, "timed out; got {out:?}");
        let msg = ws.read().unwrap();
        if let tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] != "hello" {
                out.push(v);
            }
        }
    }
    out
}

#[test]
fn the_websocket_catches_a_client_up_from_a_sequence_number() {
    let p = Project::new();
    p.write("srv.yaml", PIPELINE);
    let s = serve(&p, "srv.yaml", &[]);
    let url = |since: u64| {
        let ws = s.base.replace("http", "ws");
        format!("{ws}/api/events?token={}&since={since}", s.token)
    };
    // Both from the first event the server has (a hardware sample may already be there).
    let (mut a, _) = tungstenite::connect(url(0)).unwrap();
    let (mut b, _) = tungstenite::connect(url(0)).unwrap();
    let finished = |evs: &[Value]| {
        evs.iter()
            .any(|e| e["type"] == "phase:complete" && e["data"]["run_finished"] == true)
    };
    // Started from the server, as the page does.
    let (code, body) = post(&s, "/api/pipeline/start", Some(&s.token), "");
    assert!(code == 202 || code == 200, "{code} {body}");
    let all = read_until(&mut a, finished);
    let complete: Vec<&str> = all
        .iter()
        .filter(|e| e["type"] == "phase:complete" && e["step"].is_string())
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(complete, ["p.a", "p.b", "q.c"]);
    let first = all.iter().find(|e| e["step"].is_string()).unwrap();
    assert_eq!(first["phase"], "p");
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // B reads two events, drops, and reconnects from the next: it gets exactly the rest.
    let first_two = read_until(&mut b, |e| e.len() >= 2);
    drop(b);
    let next = first_two[1]["seq"].as_u64().unwrap() + 1;
    let (mut b, _) = tungstenite::connect(url(next)).unwrap();
    let rest = read_until(&mut b, finished);
    let joined: Vec<&Value> = first_two.iter().chain(&rest).collect();
    assert_eq!(joined, all.iter().collect::<Vec<_>>());
}

#[test]
fn pause_stops_a_running_apply_and_resume_finishes_it() {
    let p = Project::new();
    p.write("long.yaml", LONG);
    let s = serve(&p, "long.yaml", &[]);
    let (code, body) = post(&s, "/api/pipeline/start", Some(&s.token), "");
    assert_eq!(code, 202, "{body}");
    let running = |s: &Server| get(s, "/api/pipeline/status").1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(&s)["phases"][0]["steps"][0]["state"] != "running" {
        assert!(Instant::now() < deadline, "{}", running(&s));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(running(&s)["running"], true);
    assert_eq!(
        post(&s, "/api/pipeline/start", Some(&s.token), "").0,
        409,
        "one apply at a time"
    );
    let (code, body) = post(&s, "/api/pipeline/pause", Some(&s.token), "");
    assert_eq!(code, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = running(&s);
        if st["running"] == false && st["run"]["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "{st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = post(&s, "/api/pipeline/resume", Some(&s.token), "");
    assert!(code == 202 || code == 200, "{code} {body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(&s)["run"]["status"] != "succeeded" {
        assert!(Instant::now() < deadline, "{}", running(&s));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = p.run(&["export", "p.slow", "out"]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/out/r")).unwrap(),
        "resumed\n",
        "the resumed step found its checkpoint"
    );
}
