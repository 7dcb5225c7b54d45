//! Bearer-token authentication for every RPC.
//!
//! On loopback (the default) no token is needed: only local processes can connect. A daemon bound
//! to any other address must be given `--auth-token`; then every RPC must carry
//! `authorization: Bearer <token>`, and a missing or wrong token is answered `UNAUTHENTICATED`
//! and counted. The comparison takes the same time wherever the strings differ.

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use tonic::{service::Interceptor, Request, Status};

/// Checks the bearer token of each request (or lets everything through when no token is set).
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    token: Option<Arc<str>>,
    rejected: Counter,
}

impl AuthInterceptor {
    /// An interceptor requiring `token` (none: every request passes).
    pub fn new(token: Option<String>, rejected: Counter) -> Self {
        AuthInterceptor {
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            rejected,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(request),
            Some(_) => {
                self.rejected.inc();
                Err(Status::unauthenticated("wrong bearer token"))
            }
            None => {
                self.rejected.inc();
                Err(Status::unauthenticated(
                    "this daemon requires `authorization: Bearer <token>`",
                ))
            }
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
    fn token_is_checked_and_failures_counted() {
        let counter = Counter::default();
        let mut i = AuthInterceptor::new(Some("s3cret".into()), counter.clone());
        assert!(i.call(req(Some("Bearer s3cret"))).is_ok());
        let e = i.call(req(Some("Bearer nope"))).expect_err("wrong");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(i.call(req(None)).is_err());
        assert!(i.call(req(Some("s3cret"))).is_err());
        assert_eq!(counter.get(), 3);
    }

    #[test]
    fn no_token_lets_everything_through() {
        let counter = Counter::default();
        let mut i = AuthInterceptor::new(None, counter.clone());
        assert!(i.call(req(None)).is_ok());
        let mut empty = AuthInterceptor::new(Some(String::new()), counter.clone());
        assert!(empty.call(req(None)).is_ok());
        assert_eq!(counter.get(), 0);
    }
}
