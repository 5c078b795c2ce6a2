//! `download` against a loopback HTTP server this test starts on 127.0.0.1: resume with Range
//! after a broken connection, retries of transient statuses, pinned digests, size limits,
//! `hf:` URLs with a token that never leaks, and archive extraction.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::{Project, events, stderr, steps_with};

#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
}

enum Reply {
    /// Serve these bytes, honouring `Range: bytes=N-`.
    Body(Vec<u8>),
    /// Promise the whole body, send only the first `n` bytes, then drop the connection.
    Truncated(Vec<u8>, usize),
    Status(u16),
}

type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

struct Server {
    addr: String,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let l2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, log) = (handler.clone(), l2.clone());
                std::thread::spawn(move || serve(stream, &*h, &log));
            }
        });
        Self { addr, log }
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// Apply `dl.yaml`, expect exit 1, and return the error of the failed step.
fn failed_apply_error(p: &Project) -> String {
    let out = p.run(&["--log-format", "json", "apply", "dl.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    events(&out)
        .into_iter()
        .find(|e| e["event"] == "failed")
        .expect("a failed event")["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn serve(mut stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let req = Request { path, headers };
    let nth = {
        let mut l = log.lock().unwrap();
        l.push(req.clone());
        l.iter().filter(|r| r.path == req.path).count() - 1
    };
    let write = |s: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let _ = write!(s, "HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n");
        let _ = s.write_all(body);
    };
    match handler(&req, nth) {
        Reply::Status(code) => write(
            &mut stream,
            &format!("{code} X"),
            "Content-Length: 0\r\n",
            b"",
        ),
        Reply::Truncated(body, n) => {
            write(
                &mut stream,
                "200 OK",
                &format!("Content-Length: {}\r\n", body.len()),
                &body[..n],
            );
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        Reply::Body(body) => {
            let start = req
                .headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            match start {
                Some(s) if s < body.len() => write(
                    &mut stream,
                    "206 Partial Content",
                    &format!(
                        "Content-Length: {}\r\nContent-Range: bytes {s}-{}/{}\r\n",
                        body.len() - s,
                        body.len() - 1,
                        body.len()
                    ),
                    &body[s..],
                ),
                Some(_) => write(
                    &mut stream,
                    "416 Range Not Satisfiable",
                    "Content-Length: 0\r\n",
                    b"",
                ),
                None => write(
                    &mut stream,
                    "200 OK",
                    &format!("Content-Length: {}\r\n", body.len()),
                    &body,
                ),
            }
        }
    }
}

fn payload() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn blake3_pin(b: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(b).to_hex())
}

fn pipeline(source: &str, extra: &str) -> String {
    format!(
        "version: 1\nname: dl\nphases:\n  p:\n    steps:\n      d:\n        op: download\n        retries: 3\n        with: {{ source: \"{source}\"{extra} }}\n"
    )
}

/// A one-step download pipeline for `url`, pinned to the blake3 digest of `body`.
fn pinned(url: &str, body: &[u8]) -> String {
    pipeline(url, &format!(", digest: \"{}\"", blake3_pin(body)))
}

fn exported(p: &Project, name: &str) -> Vec<u8> {
    let out = p.run(&["export", "p.d", "exp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read(p.path().join("exp/data").join(name)).unwrap()
}

#[test]
fn broken_connection_resumes_with_range_and_verifies_the_digest() {
    let body = payload();
    let b2 = body.clone();
    let server = Server::start(move |_, nth| {
        if nth == 0 {
            Reply::Truncated(b2.clone(), 70_000)
        } else {
            Reply::Body(b2.clone())
        }
    });
    let p = Project::new();
    p.write(
        "dl.yaml",
        &pinned(&format!("{}/data.bin", server.addr), &body),
    );
    let evs = p.apply_ok("dl.yaml", &[]);
    assert_eq!(steps_with(&evs, "retrying"), ["p.d"]);
    let reqs = server.requests("/data.bin");
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].headers.get("range").map(String::as_str),
        Some("bytes=70000-")
    );
    assert_eq!(exported(&p, "data.bin"), body);
    // Cached: no network at all the second time.
    let evs = p.apply_ok("dl.yaml", &[]);
    assert_eq!(steps_with(&evs, "cache-hit"), ["p.d"]);
    assert_eq!(server.requests("/data.bin").len(), 2);
}

#[test]
fn transient_statuses_are_retried_and_client_errors_are_not() {
    let body = b"hello over http\n".to_vec();
    let b2 = body.clone();
    let server = Server::start(move |req, nth| match req.path.as_str() {
        "/busy.txt" if nth < 2 => Reply::Status(503),
        "/busy.txt" => Reply::Body(b2.clone()),
        _ => Reply::Status(404),
    });
    let p = Project::new();
    p.write(
        "dl.yaml",
        &pinned(&format!("{}/busy.txt", server.addr), &body),
    );
    let evs = p.apply_ok("dl.yaml", &[]);
    assert_eq!(steps_with(&evs, "retrying").len(), 2);
    assert_eq!(exported(&p, "busy.txt"), body);

    p.write(
        "dl.yaml",
        &pipeline(
            &format!("{}/missing.txt", server.addr),
            &format!(", digest: \"{}\"", blake3_pin(b"x")),
        ),
    );
    let out = p.run(&["--log-format", "json", "apply", "dl.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let evs = events(&out);
    assert!(steps_with(&evs, "retrying").is_empty());
    let failed = evs.iter().find(|e| e["event"] == "failed").unwrap();
    assert!(
        failed["error"].as_str().unwrap().contains("404"),
        "{failed}"
    );
    assert_eq!(server.requests("/missing.txt").len(), 1);
}

#[test]
fn digest_mismatch_and_size_limit_fail_for_good() {
    let body = payload();
    let b2 = body.clone();
    let server = Server::start(move |_, _| Reply::Body(b2.clone()));
    let p = Project::new();
    let wrong = format!("sha256:{}", "0".repeat(64));
    p.write(
        "dl.yaml",
        &pipeline(
            &format!("{}/a.bin", server.addr),
            &format!(", digest: \"{wrong}\""),
        ),
    );
    let err = failed_apply_error(&p);
    assert!(
        err.contains("does not match the pinned digest") && err.contains(&"0".repeat(64)),
        "{err}"
    );
    assert_eq!(
        server.requests("/a.bin").len(),
        1,
        "a digest mismatch must not be retried"
    );

    p.write(
        "dl.yaml",
        &pipeline(
            &format!("{}/b.bin", server.addr),
            &format!(", digest: \"{}\", max_bytes: 1000", blake3_pin(&body)),
        ),
    );
    let err = failed_apply_error(&p);
    assert!(err.contains("size limit of 1000 bytes"), "{err}");
}

#[test]
fn hf_source_resolves_against_hf_endpoint_and_sends_the_token_without_logging_it() {
    let body = b"question,answer\n1+1,2\n".to_vec();
    let b2 = body.clone();
    let server = Server::start(move |req, _| {
        if req.path != "/datasets/acme/arith/resolve/v1.0/data/train.csv" {
            return Reply::Status(404);
        }
        match req.headers.get("authorization").map(String::as_str) {
            Some("Bearer sekrit-token-123") => Reply::Body(b2.clone()),
            _ => Reply::Status(401),
        }
    });
    let p = Project::new();
    p.write(
        "dl.yaml",
        &pipeline(
            "hf:datasets/acme/arith@v1.0/data/train.csv",
            &format!(", digest: \"{}\"", blake3_pin(&body)),
        ),
    );
    let out = p
        .cmd(&["-v", "--log-format", "json", "apply", "dl.yaml"])
        .env("HF_ENDPOINT", &server.addr)
        .env("HF_TOKEN", "sekrit-token-123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(exported(&p, "train.csv"), body);
    // The token appears nowhere: not in output, events, run records or action records.
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all.contains("sekrit"));
    let mut stack = vec![p.store()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains("sekrit"),
                    "token leaked into {}",
                    e.path().display()
                );
            }
        }
    }
    // Without the token the hub says 401, and the error says what to do.
    let q = Project::new();
    q.write(
        "dl.yaml",
        &pipeline(
            "hf:datasets/acme/arith@v1.0/data/train.csv",
            &format!(", digest: \"{}\"", blake3_pin(&body)),
        ),
    );
    let out = q
        .cmd(&["apply", "dl.yaml"])
        .env("HF_ENDPOINT", &server.addr)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("set HF_TOKEN"), "{}", stderr(&out));
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn archives_are_extracted_and_traversal_is_refused() {
    let good = tar_gz(&[("corpus/a.txt", b"alpha\n"), ("corpus/b.txt", b"beta\n")]);
    let evil = tar_gz(&[("../../etc/evil.txt", b"x")]);
    let (g2, e2) = (good.clone(), evil.clone());
    let server = Server::start(move |req, _| match req.path.as_str() {
        "/good.tar.gz" => Reply::Body(g2.clone()),
        _ => Reply::Body(e2.clone()),
    });
    let p = Project::new();
    p.write(
        "dl.yaml",
        &pinned(&format!("{}/good.tar.gz", server.addr), &good),
    );
    p.apply_ok("dl.yaml", &[]);
    assert_eq!(exported(&p, "corpus/b.txt"), b"beta\n");

    p.write(
        "dl.yaml",
        &pinned(&format!("{}/evil.tar.gz", server.addr), &evil),
    );
    let out = p.run(&["apply", "dl.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unsafe path"), "{}", stderr(&out));
}

#[test]
fn file_source_content_is_in_the_key() {
    let p = Project::new();
    p.write("data/in.txt", "one\n");
    p.write("dl.yaml", &pipeline("file:data/in.txt", ""));
    p.apply_ok("dl.yaml", &[]);
    assert_eq!(
        steps_with(&p.apply_ok("dl.yaml", &[]), "cache-hit"),
        ["p.d"]
    );
    p.write("data/in.txt", "two\n");
    let plan = p.run(&["plan", "dl.yaml"]);
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("extras.content:"),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    assert_eq!(steps_with(&p.apply_ok("dl.yaml", &[]), "started"), ["p.d"]);
    assert_eq!(exported(&p, "in.txt"), b"two\n");
}

/// A snappy-compressed parquet table of string columns, as the hub's parquet export serves them.
fn parquet_table(columns: &[(&str, Vec<String>)]) -> Vec<u8> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let fields: String = columns
        .iter()
        .map(|(name, _)| format!("optional binary {name} (STRING); "))
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {fields}}}")).unwrap());
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut buf = Vec::new();
    let mut w = SerializedFileWriter::new(&mut buf, schema, Arc::new(props)).unwrap();
    let mut rg = w.next_row_group().unwrap();
    for (_, values) in columns {
        let values: Vec<ByteArray> = values.iter().map(|v| v.as_str().into()).collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&vec![1; values.len()]), None)
            .unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
    buf
}

