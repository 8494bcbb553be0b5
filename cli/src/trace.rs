//! OpenTelemetry traces over OTLP, on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the standard variables' meanings: HTTP with protobuf
//! bodies (`http/protobuf`, port 4318 by convention; `/v1/traces` is appended to the general endpoint),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`.
//!
//! Only the spans of the ainern2d crates are exported (not the broker's, the database's or the HTTP
//! client's). A job's trace crosses the broker as the W3C `traceparent` of the job and of its events:
//! [`set_parent`] continues one, [`traceparent`] writes one. With no endpoint both do nothing, and
//! nothing is sent anywhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The protocol this build speaks; `OTEL_EXPORTER_OTLP_PROTOCOL` naming another is reported at start.
const PROTOCOL: &str = "http/protobuf";

/// Whether traces are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Flushes the spans still buffered when dropped (at the end of `main`), waiting at most 5 s for the
/// collector.
#[must_use = "dropping it ends the export; keep it until the program exits"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!("flushing the last traces to the OTLP endpoint failed: {e}");
        }
    }
}

/// The endpoint traces go to, when one is configured.
pub fn endpoint() -> Option<String> {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// The OpenTelemetry layer for the global subscriber, when an endpoint is configured: `service` is the
/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise. Problems are returned as warnings to log
/// once the subscriber is installed: a program does not refuse to start over its traces.
pub(crate) fn layer<S>(service: &str) -> (Option<impl Layer<S> + use<S>>, Telemetry, Vec<String>)
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let mut warnings = Vec::new();
    let Some(endpoint) = endpoint() else { return (None, Telemetry::default(), warnings) };
    for key in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Ok(p) = std::env::var(key)
            && p != PROTOCOL
        {
            warnings.push(format!(
                "{key}={p}: this build exports traces over {PROTOCOL} only (OTLP's port 4318, not gRPC's 4317)"
            ));
        }
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
        Ok(e) => e,
        Err(e) => {
            warnings.push(format!("not exporting traces: the OTLP exporter for {endpoint} failed to start: {e}"));
            return (None, Telemetry::default(), warnings);
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_string());
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    let tracer = provider.tracer("ainern2d");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_filter(filter_fn(|meta| meta.target().starts_with("ainern2d")));
    (Some(layer), Telemetry { provider: Some(provider) }, warnings)
}

/// Makes `span` a child of the remote span `traceparent` names (a job's, an event's). Without an
/// endpoint, or without a valid `traceparent`, the span stays where it is.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent.filter(|_| enabled()) else { return };
    let carrier = HashMap::from([("traceparent".to_string(), tp.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!("could not continue traceparent {tp}: {e}");
    }
}

/// The W3C `traceparent` of `span`, for the messages it sends: `None` without an endpoint.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}
