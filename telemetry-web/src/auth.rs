//! Login and the credential check, with the gRPC services' rules (`LocalAccess`, one home).
//!
//! Like Jupyter: the daemon prints `http://127.0.0.1:50153/?token=…`. Opening it checks the
//! token as a gRPC bearer token would be checked; the operator's token sets an `HttpOnly`,
//! `SameSite=Strict` session cookie (derived from the token, not the token) and redirects to
//! `/`, so the token leaves the address bar and the history, and never reaches another URL, a
//! `Referer` or a log (no request URL is logged here). Every `/api` request then needs the
//! cookie, or an `Authorization: Bearer` operator token (scripts); anything else is 401 with no
//! data. Worker tokens are refused (403): the dashboard can start and cancel runs.
//!
//! Cross-site requests carry no cookie (`SameSite=Strict`), and the one state-changing kind
//! (run control) needs a JSON body, which a cross-site form cannot send without a preflight.

use std::{collections::HashMap, net::SocketAddr};

use axum::{
    extract::{Query, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::Next,
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use telemetry_server::{AuthError, Principal};

use crate::{assets, AppState, WebStats};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gt_session";

/// Query parameters longer than this are not looked at (a token is 64 hex digits).
const MAX_TOKEN_LEN: usize = 4096;

/// `http://ADDR/` with an unspecified address shown as loopback.
pub(crate) fn base_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    format!("http://{}/", SocketAddr::new(ip, addr.port()))
}

/// The URL that logs a browser in (`…/?token=TOKEN`), or the plain dashboard URL without
/// credentials. Print it to the operator's terminal only, never to a log.
pub fn login_url(addr: SocketAddr, token: Option<&str>) -> String {
    let base = base_url(addr);
    match token {
        Some(t) => {
            let escaped: String = t
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{base}?token={escaped}")
        }
        None => base,
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/", get(index))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Who makes this request: a bearer token first, else the session cookie.
fn principal(state: &AppState, headers: &HeaderMap) -> Result<Principal, AuthError> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let token = h.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
        return state
            .access
            .authenticate(Some(token.unwrap_or("")).filter(|t| !t.is_empty()));
    }
    state
        .access
        .authenticate_web_session(session_cookie(headers).as_deref())
}

fn refused(state: &AppState, e: AuthError) -> Response {
    WebStats::bump(&state.stats.unauthenticated, 1);
    let msg = match e {
        AuthError::Missing => {
            "not logged in: open the URL with ?token= that gym-telemetry-daemon serve printed"
        }
        AuthError::Wrong => "wrong credential",
    };
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

/// Middleware on `/api`: the operator's credential or 401/403, no data.
pub(crate) async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match principal(&state, req.headers()) {
        Ok(Principal::Operator) => next.run(req).await,
        Ok(Principal::Worker { .. }) => {
            WebStats::bump(&state.stats.unauthenticated, 1);
            (
                StatusCode::FORBIDDEN,
                axum::Json(
                    serde_json::json!({ "error": "the dashboard needs the operator credential" }),
                ),
            )
                .into_response()
        }
        Err(e) => refused(&state, e),
    }
}

/// `/`: with `?token=`, the login (cookie and redirect); else the page for a logged-in browser,
/// or a 401 page saying how to log in.
async fn index(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = q.get("token") {
        let token = (token.len() <= MAX_TOKEN_LEN).then_some(token.as_str());
        return match state.access.authenticate(token) {
            Ok(Principal::Operator) => {
                WebStats::bump(&state.stats.logins, 1);
                let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
                if let Some(v) = state.access.web_session() {
                    let cookie = format!(
                        "{SESSION_COOKIE}={v}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000"
                    );
                    if let Ok(v) = HeaderValue::from_str(&cookie) {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                    }
                }
                r
            }
            Ok(Principal::Worker { .. }) | Err(_) => {
                WebStats::bump(&state.stats.unauthenticated, 1);
                (
                    StatusCode::UNAUTHORIZED,
                    Html(assets::login_page("That token is wrong.")),
                )
                    .into_response()
            }
        };
    }
    match principal(&state, &headers) {
        Ok(Principal::Operator) => Html(assets::INDEX_HTML).into_response(),
        _ => {
            WebStats::bump(&state.stats.unauthenticated, 1);
            (
                StatusCode::UNAUTHORIZED,
                Html(assets::login_page(
                    "Not logged in: open the URL with ?token= that `gym-telemetry-daemon serve` printed.",
                )),
            )
                .into_response()
        }
    }
}

/// Headers on every response: no caching of data, no referrer (the login URL carries the
/// token), no framing, scripts and connections from this origin only.
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_url_escapes_the_token_and_shows_loopback() {
        let any: SocketAddr = "0.0.0.0:50153".parse().expect("addr");
        assert_eq!(
            login_url(any, Some("ab c&d")),
            "http://127.0.0.1:50153/?token=ab%20c%26d"
        );
        assert_eq!(login_url(any, None), "http://127.0.0.1:50153/");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; gt_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("gt_sessionx=1"));
        assert_eq!(session_cookie(&h), None);
    }
}
