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