const HUB_PIPELINE: &str = r#"version: 1
name: hub
defaults: { device: cpu, seed: 7 }
phases:
  p:
    steps:
      corpus:
        op: download
        matrix:
          ds:
            - name: arith
              source: "hf:datasets/acme/arith@refs/convert/parquet/main/train/0000.parquet"
              records:
                category: math
                difficulty: 1
                prompt: "{{ question }}"
                answer: "{{ (answer | split('####')) | last | trim }}"
                text: "{{ question }}\n{{ answer }}"
            - name: trivia
              source: "hf:datasets/acme/trivia@v2/data/train.parquet"
              records: { category: qa, prompt: "{{ q }}", answer: "{{ a }}", split: train }
        with: { source: "${matrix.ds.source}", records: "${matrix.ds.records}", val_fraction: 0.2, test_fraction: 0.0 }
      tok: { op: tokenizer, inputs: { data: corpus }, with: { vocab_size: 320 } }
      model:
        op: train
        inputs: { data: corpus, tokenizer: tok }
        with:
          model: { preset: tiny, vocab_size: 320, d_model: 32, heads: 2, layers: 2, d_ff: 64, ltm_slots: 8, max_seq: 64, window: 32 }
          steps: 3
          batch_size: 4
          seq_len: 32
          math_eval: 4
          eval_records: 4
