//! The dashboard at `/ui/`: a static page, its script and its style sheet, compiled into the
//! binary. The page holds no data of its own: it calls the API with the key the user pastes.

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::ApiError;

/// The page.
const INDEX: &str = include_str!("ui/index.html");
/// Its script (the only one: no inline code).
const SCRIPT: &str = include_str!("ui/app.js");
/// Its style sheet.
const STYLE: &str = include_str!("ui/style.css");
/// Its icon.
const ICON: &str = include_str!("ui/favicon.svg");

/// The Content-Security-Policy of every dashboard file: the dashboard's own files and the API
/// of the same origin, nothing inline, no frames, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Adds `/ui` (a redirect), `/ui/` (the page) and `/ui/{file}` (its files) to a router.
pub fn routes<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        // Relative, so that it also works behind a proxy that serves hookflow under a prefix.
        .route("/ui", get(|| async { Redirect::permanent("ui/") }))
        .route("/ui/", get(|| async { file("index.html") }))
        .route(
            "/ui/{file}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

/// One dashboard file with its content type and security headers, or 404.
fn file(name: &str) -> Response {
    let (content_type, body) = match name {
        "index.html" => ("text/html; charset=utf-8", INDEX),
        "app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "style.css" => ("text/css; charset=utf-8", STYLE),
        "favicon.svg" => ("image/svg+xml", ICON),
        _ => return ApiError::not_found("Not found").into_response(),
    };
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Small files: always revalidate, so a new binary's dashboard is used at once.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}
