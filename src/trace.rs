//! W3C Trace Context (`traceparent`, `tracestate`) continued through the gateway, and its spans
//! exported over OTLP/HTTP when `[trace]` names a collector.
//!
//! A request on the slow path runs in the `request` span ([`crate::gateway`]); [`begin`] makes the
//! client's trace its parent (or starts one), and every upstream call runs in an `upstream` span
//! under it whose context [`outgoing`] writes into the upstream request, replacing whatever the
//! client sent. With no collector configured no span is recorded, yet the trace is still continued:
//! the upstream sees the client's trace with the gateway's own span id as the parent, the id the
//! access log writes as `span_id`. Fresh cache hits never reach the upstream and make no span.
//!
//! Parsing and writing the headers is the `opentelemetry` SDK's [`TraceContextPropagator`];
//! recording is `tracing-opentelemetry`'s layer over the SDK's batch exporter, off the request path
//! (a slow or absent collector delays and drops spans, never a request).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How spans are encoded for the collector (`trace.otlp_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
pub enum OtlpProtocol {
    /// `application/x-protobuf`, what every collector takes.
    #[default]
    #[serde(rename = "http/protobuf")]
    Protobuf,
    #[serde(rename = "http/json")]
    Json,
}

/// `[trace]`, validated: `None` when no endpoint is configured (nothing is exported).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The collector's traces URL (`http://collector:4318/v1/traces`).
    pub otlp_endpoint: String,
    pub protocol: OtlpProtocol,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The share of traces the gateway starts that are recorded; a client's `traceparent` decides
    /// for its own trace (parent-based sampling).
    pub sample_ratio: f64,
    /// Deadline for one export; a slow collector delays spans, never requests.
    pub timeout: Duration,
    /// Headers sent with every export (a collector's API key).
    pub headers: ExportHeaders,
}

/// `trace.otlp_headers`: a collector's API key is a secret, so only the names and a digest of each
/// value show in `{:?}` (and so in `/admin/config`, `check-config --diff` and logs).
#[derive(Clone, PartialEq, Default)]
pub struct ExportHeaders(pub BTreeMap<String, String>);

impl std::fmt::Debug for ExportHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(name, value)| (name, crate::redact::redacted(value.as_bytes()))),
            )
            .finish()
    }
}

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Whether spans are being recorded (the OTLP layer is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The span names the OTLP layer records: the gateway's request and its upstream calls.
pub const REQUEST_SPAN: &str = "request";
pub const UPSTREAM_SPAN: &str = "upstream";

/// A trace and one span of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceIds {
    pub fn trace_id_hex(&self) -> String {
        crate::hex::to_hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        crate::hex::to_hex(&self.span_id)
    }

    /// The `traceparent` naming this span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let text = format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            u8::from(self.sampled)
        );
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// `traceparent` as the W3C spec reads it (the SDK's propagator): version `00` exactly (a later
    /// version's first four fields, with anything after), ids of lowercase hex that are not all
    /// zeros.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_bytes(value).ok()?);
        of_headers(&headers)
    }

    fn of_context(context: &SpanContext) -> Option<Self> {
        context.is_valid().then(|| TraceIds {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            sampled: context.is_sampled(),
        })
    }

    /// A span of this trace the gateway names itself.
    fn child(trace_id: [u8; 16], sampled: bool) -> Self {
        TraceIds {
            trace_id,
            span_id: nonzero(),
            sampled,
        }
    }
}

/// The client's trace, if its `traceparent` is valid (one header line: two make it invalid).
pub fn of_headers(headers: &HeaderMap) -> Option<TraceIds> {
    let context = TraceContextPropagator::new().extract(&Extract(headers));
    TraceIds::of_context(&context.span().span_context().clone())
}

/// Makes the client's trace (from `headers`) the parent of `span`, the request's span, or starts a
/// trace when the client sent none: the ids the access log writes and the upstream is told of.
pub fn begin(span: &tracing::Span, headers: &HeaderMap) -> TraceIds {
    if exporting() {
        let parent = TraceContextPropagator::new().extract(&Extract(headers));
        let _ = span.set_parent(parent);
        if let Some(ids) = TraceIds::of_context(&span.context().span().span_context().clone()) {
            return ids;
        }
    }
    match of_headers(headers) {
        Some(client) => TraceIds::child(client.trace_id, client.sampled),
        // Started here and recorded nowhere: not sampled, so no one downstream waits for a parent.
        None => TraceIds::child(nonzero(), false),
    }
}

/// Writes the trace context of the call being made into its request's `headers`: the current
/// `upstream` span's when spans are recorded, else the request's trace with the gateway's span
/// as the parent (its `tracestate` passed on): `request`, the ids of the request the call is for.
/// What the client sent is never passed on as it was, and work no request owns (a watch's poller)
/// sends none.
pub fn outgoing(headers: &mut HeaderMap, request: Option<TraceIds>) {
    headers.remove(&TRACEPARENT);
    if exporting() {
        let context = tracing::Span::current().context();
        if context.span().span_context().is_valid() {
            headers.remove(&TRACESTATE);
            TraceContextPropagator::new().inject_context(&context, &mut Inject(headers));
            // The propagator writes `tracestate` even when it is empty; an empty one is no header.
            if headers
                .get(&TRACESTATE)
                .is_some_and(|v| v.as_bytes().iter().all(u8::is_ascii_whitespace))
            {
                headers.remove(&TRACESTATE);
            }
            return;
        }
    }
    match request {
        Some(ids) => {
            headers.insert(TRACEPARENT.clone(), ids.traceparent());
        }
        None => {
            headers.remove(&TRACESTATE);
        }
    }
}

