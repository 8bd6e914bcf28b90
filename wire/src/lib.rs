//! HTTP plumbing every redrec server shares: the JSON error shape, a JSON body extractor
//! whose rejections are JSON errors too, and serving with an announced address and a
//! graceful shutdown.

pub mod auth;
pub mod compact;
pub mod error;
pub mod metrics;
pub mod tls;
pub mod trace;

pub use error::{ErrorBody, ErrorDetail, HttpError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use axum::Router;
use serde::de::DeserializeOwned;

impl From<JsonRejection> for HttpError {
    fn from(r: JsonRejection) -> Self {
        if is_body_timeout(&r) {
            return Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time",
            );
        }
        let code = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => "malformed_json",
        };
        // Missing or mistyped fields are a bad request like any other client mistake.
        let status = if r.status() == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            r.status()
        };
        Self::new(status, code, r.body_text())
    }
}

/// Whether reading the body failed because it did not arrive within [`ServeOptions::body_read`].
fn is_body_timeout(r: &JsonRejection) -> bool {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = Some(r);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// `axum::Json`, but a body that does not parse answers with [`ErrorBody`].
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(v))
    }
}

/// `axum::extract::Path`, but a path that does not parse (invalid UTF-8 once
/// percent-decoded, a group id that is not a number) answers with [`ErrorBody`].
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for Path<T> {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(r) => Err(HttpError::new(r.status(), "invalid_path", r.body_text())),
        }
    }
}

/// Unknown paths answer in the same JSON shape as every other error.
pub async fn not_found() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Adds the JSON fallbacks for unknown paths and methods.
pub fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// How every server serves: how long a client may take to send a request (a connection
/// whose headers are not all in within `header_read` is closed, a body not all in within
/// `body_read` is refused with 408, so half-sent requests cannot hold connections), how
/// many requests it serves at once, and TLS.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub header_read: Duration,
    pub body_read: Duration,
    /// Most requests served at once; past it, requests are shed at once with 503
    /// `overloaded` and `Retry-After`, instead of queueing without bound. The probes
    /// are never shed.
    pub max_concurrent: usize,
    /// Serve TLS with this configuration (and announce `https://`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Requests slower than this log a warning with their trace id.
    pub slow_request: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            max_concurrent: 1024,
            tls: None,
            slow_request: Duration::from_secs(1),
        }
    }
}

/// Binds `listen` (port 0 picks a free one), prints `redrec <role> listening on http://ADDR`
/// on stdout (what supervisors and tests wait for), and serves until SIGINT or SIGTERM.
pub async fn serve(
    role: &str,
    listen: SocketAddr,
    app: Router,
    options: ServeOptions,
) -> std::io::Result<()> {
    serve_on(
        role,
        tokio::net::TcpListener::bind(listen).await?,
        app,
        options,
    )
    .await
}

/// Serves a request if fewer than [`ServeOptions::max_concurrent`] are in flight; sheds it
/// otherwise. Probes always pass: a full server is alive, and says so.
async fn admit(
    axum::extract::State(slots): axum::extract::State<Arc<tokio::sync::Semaphore>>,
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if matches!(req.uri().path(), auth::HEALTH_PATH | auth::READY_PATH) {
        return next.run(req).await;
    }
    match slots.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            ::metrics::counter!("redrec_requests_shed_total").increment(1);
            HttpError::overloaded(
                "overloaded",
                "too many requests in flight; retry shortly",
                1,
            )
            .into_response()
        }
    }
}

/// Serves one connection (plain or TLS) until it ends, or until a graceful shutdown asks
/// it to finish its requests in flight.
async fn serve_connection<I, S>(
    http: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    io: I,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<axum::body::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service)
        .into_owned();
    let _ = watcher.watch(conn).await;
}

/// Longest a stopping server waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// [`serve`] on a listener bound beforehand (a server that must know it holds its port
/// before it starts anything else).
pub async fn serve_on(
    role: &str,
    listener: tokio::net::TcpListener,
    app: Router,
    options: ServeOptions,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let addr = listener.local_addr()?;
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("redrec {role} listening on {scheme}://{addr}");
    tracing::info!(%addr, "{role} listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_concurrent.max(1)));
    let app = app
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            options.body_read,
        ))
        .layer(axum::middleware::from_fn_with_state(slots, admit))
        .layer(axum::middleware::from_fn_with_state(
            options.slow_request,
            trace::traced,
        ));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read);
    let http = Arc::new(http);
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let (tls, http, watcher) = (tls.clone(), http.clone(), graceful.watcher());
        let handshake = options.header_read;
        tokio::spawn(async move {
            let Some(acceptor) = tls else {
                return serve_connection(&http, stream, service, watcher).await;
            };
            // The handshake runs on the connection's own task, bounded like the headers.
            match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(&http, stream, service, watcher).await,
                Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// The HTTP client every tier calls the others with: short connect timeout, pooled
/// connections, no Nagle delay, the cluster credential on every call when there is one,
/// and, given a CA, TLS to servers whose certificates chain to it.
pub fn http_client(
    cluster_token: Option<&auth::Secret>,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = cluster_token {
        let mut value = reqwest::header::HeaderValue::from_str(token.expose())
            .map_err(|_| anyhow::anyhow!("the cluster credential must be printable ASCII"))?;
        value.set_sensitive(true);
        headers.insert(auth::CLUSTER_HEADER, value);
    }
    let mut builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_millis(500))
        // Shorter than the 10 s after which redrec's servers close an idle connection
        // (`--header-timeout-ms`): a connection the server may be closing is never reused.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .default_headers(headers);
    if let Some(ca) = ca {
        builder = builder.use_preconfigured_tls(tls::client_config(ca)?);
    }
    Ok(builder.build()?)
}
