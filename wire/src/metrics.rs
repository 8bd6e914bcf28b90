//! The process's Prometheus exposition, shared by every role: one recorder per process,
//! latencies as histograms (buckets aggregate across processes and over time), and the
//! per-route request counts and latencies every server records.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Buckets for shares (coverage).
const RATIO_BUCKETS: &[f64] = &[0.5, 0.75, 0.9, 0.99, 1.0];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ratio".into()), RATIO_BUCKETS))
            .expect("bucket lists are not empty");
        builder.install_recorder().unwrap_or_else(|e| {
            tracing::warn!("metrics recorder already installed elsewhere: {e}");
            PrometheusBuilder::new().build_recorder().handle()
        })
    })
}

/// `GET /metrics`: the exposition text.
pub async fn exposition() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle().render(),
    )
        .into_response()
}

/// `GET /metrics` for an internal role (encoder, shard): open, like the probes, so that a
/// scraper needs no cluster credential (the network keeps others out).
pub fn route<S: Clone + Send + Sync + 'static>() -> crate::auth::Route<S> {
    handle();
    crate::auth::Route::new(
        axum::http::Method::GET,
        "/metrics",
        crate::auth::Access::Open,
        axum::routing::get(exposition),
    )
}

/// Middleware: counts each request by route, method and status, and its latency by route.
pub async fn record(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("redrec_http_requests_total", "path" => path.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("redrec_http_request_duration_seconds", "path" => path)
        .record(started.elapsed().as_secs_f64());
    resp
}
