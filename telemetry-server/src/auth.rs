//! Credentials and roles: every RPC but gRPC health needs a bearer token, on loopback too.
//!
//! RL teams run this on shared GPU servers, and the server starts processes, so "only local
//! processes can connect" is no protection (any local account is local). By default the server
//! makes a random operator token on first start and keeps it in `<var-dir>/auth-token` (0600);
//! clients of the same user find it with no flag (`telemetry_core::credentials`).
//!
//! Two roles:
//!
//! - **operator** (the token file): everything.
//! - **worker**, scoped to one run: publish records of that run, heartbeat it, read. Each worker
//!   the server spawns gets its own in `GYM_TELEMETRY_AUTH_TOKEN` (never argv):
//!   `worker.<run_id>.<hex HMAC-SHA256(operator token, run_id)>`. It is derived, so it survives a
//!   restart and needs no table; it is useless for any other run and cannot be turned back into
//!   the operator token.
//!
//! Comparisons are constant-time and leak no length: the presented operator token is compared
//! through an HMAC under a per-process random key (fixed-length tags), and a worker tag is
//! verified with `ring::hmac::verify`. Failures are answered `UNAUTHENTICATED` and counted; a
//! worker asking for an operator RPC gets `PERMISSION_DENIED`. Tokens never appear in logs or
//! `Debug` output.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use ring::{hmac, rand::SecureRandom};
use tonic::{service::Interceptor, Request, Status};

const WORKER_PREFIX: &str = "worker.";
const WORKER_CONTEXT: &[u8] = b"gym-telemetry worker token v1:";
const WEB_SESSION_CONTEXT: &[u8] = b"gym-telemetry web session v1";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator credential (or an in-process caller, or a server without auth).
    Operator,
    /// A worker credential of one run.
    Worker {
        /// The only run it may write.
        run_id: String,
    },
}

impl Principal {
    /// A stable name of the credential, for binding producer ids to it.
    pub fn id(&self) -> String {
        match self {
            Principal::Operator => "operator".to_owned(),
            Principal::Worker { run_id } => format!("worker:{run_id}"),
        }
    }

    /// Whether this credential may write records of `run_id`.
    pub fn may_write(&self, run_id: &str) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Worker { run_id: own } => own == run_id,
        }
    }

    /// The principal a request was authenticated as (the interceptor puts it there; a request
    /// that did not pass through it, in-process, is the operator).
    pub fn of<T>(request: &Request<T>) -> Principal {
        request
            .extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::Operator)
    }

    /// `PERMISSION_DENIED` unless this credential may act on `run_id` (`what`: the action, for
    /// the message).
    pub fn require_run(&self, run_id: &str, what: &str) -> Result<(), Status> {
        if self.may_write(run_id) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this credential may not {what} run {run_id:?}"
            )))
        }
    }

    /// `PERMISSION_DENIED` unless this is the operator.
    pub fn require_operator(&self, what: &str) -> Result<(), Status> {
        match self {
            Principal::Operator => Ok(()),
            Principal::Worker { run_id } => Err(Status::permission_denied(format!(
                "{what} needs the operator credential; this is the worker credential of run {run_id}"
            ))),
        }
    }
}

/// The server's credentials. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    inner: Option<Arc<Keys>>,
}

struct Keys {
    /// HMAC under `check` of the operator token: what presented tokens are compared with.
    operator_tag: hmac::Tag,
    check: hmac::Key,
    /// Keyed by the operator token: signs worker tokens.
    worker: hmac::Key,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("required", &self.inner.is_some())
            .finish()
    }
}

/// Why credentials could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot make random bytes for the credentials")]
pub struct RandomError;

