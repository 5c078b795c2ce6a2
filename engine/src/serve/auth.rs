//! Who may talk to `forge serve`: the Host header must name this server (no DNS rebinding), a
//! browser's Origin must be this server's (no cross-site requests), and the token — from an
//! `Authorization: Bearer` header, a `token` query parameter or the `forge_token` cookie the
//! page sets — is required for every route that changes something or streams events, and for
//! every route when the server listens beyond this machine.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Guard, routes};

/// An error answer: `{ "error": …, "hint": … }`.
pub fn error(status: StatusCode, message: &str, hint: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message, "hint": hint })),
    )
        .into_response()
}

/// Equal without revealing where they differ through timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token a request carries, if any.
pub fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(t) = pair.strip_prefix("token=") {
                return Some(t.to_owned());
            }
        }
    }
    let cookies = headers.get_all(header::COOKIE);
    for c in cookies.iter().filter_map(|v| v.to_str().ok()) {
        for part in c.split(';') {
            if let Some(t) = part.trim().strip_prefix("forge_token=") {
                return Some(t.to_owned());
            }
        }
    }
    None
}

/// Every route's method, path pattern and guard: the route table without its handlers,
/// made once for the server's lifetime (the guard runs on every request).
pub type Guards = Vec<(&'static str, &'static str, Guard)>;

pub fn guards() -> Guards {
    routes()
        .into_iter()
        .map(|(r, _)| (r.method, r.path, r.guard))
        .collect()
}

/// The guard of the route `path` (with `{…}` segments matching anything), if it is one.
fn guard_of(guards: &Guards, method: &str, path: &str) -> Option<Guard> {
    let segs: Vec<&str> = path.split('/').collect();
    guards.iter().find_map(|&(m, pattern, guard)| {
        let pat: Vec<&str> = pattern.split('/').collect();
        let matches = m.eq_ignore_ascii_case(method)
            && pat.len() == segs.len()
            && pat
                .iter()
                .zip(&segs)
                .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s);
        matches.then_some(guard)
    })
}

fn loopback_host(host: &str, port: u16) -> bool {
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|h| host == format!("{h}:{port}") || host == *h)
}

pub async fn guard(State(app): State<super::State>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if app.loopback && !loopback_host(host, app.port) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("Host `{host}` is not this server"),
            "open the address `forge serve` printed (127.0.0.1 or localhost)",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin != format!("http://{host}")
    {
        return error(
            StatusCode::FORBIDDEN,
            &format!("requests from `{origin}` are not allowed"),
            "use the page `forge serve` serves",
        );
    }
    let path = req.uri().path();
    let needs_token = match guard_of(&app.guards, req.method().as_str(), path) {
        Some(Guard::Token) => true,
        Some(Guard::Read) | None => !app.loopback,
    };
    if needs_token {
        match token_of(headers, req.uri().query()) {
            Some(t) if same(&t, &app.token) => {}
            Some(_) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "wrong token",
                    "use the token `forge serve` printed at start",
                );
            }
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "this needs the server's token",
                    "send `Authorization: Bearer <token>` (or `?token=`); `forge serve` printed it at start",
                );
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_header_query_or_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(token_of(&h, Some("a=1&token=abc")), Some("abc".into()));
        h.insert(header::COOKIE, "x=1; forge_token=def".parse().unwrap());
        assert_eq!(token_of(&h, None), Some("def".into()));
        h.insert(header::AUTHORIZATION, "Bearer ghi".parse().unwrap());
        assert_eq!(token_of(&h, None), Some("ghi".into()));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn guards_follow_the_route_table() {
        let g = guards();
        let guard_of = |m: &str, p: &str| guard_of(&g, m, p);
        assert_eq!(guard_of("POST", "/api/pipeline/start"), Some(Guard::Token));
        assert_eq!(guard_of("GET", "/api/events"), Some(Guard::Token));
        assert_eq!(guard_of("GET", "/api/steps/p.s/metrics"), Some(Guard::Read));
        assert_eq!(guard_of("GET", "/api/steps//metrics"), None);
        assert_eq!(guard_of("DELETE", "/api/runs"), None);
        assert!(loopback_host("127.0.0.1:8080", 8080) && !loopback_host("evil.test:8080", 8080));
    }
}
