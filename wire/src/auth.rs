//! Who may call what. The public API takes **API keys** with scopes (`read`, `write`,
//! `admin`); internal calls (router → encoder and nodes, node → node, `redrec cluster`)
//! carry the **cluster credential**, a shared token. Secrets are kept as SHA-256 digests
//! and compared in constant time.
//!
//! Each server declares its routes in a table ([`Route`]: method, path, access, handler),
//! builds its router from it ([`build`]), and exposes the table, so a test can walk every
//! route a server has, including one added later.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::HttpError;

/// The probes every server answers, open to anyone and never shed.
pub const HEALTH_PATH: &str = "/healthz";
pub const READY_PATH: &str = "/readyz";

/// Header carrying the cluster credential on internal calls.
pub const CLUSTER_HEADER: &str = "x-redrec-cluster-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Recommend, search, get items.
    Read,
    /// Ingest and delete items.
    Write,
    /// Cluster status and metrics; an admin key may do everything.
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown scope {other:?} (read, write, admin)")),
        }
    }
}

/// A secret given on the command line or in the environment; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health and readiness probes).
    Open,
    /// An API key with this scope (or `admin`).
    Key(Scope),
    /// The cluster credential.
    Cluster,
}

type Hash = [u8; 32];

type KeyedLimiter = governor::DefaultKeyedRateLimiter<usize>;

fn digest(secret: &str) -> Hash {
    Sha256::digest(secret.as_bytes()).into()
}

/// The API keys a server accepts, as digests with their scopes.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<(Hash, BTreeSet<Scope>)>,
}

impl ApiKeys {
    /// Parses `SCOPES:KEY` entries separated by commas or new lines, where SCOPES is
    /// `read`, `write` or `admin`, or several joined by `+`, and KEY is the key itself or
    /// `sha256:` and its digest in hex (so a key file need not hold the keys). Several
    /// keys may share scopes: rotate by adding the new key, then removing the old one.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for entry in spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (scopes, key) = entry
                .split_once(':')
                .ok_or_else(|| "an API key is SCOPES:KEY (e.g. read:…)".to_string())?;
            let scopes = scopes
                .split('+')
                .map(str::parse)
                .collect::<Result<BTreeSet<Scope>, _>>()?;
            let hash = match key.strip_prefix("sha256:") {
                Some(hex) => parse_hex(hex)?,
                None if key.len() >= 16 => digest(key),
                None => return Err("an API key must have at least 16 characters".into()),
            };
            keys.push((hash, scopes));
        }
        if keys.is_empty() {
            return Err("no API key given".into());
        }
        Ok(Self { keys })
    }

    /// Which key was presented (its index) and its scopes, if it is one of these (every
    /// key is compared).
    fn find(&self, presented: &str) -> Option<(usize, &BTreeSet<Scope>)> {
        let hash = digest(presented);
        let mut found = None;
        for (i, (k, scopes)) in self.keys.iter().enumerate() {
            if bool::from(k.ct_eq(&hash)) {
                found = Some((i, scopes));
            }
        }
        found
    }
}

fn parse_hex(hex: &str) -> Result<Hash, String> {
    let bad = || format!("sha256:{hex}: expected 64 hex digits");
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// What a server checks: API keys (public routes) and the cluster credential (internal
/// routes). Without keys, public routes are open; without a credential, internal ones.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    keys: Option<Arc<ApiKeys>>,
    cluster: Option<Hash>,
    /// Requests per second each API key may make (bursts of as many).
    rate: Option<Arc<KeyedLimiter>>,
}

impl Guard {
    pub fn new(keys: Option<ApiKeys>, cluster_token: Option<&Secret>) -> Self {
        Self {
            keys: keys.map(Arc::new),
            cluster: cluster_token.map(|t| digest(t.expose())),
            rate: None,
        }
    }

    /// Limits each API key to `per_second` requests a second (bursts of as many); past
    /// it, 429 `rate_limited` with `Retry-After`.
    pub fn with_rate_limit(mut self, per_second: u32) -> Self {
        self.rate = std::num::NonZeroU32::new(per_second)
            .map(|n| Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(n))));
        self
    }

    fn check(&self, access: Access, headers: &HeaderMap) -> Result<(), HttpError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match access {
            Access::Open => Ok(()),
            Access::Cluster => {
                let Some(known) = &self.cluster else {
                    return Ok(());
                };
                match header(CLUSTER_HEADER) {
                    Some(t) if bool::from(known.ct_eq(&digest(t))) => Ok(()),
                    Some(_) => Err(forbidden("the cluster credential is wrong")),
                    None => Err(unauthenticated(&format!(
                        "internal route: send the cluster credential in {CLUSTER_HEADER}"
                    ))),
                }
            }
            Access::Key(scope) => {
                let Some(keys) = &self.keys else {
                    return Ok(());
                };
                let presented = header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .or_else(|| header("x-api-key"));
                let Some(presented) = presented else {
                    return Err(unauthenticated(
                        "send an API key as `Authorization: Bearer KEY` or `x-api-key`",
                    ));
                };
                let (key, scopes) = keys
                    .find(presented.trim())
                    .ok_or_else(|| unauthenticated("unknown API key"))?;
                if !(scopes.contains(&scope) || scopes.contains(&Scope::Admin)) {
                    return Err(forbidden(&format!(
                        "this API key lacks the {scope:?} scope"
                    )));
                }
                match &self.rate {
                    Some(limiter) if limiter.check_key(&key).is_err() => Err(HttpError {
                        retry_after: Some(1),
                        ..HttpError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limited",
                            "this API key is over its request rate; retry shortly",
                        )
                    }),
                    _ => Ok(()),
                }
            }
        }
    }
}

