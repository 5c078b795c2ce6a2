//! The remote cache (`--remote`): stores that share one remote, as machines would — the second
//! downloads what the first built instead of building it, checks every object against its
//! digest, rebuilds what is corrupt (and replaces it on the remote). Against a directory remote
//! always, and against real S3 requests to a local moto server when one is installed
//! (`eval "$(.ci/install-moto)"`; CI requires it with `FORGE_REQUIRE_S3=1`).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Project, events, stderr, steps_with};

const CHAIN: &str = r#"
version: 1
name: chain
phases:
  p:
    steps:
      a:
        op: exec
        with: { run: "echo hello > $FORGE_OUTPUT/a.txt; head -c 300000 /dev/zero >> $FORGE_OUTPUT/a.txt" }
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

/// A remote to test against: its URL, the environment its client needs, and a way to overwrite
/// one of its objects (by digest) with other bytes.
struct RemoteUnderTest {
    url: String,
    env: Vec<(String, String)>,
    overwrite: Overwrite,
}

/// Overwrites the remote's object named by a digest (hex) with the given bytes.
type Overwrite = Box<dyn Fn(&str, &[u8])>;

fn apply(p: &Project, r: &RemoteUnderTest) -> Vec<serde_json::Value> {
    let out = p
        .cmd(&[
            "--log-format",
            "json",
            "apply",
            "chain.yaml",
            "--remote",
            &r.url,
        ])
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    events(&out)
}

/// Step id → its outputs (name → tree digest), from the store's action records.
fn results(p: &Project, evs: &[serde_json::Value]) -> BTreeMap<String, serde_json::Value> {
    evs.iter()
        .filter(|e| e["event"] == "cache-hit" || e["event"] == "finished")
        .map(|e| {
            let key = e["key"].as_str().unwrap();
            let rec = p
                .store()
                .join("actions")
                .join(&key[..2])
                .join(format!("{}.json", &key[2..]));
            let rec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
            (
                e["step"].as_str().unwrap().to_owned(),
                rec["outputs"].clone(),
            )
        })
        .collect()
}

fn shares_results_through(r: &RemoteUnderTest) {
    // Machine A builds and uploads.
    let a = Project::new();
    a.write("chain.yaml", CHAIN);
    let evs = apply(&a, r);
    assert_eq!(steps_with(&evs, "started").len(), 4);
    assert_eq!(steps_with(&evs, "remote-upload").len(), 4, "{evs:?}");
    let built = results(&a, &evs);

    // Machine B: the plan says where each result will come from; apply downloads them all.
    let b = Project::new();
    b.write("chain.yaml", CHAIN);
    let plan = b
        .cmd(&["plan", "chain.yaml", "--remote", &r.url])
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(
        text.contains("0 cached, 4 from the remote cache, 0 to run"),
        "{text}"
    );
    assert_eq!(text.matches("remote hit").count(), 4, "{text}");
    let evs = apply(&b, r);
    assert!(
        steps_with(&evs, "started").is_empty(),
        "B built something: {evs:?}"
    );
    assert_eq!(steps_with(&evs, "remote-hit").len(), 4);
    let hit = evs
        .iter()
        .find(|e| e["event"] == "remote-hit" && e["step"] == "p.a")
        .unwrap();
    assert!(hit["bytes"].as_u64().unwrap() > 300_000, "{hit}");
    assert_eq!(results(&b, &evs), built);
    let export = |p: &Project| {
        let out = p.run(&["export", "p.c", "x"]);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::read(p.path().join("x/out/c.txt")).unwrap()
    };
    assert_eq!(export(&b), export(&a));
    // A second apply on B is all local.
    let evs = apply(&b, r);
    assert_eq!(steps_with(&evs, "cache-hit").len(), 4);
    assert!(steps_with(&evs, "remote-hit").is_empty());

    // Machine C, after one of the remote's objects went bad (truncated): refused, rebuilt, same
    // result, and the remote repaired by C's upload.
    let tree = built["p.a"]["out"].as_str().unwrap().to_owned();
    (r.overwrite)(&tree, b"{\"forge_tree\": 1, \"entr");
    let c = Project::new();
    c.write("chain.yaml", CHAIN);
    let evs = apply(&c, r);
    assert_eq!(
        steps_with(&evs, "started"),
        vec!["p.a".to_string()],
        "{evs:?}"
    );
    let warned = evs
        .iter()
        .find(|e| e["event"] == "remote-error" && e["step"] == "p.a")
        .expect("the corrupt object is reported");
    assert!(
        warned["error"].as_str().unwrap().contains("corrupt"),
        "{warned}"
    );
    assert_eq!(results(&c, &evs), built);
    let d = Project::new();
    d.write("chain.yaml", CHAIN);
    let evs = apply(&d, r);
    assert_eq!(
        steps_with(&evs, "remote-hit").len(),
        4,
        "remote not repaired: {evs:?}"
    );

    // Credentials never reach anything forge writes: run records, events, action records.
    for (k, secret) in r.env.iter().filter(|(k, _)| k.contains("SECRET")) {
        for p in [&a, &b, &c, &d] {
            for f in files(&p.store()) {
                let bytes = std::fs::read(&f).unwrap();
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "{k} written into {}", f.display());
            }
        }
    }
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn two_stores_share_results_through_a_directory_remote() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    shares_results_through(&RemoteUnderTest {
        url: root.display().to_string(),
        env: vec![],
        overwrite: Box::new(move |hex, bytes| {
            std::fs::write(root.join("objects").join(hex), bytes).unwrap();
        }),
    });
}