/// A fresh random token: 32 bytes as 64 hex digits.
pub fn random_token() -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Credentials {
    /// Credentials with `operator` as the operator token.
    pub fn new(operator: &str) -> Result<Self, RandomError> {
        let mut key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| RandomError)?;
        let check = hmac::Key::new(hmac::HMAC_SHA256, &key);
        Ok(Credentials {
            inner: Some(Arc::new(Keys {
                operator_tag: hmac::sign(&check, operator.as_bytes()),
                check,
                worker: hmac::Key::new(hmac::HMAC_SHA256, operator.as_bytes()),
            })),
        })
    }

    /// No credentials: every request is the operator (`--insecure-no-auth`).
    pub fn none() -> Self {
        Credentials { inner: None }
    }

    /// The token of a worker of `run_id` (`None` without credentials).
    pub fn worker_token(&self, run_id: &str) -> Option<String> {
        let keys = self.inner.as_ref()?;
        let tag = hmac::sign(&keys.worker, &worker_message(run_id));
        Some(format!("{WORKER_PREFIX}{run_id}.{}", hex(tag.as_ref())))
    }

    /// The value of the web dashboard's session cookie (`None` without credentials): derived
    /// from the operator token like a worker token, so it survives a restart, needs no session
    /// table, and cannot be turned back into the operator token (a leaked cookie does not give
    /// gRPC access). Rotating the token file revokes it.
    pub fn web_session(&self) -> Option<String> {
        let keys = self.inner.as_ref()?;
        Some(hex(hmac::sign(&keys.worker, WEB_SESSION_CONTEXT).as_ref()))
    }

    /// Whether `cookie` is the web session cookie's value (constant time); the operator.
    pub fn authenticate_web_session(&self, cookie: Option<&str>) -> Result<Principal, AuthError> {
        let Some(keys) = &self.inner else {
            return Ok(Principal::Operator);
        };
        let mac = unhex(cookie.ok_or(AuthError::Missing)?).ok_or(AuthError::Wrong)?;
        hmac::verify(&keys.worker, WEB_SESSION_CONTEXT, &mac)
            .map(|()| Principal::Operator)
            .map_err(|_| AuthError::Wrong)
    }

    /// Who presents `token` (`None`: no `authorization` header).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let Some(keys) = &self.inner else {
            return Ok(Principal::Operator);
        };
        let token = token.ok_or(AuthError::Missing)?;
        if let Some(rest) = token.strip_prefix(WORKER_PREFIX) {
            let (run_id, mac) = rest.rsplit_once('.').ok_or(AuthError::Wrong)?;
            let mac = unhex(mac).ok_or(AuthError::Wrong)?;
            return hmac::verify(&keys.worker, &worker_message(run_id), &mac)
                .map(|()| Principal::Worker {
                    run_id: run_id.to_owned(),
                })
                .map_err(|_| AuthError::Wrong);
        }
        hmac::verify(&keys.check, token.as_bytes(), keys.operator_tag.as_ref())
            .map(|()| Principal::Operator)
            .map_err(|_| AuthError::Wrong)
    }
}

