//! How a process logs and exports its spans: log lines on stderr (filtered by
//! `RUST_LOG`, default `info`); with `REDREC_LOG_SPANS=1`, a line per span as it closes;
//! with `REDREC_OTLP_ENDPOINT` (an OTLP/HTTP collector, e.g. `http://collector:4318`),
//! every span exported in batches to `<endpoint>/v1/traces`, as service `redrec-<role>`,
//! sampled at `REDREC_TRACE_SAMPLE` (0 to 1, default 1) unless the caller's
//! `traceparent` decided.

use anyhow::{bail, Context as _, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes exported spans when the process ends.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn exporter(role: &str, endpoint: &str) -> Result<SdkTracerProvider> {
    let ratio: f64 = match env("REDREC_TRACE_SAMPLE") {
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .with_context(|| format!("REDREC_TRACE_SAMPLE must be within 0..1, not {v:?}"))?,
        None => 1.0,
    };
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        bail!("REDREC_OTLP_ENDPOINT must be an http(s) URL, not {endpoint:?}");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .context("the OTLP exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(format!("redrec-{role}"))
                .build(),
        )
        .build())
}

/// Sets up logging (and span export) for a process playing `role`.
pub fn init(role: &str) -> Result<Telemetry> {
    let spans = match env("REDREC_LOG_SPANS").as_deref() {
        Some("1") | Some("true") => FmtSpan::CLOSE,
        _ => FmtSpan::NONE,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_span_events(spans)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    // qdrant-edge warns, ten times a second per store, that its feature flags were never
    // initialized: they cannot be (the engine keeps that call private) and sit at their
    // defaults, which are what the store wants.
    let quiet = "qdrant_edge::common::flags=error"
        .parse()
        .expect("a valid directive");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info".into())
        .add_directive(quiet);
    let provider = env("REDREC_OTLP_ENDPOINT")
        .map(|e| exporter(role, e.trim()))
        .transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("redrec")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    Ok(Telemetry { provider })
}
