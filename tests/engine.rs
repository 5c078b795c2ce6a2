//! End-to-end behaviour of `forge apply` on real pipelines of `exec`, `download` and `validate`
//! steps: caching, reasons, early cutoff, concurrency, failures, retries, resume after SIGKILL,
//! corruption, multi-process safety.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Project, events, sorted_steps_with, stderr, steps_with};

const CHAIN: &str = r#"
version: 1
name: chain
vars: { greeting: hello }
phases:
  p:
    steps:
      a:
        op: exec
        with: { run: "echo ${vars.greeting} > $FORGE_OUTPUT/a.txt" }
      b:
        op: exec
        inputs: { up: a }
        with: { run: "tr a-z A-Z < $FORGE_INPUT_UP/a.txt > $FORGE_OUTPUT/b.txt" }
      c:
        op: exec
        inputs: { up: b }
        with: { run: "cat $FORGE_INPUT_UP/b.txt $FORGE_INPUT_UP/b.txt > $FORGE_OUTPUT/c.txt" }
      lone:
        op: exec
        with: { run: "echo alone > $FORGE_OUTPUT/x" }
"#;

#[test]
fn second_apply_runs_nothing() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    let first = p.apply_ok("chain.yaml", &[]);
    assert_eq!(steps_with(&first, "started").len(), 4);
    let second = p.apply_ok("chain.yaml", &[]);
    assert!(steps_with(&second, "started").is_empty());
    assert_eq!(steps_with(&second, "cache-hit").len(), 4);
    let out = p.run(&["export", "p.c", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/out/c.txt")).unwrap(),
        "HELLO\nHELLO\n"
    );
}