#[test]
fn the_pipeline_can_name_its_remote_and_the_flag_wins() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let other = dir.path().join("other");
    let pipeline = CHAIN.replace(
        "name: chain\n",
        &format!(
            "name: chain\ndefaults: {{ remote: \"{}\" }}\n",
            shared.display()
        ),
    );
    let a = Project::new();
    a.write("chain.yaml", &pipeline);
    let evs = a.apply_ok("chain.yaml", &[]);
    assert_eq!(steps_with(&evs, "remote-upload").len(), 4, "{evs:?}");

    let b = Project::new();
    b.write("chain.yaml", &pipeline);
    let plan = b.run(&["plan", "chain.yaml"]);
    assert!(
        stderr(&plan).contains("4 from the remote cache")
            || String::from_utf8_lossy(&plan.stdout).contains("4 from the remote cache"),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    let evs = b.apply_ok("chain.yaml", &[]);
    assert_eq!(steps_with(&evs, "remote-hit").len(), 4, "{evs:?}");
    assert!(steps_with(&evs, "started").is_empty(), "{evs:?}");

    // `--remote` wins over the pipeline's: C builds everything and uploads to the other remote.
    let c = Project::new();
    c.write("chain.yaml", &pipeline);
    let evs = c.apply_ok("chain.yaml", &["--remote", &other.display().to_string()]);
    assert!(steps_with(&evs, "remote-hit").is_empty(), "{evs:?}");
    assert_eq!(steps_with(&evs, "remote-upload").len(), 4, "{evs:?}");
}

#[test]
fn push_and_pull_move_results_without_running_anything() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let a = Project::new();
    a.write("chain.yaml", CHAIN);
    a.apply_ok("chain.yaml", &[]);
    // One step, then the rest (already there: nothing new is sent for p.a).
    let out = a.run(&["push", "p.a", "-p", "chain.yaml", "--remote", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Uploaded p.a (2 new objects"),
        "{}",
        stderr(&out)
    );
    let out = a
        .cmd(&["push", "-p", "chain.yaml"])
        .env("FORGE_REMOTE", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Uploaded p.a (0 new objects"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out).matches("Uploaded").count(),
        4,
        "{}",
        stderr(&out)
    );

    let b = Project::new();
    b.write("chain.yaml", CHAIN);
    let out = b.run(&["pull", "chain.yaml", "--remote", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Pulled 4 of 4 steps"),
        "{}",
        stderr(&out)
    );
    let evs = b.apply_ok("chain.yaml", &[]);
    assert_eq!(steps_with(&evs, "cache-hit").len(), 4, "{evs:?}");

    // Without a remote, push and pull say what they need.
    let out = b.run(&["pull", "chain.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs a remote cache"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unusable_remote_url_is_invalid_input_and_nothing_runs() {
    let p = Project::new();
    p.write("chain.yaml", CHAIN);
    let out = p.run(&["apply", "chain.yaml", "--remote", "nope://bucket"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope://bucket"), "{}", stderr(&out));
    assert!(
        !p.store().join("actions").exists()
            || std::fs::read_dir(p.store().join("actions"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// moto's S3 server on a free port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    /// The Python of moto's environment (it has boto3).
    python: std::path::PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, method: &str, path: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn start_moto() -> Option<Moto> {
    let server = std::env::var("FORGE_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("FORGE_REQUIRE_S3").is_none(),
                "FORGE_REQUIRE_S3 is set but `{server}` does not start: {e}"
            );
            eprintln!("skipped: no S3 server (`eval \"$(.ci/install-moto)\"` installs one)");
            return None;
        }
    };
    let python = std::path::Path::new(&server).with_file_name("python");
    let python = if python.exists() {
        python
    } else {
        "python3".into()
    };
    let moto = Moto {
        child,
        port,
        python,
    };
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "moto_server never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

#[test]
fn two_stores_share_results_through_s3() {
    let Some(moto) = start_moto() else {
        return;
    };
    let port = moto.port;
    let python = moto.python.clone();
    let made = http(port, "PUT", "/forge-cache", b"");
    assert!(made.starts_with("HTTP/1.1 200"), "{made}");
    let env = [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "forge-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "forge-test-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
    ];
    shares_results_through(&RemoteUnderTest {
        url: "s3://forge-cache/team/cache".into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        overwrite: Box::new(move |hex, bytes| {
            // A signed PUT, with the boto3 that moto brings (its server refuses anonymous ones).
            let out = Command::new(&python)
                .args([
                    "-c",
                    "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], \
                    region_name='us-east-1', aws_access_key_id='forge-test', \
                    aws_secret_access_key='forge-test-secret').put_object(Bucket='forge-cache', \
                    Key=sys.argv[2], Body=sys.stdin.buffer.read())",
                ])
                .arg(format!("http://127.0.0.1:{port}"))
                .arg(format!("team/cache/objects/{hex}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    c.stdin.take().unwrap().write_all(bytes)?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }),
    });
    drop(moto);
}