fn worker_message(run_id: &str) -> Vec<u8> {
    let mut m = WORKER_CONTEXT.to_vec();
    m.extend_from_slice(run_id.as_bytes());
    m
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` header.
    #[error(
        "this server requires `authorization: Bearer <token>`: the owner's token is in \
         <var-dir>/auth-token (clients find it through GYM_TELEMETRY_AUTH_TOKEN, \
         GYM_TELEMETRY_AUTH_TOKEN_FILE or GYM_TELEMETRY_VAR_DIR)"
    )]
    Missing,
    /// A token that is not the operator's nor a valid worker token.
    #[error("wrong bearer token")]
    Wrong,
}

/// Authenticates each request and records its [`Principal`] in the request's extensions.
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    credentials: Credentials,
    rejected: Counter,
}

impl AuthInterceptor {
    /// An interceptor checking `credentials`, counting failures in `rejected`.
    pub fn new(credentials: Credentials, rejected: Counter) -> Self {
        AuthInterceptor {
            credentials,
            rejected,
        }
    }

    /// Checks an `authorization` header value (for HTTP endpoints such as `/metrics`).
    pub fn check_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let token = header.and_then(|v| v.strip_prefix("Bearer "));
        let r = self.credentials.authenticate(token);
        if r.is_err() {
            self.rejected.inc();
        }
        r
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.check_header(header) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Err(e) => Err(Status::unauthenticated(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut()
                .insert("authorization", a.parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn the_operator_token_is_checked_and_failures_counted() {
        let counter = Counter::default();
        let mut i = AuthInterceptor::new(Credentials::new("s3cret").expect("rng"), counter.clone());
        let ok = i.call(req(Some("Bearer s3cret"))).expect("operator");
        assert_eq!(Principal::of(&ok), Principal::Operator);
        for bad in [
            Some("Bearer nope"),
            None,
            Some("s3cret"),
            Some("Bearer s3cret2"),
            Some("Bearer "),
        ] {
            let e = i.call(req(bad)).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        assert_eq!(counter.get(), 5);
    }

    #[test]
    fn worker_tokens_name_their_run_and_cannot_be_forged() {
        let creds = Credentials::new("s3cret").expect("rng");
        let token = creds.worker_token("run-1.a").expect("token");
        assert!(!token.contains("s3cret"));
        assert_eq!(
            creds.authenticate(Some(&token)),
            Ok(Principal::Worker {
                run_id: "run-1.a".into()
            })
        );
        // Another run's name with this run's tag, a flipped digit, garbage: all refused.
        let tag = token.rsplit_once('.').expect("tag").1;
        let forged = format!("worker.run-2.{tag}");
        assert_eq!(creds.authenticate(Some(&forged)), Err(AuthError::Wrong));
        let mut flipped = token.clone();
        let last = flipped.pop().expect("digit");
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(creds.authenticate(Some(&flipped)), Err(AuthError::Wrong));
        assert_eq!(creds.authenticate(Some("worker.x")), Err(AuthError::Wrong));
        assert_eq!(
            creds.authenticate(Some("worker.x.zz")),
            Err(AuthError::Wrong)
        );
        // A token made by a server with another operator token is not valid here.
        let other = Credentials::new("other").expect("rng");
        assert_eq!(
            creds.authenticate(other.worker_token("run-1.a").as_deref()),
            Err(AuthError::Wrong)
        );
        // Worker tokens are derived: a restarted server (new random check key) accepts them.
        let restarted = Credentials::new("s3cret").expect("rng");
        assert!(restarted.authenticate(Some(&token)).is_ok());
    }

    #[test]
    fn roles_limit_what_a_worker_may_do() {
        let w = Principal::Worker { run_id: "r".into() };
        assert!(w.may_write("r") && !w.may_write("s"));
        assert_eq!(
            w.require_operator("SubmitRun").expect_err("worker").code(),
            tonic::Code::PermissionDenied
        );
        assert!(Principal::Operator.require_operator("SubmitRun").is_ok());
        assert_ne!(w.id(), Principal::Operator.id());
    }

    #[test]
    fn the_web_session_is_derived_checked_and_not_the_token() {
        let creds = Credentials::new("s3cret").expect("rng");
        let cookie = creds.web_session().expect("cookie");
        assert!(!cookie.contains("s3cret"));
        assert_eq!(
            creds.authenticate_web_session(Some(&cookie)),
            Ok(Principal::Operator)
        );
        // Survives a restart; another token's cookie, a flipped digit, garbage: refused.
        let restarted = Credentials::new("s3cret").expect("rng");
        assert!(restarted.authenticate_web_session(Some(&cookie)).is_ok());
        let other = Credentials::new("other").expect("rng");
        assert_eq!(
            creds.authenticate_web_session(other.web_session().as_deref()),
            Err(AuthError::Wrong)
        );
        let mut flipped = cookie.clone();
        let last = flipped.pop().expect("digit");
        flipped.push(if last == '0' { '1' } else { '0' });
        for bad in [flipped.as_str(), "", "zz", "s3cret"] {
            assert_eq!(
                creds.authenticate_web_session(Some(bad)),
                Err(AuthError::Wrong)
            );
        }
        assert_eq!(
            creds.authenticate_web_session(None),
            Err(AuthError::Missing)
        );
        // The cookie is not a bearer token for gRPC.
        assert_eq!(creds.authenticate(Some(&cookie)), Err(AuthError::Wrong));
        assert!(Credentials::none().web_session().is_none());
    }

    #[test]
    fn without_credentials_everyone_is_the_operator() {
        let counter = Counter::default();
        let mut i = AuthInterceptor::new(Credentials::none(), counter.clone());
        let r = i.call(req(None)).expect("open");
        assert_eq!(Principal::of(&r), Principal::Operator);
        assert_eq!(counter.get(), 0);
        assert!(Credentials::none().worker_token("r").is_none());
    }
}
