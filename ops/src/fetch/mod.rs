//! Resumable HTTP(S) fetching with pinned digests.
//!
//! Bytes go to `<scratch>/download.part`; if that file exists from an interrupted attempt, the
//! request asks for the rest with `Range: bytes=<len>-` and appends when the server answers
//! `206 Partial Content` (a `200` restarts from zero). Connection errors, timeouts, `408`, `429`
//! and `5xx` are transient (the engine retries with backoff); other statuses are not. The file is
//! checked against its pinned digest before it is used; a mismatch deletes it and fails for good.
//! A bearer token, when given, is sent as a header and never logged or put in an error.

pub mod archive;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::context::StepContext;
use crate::error::OpError;

/// A pinned content digest: `blake3:<hex>` or `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    Blake3(String),
    Sha256(String),
}

impl Pin {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` has no algorithm prefix"))?;
        let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(format!("`{hex}` is not a 64-character hex digest"));
        }
        match algo {
            "blake3" => Ok(Self::Blake3(hex.to_ascii_lowercase())),
            "sha256" => Ok(Self::Sha256(hex.to_ascii_lowercase())),
            other => Err(format!("unknown digest algorithm `{other}`")),
        }
    }

    /// Hash a file with this pin's algorithm; returns the hex digest.
    pub fn hash_file(&self, path: &Path) -> Result<String, OpError> {
        match self {
            Self::Blake3(_) => Ok(forge_cache::hash_file_uncached(path)?.to_hex()),
            Self::Sha256(_) => {
                let mut f = fs::File::open(path).map_err(|e| OpError::io(path, e))?;
                let mut h = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(|e| OpError::io(path, e))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                Ok(hex::encode(h.finalize()))
            }
        }
    }

    pub fn expected(&self) -> &str {
        match self {
            Self::Blake3(h) | Self::Sha256(h) => h,
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Blake3(_) => "blake3",
            Self::Sha256(_) => "sha256",
        }
    }
}

pub struct FetchRequest<'a> {
    pub url: &'a str,
    pub bearer_token: Option<String>,
    pub max_bytes: u64,
    pub pin: Option<&'a Pin>,
}

fn transient(url: &str, what: impl std::fmt::Display) -> OpError {
    OpError::transient(format!("downloading {url}: {what}"))
}

/// Download `req.url` into `part` (resuming what is there) and verify it.
pub fn fetch(ctx: &StepContext, req: &FetchRequest<'_>, part: &Path) -> Result<u64, OpError> {
    let url = req.url;
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(None)
        .user_agent(concat!("forge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OpError::infra(format!("HTTP client: {e}")))?;
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut rb = client.get(url);
    if let Some(t) = &req.bearer_token {
        rb = rb.bearer_auth(t);
    }
    if have > 0 {
        rb = rb.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = rb.send().map_err(|e| transient(url, e.without_url()))?;
    let status = resp.status();
    let (mut file, mut done) = match status.as_u16() {
        206 => {
            ctx.log(format!("resuming {url} at byte {have}"));
            (
                OpenOptions::new()
                    .append(true)
                    .open(part)
                    .map_err(|e| OpError::io(part, e))?,
                have,
            )
        }
        200 => (fs::File::create(part).map_err(|e| OpError::io(part, e))?, 0),
        416 if have > 0 => {
            // Range not satisfiable: we may already hold the whole file; the digest decides.
            return verify(req, part).map(|_| have);
        }
        408 | 429 | 500..=599 => return Err(transient(url, format!("server answered {status}"))),
        401 | 403 => {
            return Err(OpError::user(format!(
                "downloading {url}: server answered {status}; check access rights (for hf: sources, set HF_TOKEN)"
            )));
        }
        _ => {
            return Err(OpError::user(format!(
                "downloading {url}: server answered {status}"
            )));
        }
    };
    let total = resp.content_length().map(|n| n + done);
    if let Some(t) = total
        && t > req.max_bytes
    {
        return Err(OpError::user(format!(
            "downloading {url}: {t} bytes exceeds the size limit of {} bytes (`max_bytes`)",
            req.max_bytes
        )));
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut last = Instant::now();
    loop {
        if ctx.is_cancelled() {
            file.sync_all().ok();
            return Err(OpError::Cancelled(
                "cancelled during download (partial file kept for resume)".into(),
            ));
        }
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                file.sync_all().ok();
                return Err(transient(
                    url,
                    format!("connection broke after {done} bytes: {e}"),
                ));
            }
        };
        done += n as u64;
        if done > req.max_bytes {
            drop(file);
            let _ = fs::remove_file(part);
            return Err(OpError::user(format!(
                "downloading {url}: more than the size limit of {} bytes (`max_bytes`)",
                req.max_bytes
            )));
        }
        file.write_all(&buf[..n])
            .map_err(|e| OpError::io(part, e))?;
        if last.elapsed() > Duration::from_millis(250) {
            ctx.progress(done, total, "bytes");
            last = Instant::now();
        }
    }
    file.sync_all().map_err(|e| OpError::io(part, e))?;
    if let Some(t) = total
        && done < t
    {
        return Err(transient(
            url,
            format!("connection closed after {done} of {t} bytes"),
        ));
    }
    ctx.progress(done, Some(done), "bytes");
    verify(req, part)?;
    Ok(done)
}

fn verify(req: &FetchRequest<'_>, part: &Path) -> Result<(), OpError> {
    let Some(pin) = req.pin else { return Ok(()) };
    let actual = pin.hash_file(part)?;
    if actual != pin.expected() {
        let _ = fs::remove_file(part);
        return Err(OpError::user(format!(
            "downloading {}: content does not match the pinned digest\n  expected {}:{}\n  got      {}:{actual}",
            req.url,
            pin.algorithm(),
            pin.expected(),
            pin.algorithm()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_parsing() {
        let h = "a".repeat(64);
        assert_eq!(
            Pin::parse(&format!("sha256:{h}")).unwrap(),
            Pin::Sha256(h.clone())
        );
        assert!(Pin::parse(&h).is_err());
        assert!(Pin::parse("md5:abc").is_err());
        assert!(
            Pin::parse(&format!("crc:{h}"))
                .unwrap_err()
                .contains("unknown digest algorithm")
        );
    }
}