"#;

/// Two hub tables in parquet (one under the `refs/convert/parquet` revision) become records by
/// their templates, and the tokenizer and a training run take both datasets as one corpus.
#[test]
fn hub_parquet_tables_become_records_that_train_on() {
    let arith = parquet_table(&[
        (
            "question",
            (0..60)
                .map(|i| format!("Ann has {i} pens and buys 2 more. How many pens?"))
                .collect(),
        ),
        (
            "answer",
            (0..60)
                .map(|i| format!("{i} + 2 = {}\n#### {}", i + 2, i + 2))
                .collect(),
        ),
    ]);
    let trivia = parquet_table(&[
        (
            "q",
            (0..40)
                .map(|i| format!("Which city hosts fair number {i}?"))
                .collect(),
        ),
        (
            "a",
            (0..40)
                .map(|i| ["Oslo", "Lima"][i % 2].to_owned())
                .collect(),
        ),
    ]);
    let server = Server::start(move |req, _| match req.path.as_str() {
        "/datasets/acme/arith/resolve/refs%2Fconvert%2Fparquet/main/train/0000.parquet" => {
            Reply::Body(arith.clone())
        }
        "/datasets/acme/trivia/resolve/v2/data/train.parquet" => Reply::Body(trivia.clone()),
        _ => Reply::Status(404),
    });
    let p = Project::new();
    p.write("hub.yaml", HUB_PIPELINE);
    let out = p
        .cmd(&["--log-format", "json", "apply", "hub.yaml"])
        .env("HF_ENDPOINT", &server.addr)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(steps_with(&events(&out), "finished").len(), 4);

    let out = p.run(&["export", "p.corpus[ds=arith]", "exp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |split: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.path().join(format!("exp/data/{split}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (train, val) = (read("train"), read("val"));
    assert_eq!(train.len() + val.len(), 60, "every row is a record");
    assert!(!val.is_empty(), "split: auto fills the val split");
    let r = train
        .iter()
        .find(|r| r["prompt"] == "Ann has 5 pens and buys 2 more. How many pens?")
        .or_else(|| {
            val.iter()
                .find(|r| r["prompt"] == "Ann has 5 pens and buys 2 more. How many pens?")
        })
        .expect("row 5 converted");
    assert_eq!(r["answer"], "7");
    assert_eq!(r["category"], "math");
    assert_eq!(r["difficulty"], 1);
    assert!(r["id"].as_str().unwrap().starts_with("arith-"), "{r}");
    assert_eq!(
        r["text"],
        "Ann has 5 pens and buys 2 more. How many pens?\n5 + 2 = 7\n#### 7"
    );

    // The model trained on both tables: its metrics count math and qa records.
    let out = p.run(&["export", "p.model", "model"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path().join("model/model/metrics.json")).unwrap())
            .unwrap();
    let text = metrics.to_string();
    assert!(text.contains("test/math_accuracy"), "{text}");

    // A template naming a column the table lacks fails the step and names the columns.
    let q = Project::new();
    q.write("hub.yaml", &HUB_PIPELINE.replace("{{ q }}", "{{ query }}"));
    let out = q
        .cmd(&["apply", "hub.yaml"])
        .env("HF_ENDPOINT", &server.addr)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("records.prompt") && err.contains("a, q"),
        "{err}"
    );
}

/// A template that does not parse is invalid input: exit 2, the line of the template, nothing run.
#[test]
fn a_broken_record_template_is_a_diagnostic() {
    let p = Project::new();
    p.write("hub.yaml", &HUB_PIPELINE.replace("{{ q }}", "{{ q "));
    let out = p.run(&["apply", "hub.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("records.prompt") || err.contains("prompt"),
        "{err}"
    );
    assert!(err.contains("hub.yaml:"), "{err}");
    assert!(!p.store().exists(), "nothing written");
}
