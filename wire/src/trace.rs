//! One trace per request across the tiers (W3C Trace Context): every server runs each
//! request in a `request` span carrying the trace id (the caller's `traceparent`, or a
//! new one), and every call it makes to another tier carries the trace on (a child span
//! id), so a recommend's lines in the router's, the encoder's and every shard node's logs
//! share one id. Answers carry `traceparent` back. A request slower than the server's
//! threshold logs a warning with its trace id. Spans are logged when they close if the
//! process runs with `REDREC_LOG_SPANS=1`, and exported over OTLP with
//! `REDREC_OTLP_ENDPOINT` (see the binary's telemetry set-up), in the caller's trace.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: Context;
}

/// A position in a trace: the trace and this tier's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl Context {
    /// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; ids of zeros are invalid.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex(version) && hex(trace) && hex(span) && hex(flags) && flags.len() == 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace.
    pub fn root() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            span_id: rand::random::<u64>().max(1),
            sampled: true,
        }
    }

    /// The same trace, a new span in it.
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::random::<u64>().max(1),
            ..*self
        }
    }

    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.sampled as u8
        )
    }

    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// The trace of the request this task serves, if any.
pub fn current() -> Option<Context> {
    CURRENT.try_with(|c| *c).ok()
}

/// `req`, carrying the current trace on to the next tier: as a child of the innermost
/// span when spans are exported (so the next tier's span has an exported parent), else of
/// a fresh span id.
pub fn inject(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let Some(c) = current() else {
        return req;
    };
    let exported = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone();
    let next = match exported.is_valid() {
        true => Context {
            span_id: u64::from_be_bytes(exported.span_id().to_bytes()),
            ..c
        },
        false => c.child(),
    };
    req.header(TRACEPARENT, next.header())
}

/// The OpenTelemetry form of a caller's position in a trace.
fn remote(c: &Context) -> opentelemetry::Context {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let flags = if c.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(c.trace_id.to_be_bytes()),
        SpanId::from_bytes(c.span_id.to_be_bytes()),
        flags,
        true,
        TraceState::default(),
    ))
}

/// Middleware: runs the request in its trace (see the module), and warns of requests
/// slower than `slow`.
pub async fn traced(State(slow): State<Duration>, req: Request, next: Next) -> Response {
    let parent = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(Context::parse);
    let span = tracing::info_span!(
        target: "redrec::trace",
        "request",
        trace_id = tracing::field::Empty,
        method = %req.method(),
        path = %req.uri().path(),
    );
    // Exported spans (OTLP) join the caller's trace; this span's ids are then theirs.
    if let Some(p) = &parent {
        let _ = span.set_parent(remote(p));
    }
    let exported = span.context().span().span_context().clone();
    let ctx = match (exported.is_valid(), parent) {
        (true, _) => Context {
            trace_id: u128::from_be_bytes(exported.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(exported.span_id().to_bytes()),
            sampled: exported.is_sampled(),
        },
        (false, Some(p)) => p.child(),
        (false, None) => Context::root(),
    };
    span.record("trace_id", tracing::field::display(ctx.trace_hex()));
    let started = Instant::now();
    let mut resp = CURRENT
        .scope(ctx, next.run(req).instrument(span.clone()))
        .await;
    let took = started.elapsed();
    if took >= slow {
        tracing::warn!(
            parent: &span,
            took_ms = took.as_millis() as u64,
            status = resp.status().as_u16(),
            "slow request"
        );
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.header()) {
        resp.headers_mut().insert(TRACEPARENT, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = Context::parse(h).unwrap();
        assert_eq!(c.header(), h);
        assert_eq!(c.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.span_id, c.span_id);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(Context::parse(bad), None, "{bad}");
        }
    }
}