#[test]
fn changed_value_reruns_exactly_that_step_and_dependents_and_plan_names_it() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    p.apply_ok("chain.yaml", &[]);
    p.write(
        "chain.yaml",
        &CHAIN.replace("greeting: hello", "greeting: howdy"),
    );
    let plan = p.run(&["plan", "chain.yaml"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains(
            r#"with.run: "echo hello > $FORGE_OUTPUT/a.txt" → "echo howdy > $FORGE_OUTPUT/a.txt""#
        ),
        "{text}"
    );
    assert!(text.contains("cached  p.lone"), "{text}");
    // A step whose own command changed too says so beside its rebuilt input.
    p.write(
        "chain.yaml",
        &CHAIN
            .replace("greeting: hello", "greeting: howdy")
            .replace("a-z A-Z", "a-y A-Y"),
    );
    let plan = p.run(&["plan", "chain.yaml"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    let b = text.split("p.b").nth(1).unwrap_or("");
    let b = &b[..b.find("p.c").unwrap_or(b.len())];
    assert!(b.contains("input from p.a will be rebuilt"), "{text}");
    assert!(b.contains("with.run: \"tr a-z A-Z"), "{text}");
    let c = text.split("run     p.c").nth(1).unwrap_or("");
    assert!(
        c.lines()
            .next()
            .unwrap_or("")
            .trim_end()
            .ends_with("input from p.b will be rebuilt"),
        "p.c itself did not change: {text}"
    );
    p.write(
        "chain.yaml",
        &CHAIN.replace("greeting: hello", "greeting: howdy"),
    );
    let evs = p.apply_ok("chain.yaml", &[]);
    assert_eq!(steps_with(&evs, "started"), ["p.a", "p.b", "p.c"]);
    assert_eq!(steps_with(&evs, "cache-hit"), ["p.lone"]);
}

/// `--var name=value` overrides a declared var for `plan` and `apply` (and a saved plan keeps
/// it); `plan` names the var as the reason for a re-run; an unknown name or a value of another
/// type is a located exit-2 error that writes nothing.
#[test]
fn var_overrides_plan_apply_and_explain_reruns() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    let plan = p.run(&["plan", "chain.yaml", "--var", "greeting=howdy"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(!p.store().exists(), "planning writes no store");
    let evs = p.apply_ok("chain.yaml", &["--var", "greeting=howdy"]);
    assert_eq!(steps_with(&evs, "started").len(), 4);
    let out = p.run(&["export", "p.c", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/out/c.txt")).unwrap(),
        "HOWDY\nHOWDY\n"
    );
    // Same override: nothing to do. Without it, the file's value: the var is the reason.
    let again = p.run(&["plan", "chain.yaml", "--var", "greeting=howdy"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("4 cached, 0 to run"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let back = p.run(&["plan", "chain.yaml"]);
    let text = String::from_utf8_lossy(&back.stdout);
    let a = text.split("run     p.a").nth(1).unwrap_or("");
    let a = &a[..a.find("p.b").unwrap_or(a.len())];
    assert!(a.contains(r#"var greeting: "howdy" → "hello""#), "{text}");
    assert!(a.contains("with.run: \"echo howdy"), "{text}");

    // Mistakes: exit 2, a located diagnostic with a hint, no run recorded.
    let runs = || std::fs::read_dir(p.store().join("runs")).unwrap().count();
    let before = runs();
    let unknown = p.run(&["apply", "chain.yaml", "--var", "greting=hi"]);
    assert_eq!(unknown.status.code(), Some(2));
    let mistyped = p.run(&["apply", "chain.yaml", "--var", "greeting=[hi, there]"]);
    assert_eq!(mistyped.status.code(), Some(2));
    let malformed = p.run(&["plan", "chain.yaml", "--var", "greeting"]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        stderr(&malformed).contains("is not `name=value`"),
        "{}",
        stderr(&malformed)
    );
    assert_eq!(runs(), before, "a refused --var records no run");
    insta::assert_snapshot!(
        "var_unknown_and_mistyped",
        format!("{}\n{}", stderr(&unknown), stderr(&mistyped))
    );

    // A saved plan keeps its overrides, and refuses new ones.
    let saved = p.run(&[
        "plan",
        "chain.yaml",
        "--var",
        "greeting=hey",
        "-o",
        "v.plan",
    ]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    let extra = p.run(&["apply", "v.plan", "--var", "greeting=yo"]);
    assert_eq!(extra.status.code(), Some(2));
    let evs = p.apply_ok("v.plan", &[]);
    assert_eq!(steps_with(&evs, "started"), ["p.a", "p.b", "p.c"]);
    assert!(p.run(&["export", "p.c", "out2"]).status.success());
    assert_eq!(
        std::fs::read_to_string(p.path().join("out2/out/c.txt")).unwrap(),
        "HEY\nHEY\n"
    );
}

/// `plan -o` then `apply PLANFILE` runs exactly the plan; a plan is refused (exit 2, nothing
/// run) once it is stale: applied already, the pipeline edited, or combined with --only.
#[test]
fn a_saved_plan_applies_once_and_is_refused_when_stale() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    let out = p.run(&["plan", "chain.yaml", "-o", "chain.plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!p.store().exists(), "planning writes no store");
    let evs = p.apply_ok("chain.plan", &[]);
    assert_eq!(steps_with(&evs, "started").len(), 4);
    let again = p.run(&["apply", "chain.plan"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("the saved plan is stale: step `p.a` was planned as run"),
        "{}",
        stderr(&again)
    );
    // A fresh plan applies; an edit after planning makes it stale.
    p.write(
        "chain.yaml",
        &CHAIN.replace("greeting: hello", "greeting: hi"),
    );
    assert!(
        p.run(&["plan", "chain.yaml", "-o", "chain.plan"])
            .status
            .success()
    );
    p.write(
        "chain.yaml",
        &CHAIN.replace("greeting: hello", "greeting: hey"),
    );
    let stale = p.run(&["apply", "chain.plan"]);
    assert_eq!(stale.status.code(), Some(2));
    assert!(
        stderr(&stale).contains("chain.yaml` changed"),
        "{}",
        stderr(&stale)
    );
    let only = p.run(&["apply", "chain.plan", "--only", "p.a"]);
    assert_eq!(only.status.code(), Some(2));
    let evs = p.apply_ok("chain.yaml", &[]);
    assert_eq!(
        steps_with(&evs, "started"),
        ["p.a", "p.b", "p.c"],
        "nothing ran before"
    );
}

#[test]
fn early_cutoff_stops_reruns_when_output_bytes_are_unchanged() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    p.apply_ok("chain.yaml", &[]);
    // A different command with the same output: `a` re-runs, `b` and `c` do not.
    p.write(
        "chain.yaml",
        &CHAIN.replace(
            "echo ${vars.greeting} > $FORGE_OUTPUT/a.txt",
            "printf '%s\\n' ${vars.greeting} > $FORGE_OUTPUT/a.txt",
        ),
    );
    let evs = p.apply_ok("chain.yaml", &[]);
    assert_eq!(steps_with(&evs, "started"), ["p.a"]);
    assert_eq!(
        sorted_steps_with(&evs, "cache-hit"),
        ["p.b", "p.c", "p.lone"]
    );
}

#[test]
fn independent_steps_overlap_in_time() {
    let p = Project::new();
    p.write(
        "par.yaml",
        r#"
version: 1
name: par
phases:
  p:
    steps:
      one: { op: exec, with: { run: "sleep 1; echo 1 > $FORGE_OUTPUT/x" } }
      two: { op: exec, with: { run: "sleep 1; echo 2 > $FORGE_OUTPUT/x" } }
"#,
    );
    let t = Instant::now();
    let evs = p.apply_ok("par.yaml", &["--jobs", "2"]);
    let at = |kind: &str, step: &str| {
        evs.iter()
            .find(|e| e["event"] == kind && e["step"] == step)
            .unwrap()["elapsed_ms"]
            .as_u64()
            .unwrap()
    };
    let (s1, s2, f1, f2) = (
        at("started", "p.one"),
        at("started", "p.two"),
        at("finished", "p.one"),
        at("finished", "p.two"),
    );
    assert!(
        s1.max(s2) < f1.min(f2),
        "steps did not overlap: started {s1},{s2} finished {f1},{f2}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "two 1 s steps took {:?}",
        t.elapsed()
    );
}

#[test]
fn fail_fast_by_default_and_keep_going_on_request() {
    let p = Project::new();
    p.write(
        "f.yaml",
        r#"
version: 1
name: f
phases:
  p:
    steps:
      bad: { op: exec, with: { run: "echo 'it broke' >&2; exit 3" } }
      after: { op: exec, inputs: { x: bad }, with: { run: "true" } }
      other: { op: exec, needs: slow, with: { run: "echo o > $FORGE_OUTPUT/o" } }
      slow: { op: exec, with: { run: "sleep 0.5; echo s > $FORGE_OUTPUT/s" } }
"#,
    );
    let out = p.run(&["--log-format", "json", "apply", "f.yaml", "--jobs", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let evs = events(&out);
    let failed = evs.iter().find(|e| e["event"] == "failed").unwrap();
    assert_eq!(failed["step"], "p.bad");
    assert!(failed["error"].as_str().unwrap().contains("status 3"));
    assert_eq!(failed["detail"], "it broke");
    assert!(steps_with(&evs, "skipped").contains(&"p.after".to_string()));
    assert!(!steps_with(&evs, "finished").contains(&"p.other".to_string()));

    let out = p.run(&[
        "--log-format",
        "json",
        "apply",
        "f.yaml",
        "--jobs",
        "2",
        "--keep-going",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let evs = events(&out);
    let done: Vec<String> = [steps_with(&evs, "finished"), steps_with(&evs, "cache-hit")].concat();
    assert!(
        done.contains(&"p.other".to_string()) && done.contains(&"p.slow".to_string()),
        "{done:?}"
    );
    assert_eq!(steps_with(&evs, "skipped"), ["p.after"]);
}

#[test]
fn transient_failures_retry_with_backoff_and_deterministic_ones_do_not() {
    let p = Project::new();
    p.write(
        "r.yaml",
        r#"
version: 1
name: r
phases:
  p:
    steps:
      flaky:
        op: exec
        retries: 3
        with: { run: "n=$(cat $FORGE_WORK_DIR/n 2>/dev/null || echo 0); echo $((n+1)) > $FORGE_WORK_DIR/n; [ $n -ge 2 ] || exit 75; echo ok > $FORGE_OUTPUT/r" }
      broken:
        op: exec
        retries: 3
        with: { run: "exit 1" }
"#,
    );
    let out = p.run(&["--log-format", "json", "apply", "r.yaml", "--keep-going"]);
    let evs = events(&out);
    assert_eq!(
        steps_with(&evs, "retrying")
            .iter()
            .filter(|s| *s == "p.flaky")
            .count(),
        2
    );
    assert!(steps_with(&evs, "finished").contains(&"p.flaky".to_string()));
    assert!(!steps_with(&evs, "retrying").contains(&"p.broken".to_string()));
    assert_eq!(steps_with(&evs, "failed"), ["p.broken"]);
}

#[test]
fn timeout_cancels_a_step() {
    let p = Project::new();
    p.write(
        "t.yaml",
        "version: 1\nname: t\nphases:\n  p:\n    steps:\n      s: { op: exec, timeout: 1s, with: { run: \"sleep 30\" } }\n",
    );
    let t = Instant::now();
    let out = p.run(&["--log-format", "json", "apply", "t.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(10));
    let evs = events(&out);
    let f = evs.iter().find(|e| e["event"] == "failed").unwrap();
    assert!(
        f["error"].as_str().unwrap().contains("timed out after 1s"),
        "{f}"
    );
}

#[test]
fn only_and_force_select_steps() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    let evs = p.apply_ok("chain.yaml", &["--only", "p.b"]);
    assert_eq!(steps_with(&evs, "started"), ["p.a", "p.b"]);
    let evs = p.apply_ok("chain.yaml", &["--force", "p.a"]);
    assert_eq!(sorted_steps_with(&evs, "started"), ["p.a", "p.c", "p.lone"]);
    assert_eq!(steps_with(&evs, "cache-hit"), ["p.b"]); // same bytes from a: early cutoff
    let out = p.run(&["apply", "chain.yaml", "--only", "p.nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--only `p.nope` matches no step"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dry_run_json_lists_every_step_with_key_status_and_reason() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    let out = p.run(&["apply", "--dry-run=json", "chain.yaml"]);
    assert!(out.status.success());
    assert!(!p.store().exists(), "a dry run must not create the store");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = doc["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[0]["id"], "p.a");
    assert_eq!(steps[0]["status"], "run");
    assert_eq!(steps[0]["reason"], "no previous result");
    assert_eq!(steps[0]["key"].as_str().unwrap().len(), 64);
    assert!(
        steps[1]["key"].is_null(),
        "a step whose input is not built yet has no key"
    );
    p.apply_ok("chain.yaml", &[]);
    let out = p.run(&["apply", "--dry-run=json", "chain.yaml"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cached")
    );
}

#[test]
fn corrupted_object_is_detected_by_verify_and_rebuilt_by_apply() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    p.apply_ok("chain.yaml", &[]);
    let show = p.run(&["show", "p.c", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let tree = doc["outputs"]["out"]["digest"].as_str().unwrap().to_owned();
    // Find the blob of c.txt through the tree manifest and corrupt it in place.
    let obj = |h: &str| p.store().join("objects").join(&h[..2]).join(&h[2..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(obj(&tree)).unwrap()).unwrap();
    let blob = manifest["entries"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = obj(&blob);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, "HELLO\nTAMPERED\n").unwrap();

    let v = p.run(&["verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        stderr(&v).contains(&format!("object {blob}")),
        "{}",
        stderr(&v)
    );
    let evs = p.apply_ok("chain.yaml", &[]);
    assert_eq!(steps_with(&evs, "started"), ["p.c"]);
    assert!(p.run(&["verify"]).status.success());
    p.run(&["export", "p.c", "exp"]);
    assert_eq!(
        std::fs::read_to_string(p.path().join("exp/out/c.txt")).unwrap(),
        "HELLO\nHELLO\n"
    );
}

#[test]
fn four_concurrent_applies_run_each_step_once() {
    let p = Project::new();
    let counter = p.path().join("counter.txt");
    p.write(
        "conc.yaml",
        r#"
version: 1
name: conc
phases:
  p:
    steps:
      a: { op: exec, with: { env: [COUNTER], run: "echo $FORGE_STEP >> $COUNTER; sleep 0.3; echo a > $FORGE_OUTPUT/a" } }
      b: { op: exec, with: { env: [COUNTER], run: "echo $FORGE_STEP >> $COUNTER; sleep 0.3; echo b > $FORGE_OUTPUT/b" } }
      c: { op: exec, inputs: { x: a, y: b }, with: { env: [COUNTER], run: "echo $FORGE_STEP >> $COUNTER; cat $FORGE_INPUT_X/a $FORGE_INPUT_Y/b > $FORGE_OUTPUT/c" } }
"#,
    );
    let children: Vec<_> = (0..4)
        .map(|_| {
            p.cmd(&["apply", "conc.yaml"])
                .env("COUNTER", &counter)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&counter).unwrap().lines() {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("p.a".into(), 1), ("p.b".into(), 1), ("p.c".into(), 1)])
    );
}

const RESUMABLE: &str = r"
version: 1
name: resumable
phases:
  p:
    steps:
      count:
        op: exec
        with:
          deps: [count.py]
          run: python3 count.py
";

/// A long step that checkpoints into FORGE_WORK_DIR; it notes in `resumed.log` (outside the
/// store) when it starts from a checkpoint.
const COUNT_PY: &str = r#"
import json, os, pathlib, time
work = pathlib.Path(os.environ["FORGE_WORK_DIR"])
state_file = work / "state.json"
state = json.loads(state_file.read_text()) if state_file.exists() else {"i": 0, "acc": 7}
if state["i"]:
    with open("resumed.log", "a") as f:
        f.write(f"{state['i']}\n")
while state["i"] < 60:
    state["i"] += 1
    state["acc"] = (state["acc"] * 31 + state["i"]) % 1000000007
    time.sleep(0.05)
    tmp = work / "state.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_file)
(pathlib.Path(os.environ["FORGE_OUTPUT"]) / "result.txt").write_text(f"{state['acc']}\n")
"#;

fn result_of(p: &Project) -> Vec<u8> {
    let out = p.run(&["export", "p.count", "exp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read(p.path().join("exp/out/result.txt")).unwrap()
}

#[test]
fn step_killed_with_sigkill_resumes_from_its_checkpoint_with_identical_bytes() {
    // Reference: uninterrupted.
    let whole = Project::new();
    whole.write("r.yaml", RESUMABLE);
    whole.write("count.py", COUNT_PY);
    whole.apply_ok("r.yaml", &[]);
    let expected = result_of(&whole);

    let p = Project::new();
    p.write("r.yaml", RESUMABLE);
    p.write("count.py", COUNT_PY);
    // Wait until the step has checkpointed a few times, then kill forge outright.
    let state = p.kill_when(
        &["apply", "r.yaml"],
        "scratch/state.json",
        Duration::from_secs(20),
        "step never checkpointed",
        |t| serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| v["i"].as_u64() >= Some(15)),
    );
    std::thread::sleep(Duration::from_millis(200));
    let at_kill: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(
        at_kill["i"].as_u64().unwrap() < 60,
        "the step finished before it was killed"
    );

    let evs = p.apply_ok("r.yaml", &[]);
    assert!(
        steps_with(&evs, "lock-reclaimed").contains(&"p.count".to_string()),
        "dead process's lock not reclaimed"
    );
    let resumed: u64 = std::fs::read_to_string(p.path().join("resumed.log"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(resumed >= 15, "resumed from {resumed}");
    assert_eq!(result_of(&p), expected);
}

#[test]
fn custom_op_example_resumes_through_step_context_checkpoints() {
    // `cargo test` builds the examples next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/custom_op");
    assert!(
        example.exists(),
        "example binary missing at {}",
        example.display()
    );
    let p = Project::new();
    let yaml = "version: 1\nname: hc\nphases:\n  w:\n    steps:\n      chain: { op: hash-chain, with: { seed: s, rounds: 150, checkpoint_every: 5, delay_ms: 10 } }\n";
    p.write("hc.yaml", yaml);
    let run = |args: &[&str]| {
        std::process::Command::new(&example)
            .args(args)
            .current_dir(p.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let mut child = std::process::Command::new(&example)
        .args(["apply", "hc.yaml"])
        .current_dir(p.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    p.wait_for_work_file(
        "checkpoint/state.json",
        Duration::from_secs(20),
        "the example op never checkpointed",
        |t| t.contains("\"round\":") && !t.contains("\"round\":5,"),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let out = run(&["--log-format", "json", "apply", "hc.yaml"]);
    assert!(out.status.success());
    let show: serde_json::Value =
        serde_json::from_slice(&run(&["show", "w.chain", "--json"]).stdout).unwrap();
    let resumed = show["metrics"]["chain/resumed_at_round"].as_u64().unwrap();
    assert!((10..150).contains(&resumed), "resumed at {resumed}");
    run(&["export", "w.chain", "exp"]);
    // The uninterrupted answer: blake3 applied 150 times to blake3("s").
    let mut d = *blake3::hash(b"s").as_bytes();
    for _ in 0..150 {
        d = *blake3::hash(&d).as_bytes();
    }
    let got = std::fs::read_to_string(p.path().join("exp/chain/result.txt")).unwrap();
    assert_eq!(got.trim(), blake3::Hash::from_bytes(d).to_hex().as_str());
}

#[test]
fn gc_keeps_recent_results() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    p.apply_ok("chain.yaml", &[]);
    p.write(
        "chain.yaml",
        &CHAIN.replace("greeting: hello", "greeting: bye"),
    );
    p.apply_ok("chain.yaml", &[]);
    let out = p.run(&["gc", "--keep-last", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("removed 1 runs, 3 results"),
        "{}",
        stderr(&out)
    );
    let evs = p.apply_ok("chain.yaml", &[]);
    assert!(
        steps_with(&evs, "started").is_empty(),
        "gc removed live results"
    );
    // Another pipeline's runs do not push this one's results out, unless asked to.
    p.write(
        "other.yaml",
        &CHAIN
            .replace("name: chain", "name: other")
            .replace("greeting: hello", "greeting: salut"),
    );
    p.apply_ok("other.yaml", &[]);
    p.apply_ok("other.yaml", &[]);
    let out = p.run(&["gc", "--keep-last", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = p.apply_ok("chain.yaml", &[]);
    assert!(
        steps_with(&evs, "started").is_empty(),
        "chain's results were collected"
    );
    // Across pipelines only the newest run (chain's, just now) stays: other's own steps rerun.
    let out = p.run(&["gc", "--keep-last", "1", "--all-pipelines"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = p.apply_ok("other.yaml", &[]);
    assert_eq!(steps_with(&evs, "started"), ["p.a", "p.b", "p.c"]);
}

#[test]
fn exit_codes_say_who_can_fix_a_failure() {
    let p = Project::new();
    p.write(
        "x.yaml",
        "version: 1\nname: x\nphases:\n  p:\n    steps:\n      s: { op: exec, with: { run: \"exit 3\" } }\n",
    );
    let out = p.run(&["--log-format", "json", "apply", "x.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing command is the user's to fix"
    );
    let f = events(&out)
        .into_iter()
        .find(|e| e["event"] == "failed")
        .unwrap();
    assert_eq!(f["tier"], "user");
    // A transient failure (EX_TEMPFAIL) with no retries left is the environment's.
    p.write(
        "t.yaml",
        "version: 1\nname: t\nphases:\n  p:\n    steps:\n      s: { op: exec, with: { run: \"exit 75\" } }\n",
    );
    let out = p.run(&["--log-format", "json", "apply", "t.yaml"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let f = events(&out)
        .into_iter()
        .find(|e| e["event"] == "failed")
        .unwrap();
    assert_eq!(f["tier"], "infra");
    assert!(f["hint"].as_str().unwrap().contains("again"), "{f}");
}

#[test]
fn a_step_seed_is_the_seed_of_its_key_and_its_op() {
    let p = Project::new();
    p.write(
        "s.yaml",
        r#"
version: 1
name: s
defaults: { seed: 5 }
phases:
  p:
    steps:
      plain: { op: exec, with: { run: "echo $FORGE_SEED > $FORGE_OUTPUT/seed" } }
      own:
        op: exec
        matrix: { v: [{ name: a, seed: 11 }, { name: b, seed: 12 }] }
        seed: "${matrix.v.seed}"
        with: { run: "echo $FORGE_SEED > $FORGE_OUTPUT/seed" }
"#,
    );
    p.apply_ok("s.yaml", &[]);
    for (step, want) in [("p.plain", "5"), ("p.own[v=a]", "11"), ("p.own[v=b]", "12")] {
        let out = p.run(&["show", step, "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let path = doc["outputs"]["out"]["path"].as_str().unwrap();
        let seed = std::fs::read_to_string(std::path::Path::new(path).join("seed")).unwrap();
        assert_eq!(seed.trim(), want, "{step}");
    }
    // The seed is in the key: changing it re-runs exactly that instance, and says so.
    p.edit("s.yaml", "seed: 12", "seed: 13");
    let out = p.run(&["plan", "s.yaml"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("seed: 12 → 13"), "{text}");
    assert_eq!(text.matches("  run ").count(), 1, "{text}");
}
