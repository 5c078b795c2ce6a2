//! The dashboard `forge serve` serves at `/`: one HTML page, its script and style, and uPlot
//! (MIT, vendored under `page/vendor/` with its licence), embedded in the binary so nothing is
//! needed at run time. Opening `/?token=…` (the address `forge serve` prints) stores the token in
//! an HttpOnly, same-site cookie and redirects to `/`, so the page's requests carry it.

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::{error, token_of};

const INDEX: &str = include_str!("page/index.html");

/// The assets by name: (content, content type).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        include_str!("page/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "style.css",
        include_str!("page/style.css"),
        "text/css; charset=utf-8",
    ),
    (
        "uPlot.iife.min.js",
        include_str!("page/vendor/uPlot.iife.min.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "uPlot.min.css",
        include_str!("page/vendor/uPlot.min.css"),
        "text/css; charset=utf-8",
    ),
    (
        "uPlot-LICENSE",
        include_str!("page/vendor/uPlot-LICENSE"),
        "text/plain; charset=utf-8",
    ),
];

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

pub async fn index(State(app): State<super::State>, RawQuery(q): RawQuery) -> Response {
    if q.as_deref()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("token=")))
    {
        let given = token_of(&axum::http::HeaderMap::new(), q.as_deref());
        if given.as_deref() != Some(app.token.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "wrong token",
                "open the address `forge serve` printed",
            );
        }
        let cookie = format!(
            "forge_token={}; HttpOnly; SameSite=Strict; Path=/",
            app.token
        );
        return ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX,
    )
        .into_response()
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, body, ty)) => ([(header::CONTENT_TYPE, *ty)], *body).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no asset `{name}`"), ""),
    }
}
