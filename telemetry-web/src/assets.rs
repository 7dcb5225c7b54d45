//! The front end, embedded in the binary: plain HTML/CSS/JS written for this crate and the
//! vendored uPlot (assets/vendor/uplot: version and licence beside it). No Node.js is needed to
//! build or run the daemon. The files hold code only, no data, so they are served without a
//! credential (the page itself and `/api` need one).

use axum::{
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use crate::AppState;

/// The dashboard page (served to a logged-in browser by `auth::index`).
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const VIEWS_JS: &str = include_str!("../assets/views.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const UPLOT_JS: &[u8] = include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &[u8] = include_bytes!("../assets/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../assets/vendor/uplot/LICENSE");

pub(crate) fn routes() -> Router<AppState> {
    let file = |body: &'static [u8], ty: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, ty),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
        }
    };
    Router::new()
        .route(
            "/app.js",
            get(file(APP_JS.as_bytes(), "text/javascript; charset=utf-8")),
        )
        .route(
            "/views.js",
            get(file(VIEWS_JS.as_bytes(), "text/javascript; charset=utf-8")),
        )
        .route(
            "/app.css",
            get(file(APP_CSS.as_bytes(), "text/css; charset=utf-8")),
        )
        .route(
            "/vendor/uplot.js",
            get(file(UPLOT_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/vendor/uplot.css",
            get(file(UPLOT_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/vendor/uplot.LICENSE.txt",
            get(file(UPLOT_LICENSE.as_bytes(), "text/plain; charset=utf-8")),
        )
        .route(
            "/favicon.ico",
            get(|| async { StatusCode::NO_CONTENT.into_response() }),
        )
}

/// The page a browser without a session gets (401), with `message` (escaped).
pub(crate) fn login_page(message: &str) -> String {
    let escaped: String = message
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>gym-telemetry: log in</title>\
         <link rel=\"stylesheet\" href=\"/app.css\"></head><body><main class=\"login\">\
         <h1>gym-telemetry</h1><p id=\"login-message\">{escaped}</p></main></body></html>"
    )
}