/// The request span's attributes, in OpenTelemetry's HTTP server conventions (when recording).
pub fn describe_request<B>(span: &tracing::Span, request: &http::Request<B>, route: &str) {
    span.record("otel.kind", "server");
    span.set_attribute("http.request.method", request.method().as_str().to_owned());
    span.set_attribute("url.path", request.uri().path().to_owned());
    span.set_attribute("http.route", route.to_owned());
    span.set_attribute(
        "network.protocol.version",
        match request.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        },
    );
}

/// The answer's status and cache outcome on the request span (when recording).
pub fn describe_answer(
    span: &tracing::Span,
    status: http::StatusCode,
    cache: Option<&'static str>,
) {
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if let Some(cache) = cache {
        span.set_attribute("mjgate.cache", cache);
    }
    if status.is_server_error() {
        span.set_status(opentelemetry::trace::Status::error(
            status.as_str().to_owned(),
        ));
    }
}

/// The span of one upstream call (recorded only when exporting: a `debug` span the log's filter
/// leaves out, so log lines keep their shape).
pub fn upstream_span(method: &http::Method, path_and_query: &str) -> tracing::Span {
    let span = tracing::debug_span!(target: "mjgate::upstream", "upstream", otel.kind = "client");
    if exporting() && !span.is_disabled() {
        span.set_attribute("http.request.method", method.as_str().to_owned());
        // The path only: a query may carry what a client did not mean to have recorded.
        let path = path_and_query.split('?').next().unwrap_or("/");
        span.set_attribute("url.path", path.to_owned());
    }
    span
}

/// The upstream's answer on its call's span (when recording).
pub fn upstream_answer<E: std::fmt::Display>(
    span: &tracing::Span,
    answer: Result<http::StatusCode, &E>,
) {
    if !exporting() || span.is_disabled() {
        return;
    }
    match answer {
        Ok(status) => {
            span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.set_status(opentelemetry::trace::Status::error(
                    status.as_str().to_owned(),
                ));
            }
        }
        Err(e) => {
            span.set_attribute("error.type", e.to_string());
            span.set_status(opentelemetry::trace::Status::error(e.to_string()));
        }
    }
}

/// Whether spans are recorded and exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The exporter `[trace]` configures, ready to become a `tracing` layer ([`Export::layer`]).
pub struct Export {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("trace.otlp_endpoint: {0}")]
pub struct ExportError(String);

impl Export {
    /// Builds the OTLP/HTTP exporter and its batch processor (a thread of its own). Nothing is
    /// recorded until [`layer`](Self::layer) is installed.
    pub fn new(config: &TraceConfig) -> Result<Self, ExportError> {
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        use opentelemetry_sdk::trace::Sampler;
        let protocol = match config.protocol {
            OtlpProtocol::Protobuf => Protocol::HttpBinary,
            OtlpProtocol::Json => Protocol::HttpJson,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(config.otlp_endpoint.clone())
            .with_timeout(config.timeout)
            .with_headers(config.headers.0.clone().into_iter().collect())
            .build()
            .map_err(|e| ExportError(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        Ok(Export { provider })
    }

    /// The `tracing` layer that records the gateway's `request` and `upstream` spans (nothing
    /// else: log events stay log lines), whatever `log.filter` says.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + Send + Sync + use<S>
    where
        S: tracing::Subscriber
            + for<'span> tracing_subscriber::registry::LookupSpan<'span>
            + Send
            + Sync,
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::Layer as _;
        EXPORTING.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("mjgate"))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.is_span()
                    && metadata.target().starts_with("mjgate")
                    && matches!(metadata.name(), REQUEST_SPAN | UPSTREAM_SPAN)
            }))
    }

    /// Sends what is still queued (within the export timeout) and stops the exporter's thread.
    /// Blocking: call it off the runtime's threads.
    pub fn shutdown(&self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// A random id that is not all zeros (which W3C reserves for "none").
fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = std::array::from_fn(|_| rand::random());
        if id != [0; N] {
            return id;
        }
    }
}

/// The request's headers as the propagator reads them; a header sent twice reads as absent (the
/// spec makes two `traceparent` lines invalid).
struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let mut values = self.0.get_all(key).iter();
        let value = values.next()?;
        let value = value.to_str().ok()?;
        if key == TRACEPARENT.as_str() && (values.next().is_some() || !fields_sized(value)) {
            return None;
        }
        Some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Whether a `traceparent`'s first four fields have the sizes the spec gives them (the SDK reads
/// its ids as numbers, so it would take a short one).
fn fields_sized(traceparent: &str) -> bool {
    let mut fields = traceparent.trim().split('-');
    [2, 32, 16, 2]
        .iter()
        .all(|&size| fields.next().is_some_and(|field| field.len() == size))
}

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_specs_example_and_refuses_what_it_forbids() {
        let ids =
            TraceIds::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(ids.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.span_id_hex(), "00f067aa0ba902b7");
        assert!(ids.sampled);
        assert_eq!(
            ids.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
            "",
        ] {
            assert_eq!(TraceIds::parse(bad.as_bytes()), None, "{bad}");
        }
        assert!(
            TraceIds::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later")
                .is_some(),
            "a later version's fields are read, the rest ignored"
        );
    }
}
