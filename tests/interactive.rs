//! Long-running behaviour: Ctrl-C stops a run cleanly (a long tokenizer step within a second)
//! and the next apply resumes; `--watch`
//! re-applies when an input file changes. Also snapshots of the human-readable plan and run output.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Project, stderr, steps_with};

fn sigint(child: &std::process::Child) {
    // SAFETY: signalling our own child.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
}

#[test]
fn ctrl_c_cancels_cleanly_with_exit_130_and_the_next_apply_resumes() {
    let p = Project::new();
    // The step keeps its counter the way a resumable step must: written aside, then renamed, so
    // a kill between the shell's truncate and its write cannot leave an empty counter behind.
    p.write(
        "slow.yaml",
        r#"
version: 1
name: slow
phases:
  p:
    steps:
      s:
        op: exec
        with:
          run: "i=$(cat $FORGE_WORK_DIR/i 2>/dev/null || echo 0); while [ $i -lt 40 ]; do i=$((i+1)); echo $i > $FORGE_WORK_DIR/i.new; mv $FORGE_WORK_DIR/i.new $FORGE_WORK_DIR/i; sleep 0.05; done; echo $i > $FORGE_OUTPUT/n"
"#,
    );
    let child = p
        .cmd(&["apply", "slow.yaml"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_dir(p.store().join("work")).is_ok_and(|mut d| d.next().is_some()) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(400));
    sigint(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Cancelled p.s: interrupted (Ctrl-C)"), "{err}");
    let evs = p.apply_ok("slow.yaml", &[]);
    assert_eq!(steps_with(&evs, "finished"), ["p.s"]);
    p.run(&["export", "p.s", "exp"]);
    assert_eq!(
        std::fs::read_to_string(p.path().join("exp/out/n")).unwrap(),
        "40\n"
    );
}

/// Run `apply` with JSON events on stdout; once an event of `step` whose `unit` (progress) or
/// `event` contains `when` appears, send SIGINT. Returns the time from the signal to the exit,
/// the exit code and the events after the signal.
fn interrupt_at(
    p: &Project,
    pipeline: &str,
    step: &str,
    when: &str,
) -> (Duration, Option<i32>, Vec<serde_json::Value>) {
    let mut child = p
        .cmd(&["--log-format", "json", "apply", pipeline])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut signalled = None;
    let mut after = Vec::new();
    for l in lines.by_ref() {
        let ev: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
        if signalled.is_some() {
            after.push(ev);
            continue;
        }
        let unit = ev["unit"].as_str().unwrap_or("");
        let kind = ev["event"].as_str().unwrap_or("");
        if ev["step"] == step && (unit.contains(when) || kind == when) {
            sigint(&child);
            signalled = Some(Instant::now());
        }
    }
    let status = child.wait().unwrap();
    let signalled = signalled.unwrap_or_else(|| panic!("no `{when}` event from {step}"));
    (signalled.elapsed(), status.code(), after)
}

#[test]
fn ctrl_c_stops_a_long_tokenizer_step_within_a_second_in_either_phase() {
    // 100,000 records and 16,384 tokens: a few seconds of counting words, then of learning merges.
    let p = Project::new();
    p.write(
        "tk.yaml",
        r#"
version: 1
name: tk
phases:
  data:
    steps:
      corpus: { op: download, with: { source: "builtin:mixed", samples: 100000 } }
      tokenizer: { op: tokenizer, inputs: { data: corpus }, with: { vocab_size: 16384 } }
"#,
    );
    for phase in ["records counted", "learning merges"] {
        let (took, code, after) = interrupt_at(&p, "tk.yaml", "data.tokenizer", phase);
        eprintln!("Ctrl-C while {phase}: exited {took:?} after the signal");
        assert_eq!(code, Some(130), "{after:?}");
        assert_eq!(
            steps_with(&after, "cancelled"),
            ["data.tokenizer"],
            "{after:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "Ctrl-C while {phase}: {took:?} from the signal to the exit"
        );
    }
    // Nothing half-made was kept: the next apply trains the tokenizer in full.
    let evs = p.apply_ok("tk.yaml", &[]);
    assert_eq!(steps_with(&evs, "finished"), ["data.tokenizer"]);
    let done = evs
        .iter()
        .rfind(|e| e["unit"] == "records counted")
        .unwrap();
    assert_eq!(done["done"], done["total"]);
}

#[test]
fn watch_reapplies_when_a_file_input_changes() {
    let p = Project::new();
    p.write("data/in.txt", "one\n");
    p.write(
        "w.yaml",
        "version: 1\nname: w\nphases:\n  p:\n    steps:\n      d: { op: download, with: { source: \"file:data/in.txt\" } }\n      n: { op: exec, inputs: { d: d }, with: { run: \"wc -l < $FORGE_INPUT_D/in.txt > $FORGE_OUTPUT/n\" } }\n",
    );
    let mut child = p
        .cmd(&["apply", "--watch", "w.yaml"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut wait_for = |needle: &str| {
        for l in lines.by_ref() {
            let l = l.unwrap();
            if l.contains(needle) {
                return;
            }
        }
        panic!("stream ended before `{needle}`");
    };
    wait_for("Watching");
    std::thread::sleep(Duration::from_millis(300));
    p.write("data/in.txt", "one\ntwo\n");
    wait_for("Changed");
    wait_for("Watching");
    sigint(&child);
    assert!(child.wait().unwrap().code().is_some());
    p.run(&["export", "p.n", "exp"]);
    assert_eq!(
        std::fs::read_to_string(p.path().join("exp/out/n"))
            .unwrap()
            .trim(),
        "2"
    );
}

/// Replace what varies between runs (digests, times, temp paths) with fixed tokens.
fn redact(s: &str) -> String {
    let mut out = String::new();
    for word in s.split_inclusive(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        let core = word.trim_end_matches(|c: char| c.is_whitespace() || c == '(' || c == ')');
        let rest = &word[core.len()..];
        let is_hex = core.len() >= 12 && core.chars().all(|c| c.is_ascii_hexdigit());
        let is_time = core.ends_with("ms")
            && core[..core.len() - 2].chars().all(|c| c.is_ascii_digit())
            || core.ends_with('s') && core[..core.len() - 1].parse::<f64>().is_ok();
        if is_hex {
            out.push_str("[HASH]");
        } else if is_time {
            out.push_str("[TIME]");
        } else {
            out.push_str(core);
        }
        out.push_str(rest);
    }
    out
}

#[test]
fn human_output_snapshots() {
    let p = Project::new();
    p.write(
        "s.yaml",
        "version: 1\nname: snap\nvars: { n: 3 }\nphases:\n  p:\n    steps:\n      a: { op: exec, with: { run: \"seq ${vars.n} > $FORGE_OUTPUT/s\" } }\n      b: { op: exec, inputs: { x: a }, with: { run: \"wc -l < $FORGE_INPUT_X/s > $FORGE_OUTPUT/c\" } }\n",
    );
    let plan = p.run(&["plan", "s.yaml"]);
    insta::assert_snapshot!("plan_fresh", redact(&String::from_utf8_lossy(&plan.stdout)));
    // (No disk warnings: they depend on this machine's free space.)
    let run = p.run(&["apply", "s.yaml", "--jobs", "1", "--disk-warn", "0"]);
    assert!(run.status.success());
    insta::assert_snapshot!("apply_fresh", redact(&stderr(&run)));
    let again = p.run(&["apply", "s.yaml", "--disk-warn", "0"]);
    insta::assert_snapshot!("apply_cached", redact(&stderr(&again)));
    p.edit("s.yaml", "n: 3", "n: 4");
    let plan = p.run(&["plan", "s.yaml"]);
    insta::assert_snapshot!(
        "plan_changed",
        redact(&String::from_utf8_lossy(&plan.stdout))
    );
}
