//! `--executor slurm` on a real Slurm cluster (the one-node cluster `.ci/start-slurm` starts):
//! every step runs as a batch job the controller knows, the outputs are the bytes a local apply
//! makes, a second apply submits nothing, a train job cancelled with `scancel` resumes from its
//! checkpoint to the same bytes, and Ctrl-C on the driver cancels its jobs.
//!
//! Without a cluster (`sinfo` fails) the tests say so and pass, unless `FORGE_REQUIRE_SLURM` is
//! set, as `.ci/run` sets it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Project, stderr, steps_with};

/// The cluster, one test at a time (a test that takes the node down must not kill another's
/// jobs); `None` when there is no cluster.
fn cluster() -> Option<std::sync::MutexGuard<'static, ()>> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let up = Command::new("sinfo")
        .arg("-h")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        assert!(
            std::env::var_os("FORGE_REQUIRE_SLURM").is_none(),
            "FORGE_REQUIRE_SLURM is set but no Slurm cluster answers `sinfo` (start one with .ci/start-slurm)"
        );
        eprintln!("skipped: no Slurm cluster answers `sinfo` (.ci/start-slurm starts one)");
        return None;
    }
    Some(
        ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

fn repo(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

/// `scontrol show job -o ID`: the controller's one-line record of a job.
fn scontrol(job: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", job])
        .output()
        .unwrap();
    assert!(out.status.success(), "scontrol does not know job {job}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Step id → its outputs' digests, from `finished` and `cache-hit`-free runs' events.
fn finished_outputs(evs: &[serde_json::Value]) -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "finished")
        .map(|e| (e["step"].as_str().unwrap().to_owned(), e["outputs"].clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn hello_runs_every_step_as_a_job_and_makes_the_local_bytes() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let hello = repo("pipelines/hello.yaml");
    let p = Project::new();
    let evs = p.apply_ok(&hello, &["--executor", "slurm"]);
    let ran = steps_with(&evs, "finished");
    assert_eq!(ran.len(), 3, "{evs:?}");
    let submitted: Vec<_> = evs.iter().filter(|e| e["event"] == "submitted").collect();
    assert_eq!(steps_with(&evs, "submitted"), ran, "one job per step");
    for e in &submitted {
        let job = e["job_id"].as_str().unwrap();
        let record = scontrol(job);
        let step = e["step"].as_str().unwrap();
        assert!(
            record.contains(&format!("JobName=forge:hello:{step} ")),
            "{record}"
        );
        assert!(record.contains("JobState=COMPLETED"), "{record}");
    }

    let local = Project::new();
    let local_evs = local.apply_ok(&hello, &[]);
    assert!(steps_with(&local_evs, "submitted").is_empty());
    assert_eq!(finished_outputs(&evs), finished_outputs(&local_evs));

    let again = p.apply_ok(&hello, &["--executor", "slurm"]);
    assert!(
        steps_with(&again, "submitted").is_empty(),
        "a second apply submitted jobs"
    );
    assert_eq!(steps_with(&again, "cache-hit").len(), 3);
}

/// The digests of `p.model`'s outputs (the whole artifact: weights, metrics, histories).
fn model_outputs(evs: &[serde_json::Value]) -> Option<serde_json::Value> {
    finished_outputs(evs)
        .into_iter()
        .find(|(s, _)| s == "p.model")
        .map(|(_, o)| o)
}

/// Whether the training logged that it resumed from a checkpoint.
fn resumed_from_checkpoint(evs: &[serde_json::Value]) -> bool {
    evs.iter().any(|e| {
        e["event"] == "log"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resuming from the checkpoint at step"))
    })
}

/// Wait until the training in `p`'s store has checkpointed at step 8 or later.
fn wait_for_checkpoint(p: &Project) {
    p.wait_for_work_file(
        "checkpoint/progress.json",
        Duration::from_secs(300),
        "training never checkpointed in its job",
        |t| {
            serde_json::from_str::<serde_json::Value>(t)
                .is_ok_and(|v| v["step"].as_u64() >= Some(8))
        },
    );
}

fn train_pipeline() -> &'static str {
    r#"
version: 1
name: trs
defaults:
  slurm: { time: "10:00" }
phases:
  p:
    steps:
      corpus: { op: download, with: { source: "builtin:math", samples: 600 } }
      tok: { op: tokenizer, inputs: { data: corpus }, with: { vocab_size: 320 } }
      model:
        op: train
        inputs: { data: corpus, tokenizer: tok }
        slurm: { extra: ["--comment=forge-test"] }
        with:
          model: { preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }
          steps: 24
          batch_size: 4
          seq_len: 32
          log_every: 2
          checkpoint_every: 4
          math_eval: 2
          eval_records: 8
"#
}

/// The running driver: its process, and its events as they come and once it ends.
struct Driver {
    child: std::process::Child,
    events: std::thread::JoinHandle<Vec<serde_json::Value>>,
}

impl Driver {
    /// Wait for the driver to exit: its exit code and every event it printed.
    fn finish(mut self) -> (Option<i32>, Vec<serde_json::Value>) {
        let status = self.child.wait().unwrap();
        (status.code(), self.events.join().unwrap())
    }
}

/// Start `forge --log-format json apply t.yaml --executor slurm` and hand back the driver and
/// the job id of `step` once it is submitted.
fn apply_until_submitted(p: &Project, step: &str) -> (Driver, String) {
    let mut child = p
        .cmd(&[
            "-v",
            "--log-format",
            "json",
            "apply",
            "t.yaml",
            "--executor",
            "slurm",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    let step = step.to_owned();
    let events = std::thread::spawn(move || {
        let mut all = Vec::new();
        for l in lines.map_while(Result::ok) {
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(&l) else {
                continue;
            };
            if ev["event"] == "submitted" && ev["step"] == step.as_str() {
                let _ = tx.send(ev["job_id"].as_str().unwrap().to_owned());
            }
            all.push(ev);
        }
        all
    });
    let job = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("the step was never submitted");
    (Driver { child, events }, job)
}

#[test]
fn a_train_job_cancelled_with_scancel_resumes_from_its_checkpoint_to_the_same_bytes() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let whole = Project::new();
    whole.write("t.yaml", train_pipeline());
    let whole_evs = whole.apply_ok("t.yaml", &[]);

    let p = Project::new();
    p.write("t.yaml", train_pipeline());
    let (driver, job) = apply_until_submitted(&p, "p.model");
    let record = scontrol(&job);
    assert!(record.contains("TimeLimit=00:10:00"), "{record}");
    assert!(record.contains("Comment=forge-test"), "{record}");
    wait_for_checkpoint(&p);
    let out = Command::new("scancel").arg(&job).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, evs) = driver.finish();
    assert_eq!(
        code,
        Some(3),
        "the apply did not fail as the cluster's fault: {evs:?}"
    );
    let failed = evs
        .into_iter()
        .find(|e| e["event"] == "failed" && e["step"] == "p.model")
        .expect("no failure reported for p.model");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("Slurm job {job} was cancelled on the cluster")),
        "{error}"
    );
    assert!(scontrol(&job).contains("JobState=CANCELLED"));

    let out = p.run(&[
        "-v",
        "--log-format",
        "json",
        "apply",
        "t.yaml",
        "--executor",
        "slurm",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = common::events(&out);
    assert_eq!(steps_with(&evs, "submitted"), ["p.model"]);
    assert!(
        resumed_from_checkpoint(&evs),
        "the resubmitted job did not resume from the checkpoint"
    );
    assert_eq!(
        model_outputs(&evs),
        model_outputs(&whole_evs),
        "the resumed artifact differs from an uninterrupted local run's"
    );
}

#[test]
fn ctrl_c_on_the_driver_cancels_its_jobs() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let p = Project::new();
    p.write(
        "t.yaml",
        r#"
version: 1
name: slow-slurm
phases:
  p:
    steps:
      s:
        op: exec
        with:
          run: "sleep 120; mkdir -p $FORGE_OUTPUT && echo done > $FORGE_OUTPUT/x"
"#,
    );
    let (driver, job) = apply_until_submitted(&p, "p.s");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !scontrol(&job).contains("JobState=RUNNING") {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(driver.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (code, evs) = driver.finish();
    assert_eq!(code, Some(130), "{evs:?}");
    assert_eq!(steps_with(&evs, "cancelled"), ["p.s"]);
    assert!(steps_with(&evs, "failed").is_empty(), "{evs:?}");
    let record = scontrol(&job);
    assert!(record.contains("JobState=CANCELLED"), "{record}");
}

#[test]
fn without_sbatch_the_slurm_executor_is_refused_before_anything_is_written() {
    let p = Project::new();
    let out = p
        .cmd(&[
            "apply",
            &repo("pipelines/hello.yaml"),
            "--executor",
            "slurm",
        ])
        .env("PATH", p.path().join("no-bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("`--executor slurm` needs `sbatch`"), "{err}");
    assert!(!p.store().exists(), "the store was written");
}

#[test]
fn slurm_options_are_checked_like_the_rest_of_the_pipeline() {
    let p = Project::new();
    p.write(
        "t.yaml",
        r#"
version: 1
name: bad-slurm
defaults:
  executor: slurmm
  slurm: { partiton: gpu }
phases:
  p:
    steps:
      s:
        op: exec
        slurm: { extra: [qos=high], time: 30 }
        with: { run: "true" }
"#,
    );
    let out = p.run(&["plan", "t.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for expected in [
        "unknown executor `slurmm`",
        "unknown key `partiton` in `defaults.slurm`",
        "did you mean `partition`",
        "`slurm.extra` holds sbatch options",
        "`slurm.time` must be a string",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_job_the_cluster_refuses_fails_with_sbatch_s_reason() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let p = Project::new();
    p.write(
        "t.yaml",
        r#"
version: 1
name: refused
defaults:
  slurm: { partition: no-such-partition }
phases:
  p:
    steps:
      s: { op: exec, with: { run: "mkdir -p $FORGE_OUTPUT" } }
"#,
    );
    let out = p.run(&["apply", "t.yaml", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("sbatch refused the job"), "{err}");
    assert!(err.contains("partition"), "{err}");
}

/// Takes the node down (its running jobs end `NODE_FAIL`) and always brings it back.
struct NodeDown(String);

impl NodeDown {
    fn now() -> Self {
        let out = Command::new("sinfo")
            .args(["-h", "-o", "%N"])
            .output()
            .unwrap();
        let node = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let down = Command::new("scontrol")
            .args([
                "update",
                &format!("NodeName={node}"),
                "State=DOWN",
                "Reason=forge-test",
            ])
            .status()
            .unwrap();
        assert!(down.success(), "could not take {node} down");
        Self(node)
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        let _ = Command::new("scontrol")
            .args(["update", &format!("NodeName={}", self.0), "State=RESUME"])
            .status();
    }
}

#[test]
fn a_node_failure_resubmits_the_step_and_it_resumes_to_the_same_bytes() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let whole = Project::new();
    whole.write("t.yaml", train_pipeline());
    let whole_evs = whole.apply_ok("t.yaml", &[]);

    let p = Project::new();
    // Without `--no-requeue` Slurm would requeue the job itself (forge follows the same job id
    // through that); with it, resubmitting is forge's.
    p.write(
        "t.yaml",
        &train_pipeline().replace("--comment=forge-test", "--no-requeue"),
    );
    let (driver, job) = apply_until_submitted(&p, "p.model");
    wait_for_checkpoint(&p);
    let deadline = Instant::now() + Duration::from_secs(60);
    {
        let _down = NodeDown::now();
        while !scontrol(&job).contains("JobState=NODE_FAIL") {
            assert!(Instant::now() < deadline, "{}", scontrol(&job));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (code, evs) = driver.finish();
    assert_eq!(code, Some(0), "{evs:?}");
    let retried = evs.iter().any(|e| {
        e["event"] == "retrying"
            && e["step"] == "p.model"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("Slurm job {job} ended NODE_FAIL")))
    });
    assert!(retried, "no resubmission after the node failure: {evs:?}");
    let jobs: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "submitted" && e["step"] == "p.model")
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(jobs, [0, 1]);
    assert!(
        resumed_from_checkpoint(&evs),
        "the resubmitted job did not resume from the checkpoint"
    );
    assert_eq!(
        model_outputs(&evs),
        model_outputs(&whole_evs),
        "the resubmitted step's artifact differs from an uninterrupted local run's"
    );
}
