//! The web client (`web/`), embedded in the binary so a release needs no files next
//! to it, served with its content types and a restrictive Content-Security-Policy.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Scripts and styles only from this server, no inline code, no framing. Websockets
/// may go to other nodes (`moved`), hence `ws:`/`wss:`. The service worker
/// (`/sw.js`) is a script from this server too (`worker-src 'self'`).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' ws: wss:; worker-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// (path, content type, bytes) of every embedded file.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../web/favicon.svg"),
    ),
    (
        "sw.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/sw.js"),
    ),
    (
        "js/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/js/app.js"),
    ),
    (
        "js/conn.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/js/conn.js"),
    ),
    (
        "js/render.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/js/render.js"),
    ),
    (
        "js/format.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/js/format.js"),
    ),
    (
        "js/commands.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/js/commands.js"),
    ),
    (
        "js/notify.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/js/notify.js"),
    ),
    (
        "js/account.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/js/account.js"),
    ),
    (
        "js/signup.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/js/signup.js"),
    ),
];

fn file(path: &str) -> Response {
    match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub async fn index() -> Response {
    file("index.html")
}

pub async fn asset(Path(path): Path<String>) -> Response {
    file(&path)
}

pub async fn script(Path(path): Path<String>) -> Response {
    file(&format!("js/{path}"))
}