fn unauthenticated(message: &str) -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

fn forbidden(message: &str) -> HttpError {
    HttpError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// One route of a server's table.
pub struct Route<S> {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub handler: MethodRouter<S>,
}

impl<S> Route<S> {
    pub fn new(
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<S>,
    ) -> Self {
        Self {
            method,
            path,
            access,
            handler,
        }
    }
}

/// Routes that all want the cluster credential: `(method, path, handler)`.
pub fn internal<S>(routes: Vec<(Method, &'static str, MethodRouter<S>)>) -> Vec<Route<S>> {
    routes
        .into_iter()
        .map(|(method, path, handler)| Route::new(method, path, Access::Cluster, handler))
        .collect()
}

/// The open probes every server has: `/healthz` (the process answers) and `/readyz`
/// (answered by `ready`).
pub fn probes<S: Clone + Send + Sync + 'static>(ready: MethodRouter<S>) -> Vec<Route<S>> {
    async fn ok() -> &'static str {
        "ok"
    }
    vec![
        Route::new(
            Method::GET,
            "/healthz",
            Access::Open,
            axum::routing::get(ok),
        ),
        Route::new(Method::GET, "/readyz", Access::Open, ready),
    ]
}

async fn enforce(
    State((guard, access)): State<(Guard, Access)>,
    req: Request,
    next: Next,
) -> Response {
    match guard.check(access, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let mut resp = e.into_response();
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            resp
        }
    }
}

/// The router of a route table, each route checked by `guard` for its access.
pub fn build<S: Clone + Send + Sync + 'static>(routes: Vec<Route<S>>, guard: &Guard) -> Router<S> {
    routes.into_iter().fold(Router::new(), |router, r| {
        let layer = axum::middleware::from_fn_with_state((guard.clone(), r.access), enforce);
        router.route(r.path, r.handler.route_layer(layer))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_have_scopes_and_the_credential_guards_internal_routes() {
        let hashed = format!("write:sha256:{}", {
            let d = digest("writer-key-0123456789");
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        });
        let keys = ApiKeys::parse(&format!(
            "read:reader-key-0123456789,{hashed}\nadmin:admin-key-0123456789"
        ))
        .unwrap();
        let guard = Guard::new(Some(keys), Some(&Secret::new("cluster-secret")));
        let read = Access::Key(Scope::Read);
        let write = Access::Key(Scope::Write);
        let status = |a: Access, h: &[(&'static str, &str)]| {
            guard.check(a, &headers(h)).map_err(|e| e.status.as_u16())
        };
        assert_eq!(status(read, &[]), Err(401));
        assert_eq!(
            status(read, &[("authorization", "Bearer reader-key-0123456789")]),
            Ok(())
        );
        assert_eq!(
            status(write, &[("x-api-key", "reader-key-0123456789")]),
            Err(403)
        );
        assert_eq!(
            status(write, &[("x-api-key", "writer-key-0123456789")]),
            Ok(())
        );
        assert_eq!(
            status(read, &[("x-api-key", "writer-key-0123456789")]),
            Err(403)
        );
        assert_eq!(
            status(write, &[("x-api-key", "admin-key-0123456789")]),
            Ok(())
        );
        assert_eq!(
            status(read, &[("x-api-key", "nobody-key-0123456789")]),
            Err(401)
        );
        assert_eq!(status(Access::Cluster, &[]), Err(401));
        assert_eq!(
            status(Access::Cluster, &[(CLUSTER_HEADER, "wrong")]),
            Err(403)
        );
        assert_eq!(
            status(Access::Cluster, &[(CLUSTER_HEADER, "cluster-secret")]),
            Ok(())
        );
        assert_eq!(status(Access::Open, &[]), Ok(()));
        // Without keys or a credential, nothing is checked.
        assert!(Guard::default().check(write, &HeaderMap::new()).is_ok());
        assert!(ApiKeys::parse("read:short").is_err());
        assert!(ApiKeys::parse("root:0123456789abcdef").is_err());
        assert!(ApiKeys::parse("").is_err());
    }
}
