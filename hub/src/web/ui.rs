//! The web UI: three files built into the binary (no Node toolchain, no
//! build step), a single-page app over the REST API.
//!
//! Served with a strict Content-Security-Policy (scripts and styles from
//! the hub only, no inline script, no framing): the UI renders what users
//! and workloads wrote (run names, log lines), and a bug that put such
//! text into HTML would still not run it.

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header;

use super::Web;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn file(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) fn routes() -> axum::Router<Web> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { file(include_str!("ui/index.html"), "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { file(include_str!("ui/app.js"), "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { file(include_str!("ui/app.css"), "text/css; charset=utf-8") }),
        )
}
