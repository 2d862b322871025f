//! W3C trace context continued through the gateway, and its spans exported over OTLP/HTTP.

use http::Method;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message as _;

use crate::config_cli::{mjgate, spawn_listening, terminate, write_config};
use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traced_fetch(url: &str, traceparent: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut fetch = request(Method::GET, url, Some(KEY_A), "");
    fetch
        .headers_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    fetch
        .headers_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    fetch
}

/// The `traceparent` the upstream got on its last call for `path`.
fn upstream_traceparent(sim: &mjgate::tools::simulator::Simulator, path: &str) -> Vec<String> {
    let seen = sim
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.uri.starts_with(path))
        .unwrap_or_else(|| panic!("no upstream call for {path}"));
    let value = seen
        .headers
        .get("traceparent")
        .expect("the upstream call carries a traceparent")
        .to_str()
        .unwrap();
    value.split('-').map(str::to_owned).collect()
}

#[tokio::test]
async fn a_clients_trace_continues_to_the_upstream_with_the_gateway_as_the_parent() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let reply = send(traced_fetch(
        &gw.url("/mj/task/t/fetch"),
        &format!("00-{TRACE}-{CLIENT_SPAN}-01"),
    ))
    .await;
    assert_eq!(reply.status, 200);
    let parts = upstream_traceparent(&sim, "/mj/task/t/fetch");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE, "the same trace");
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the gateway's span is the parent, not the client's"
    );
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01", "the client's sampling decision is kept");
    let state = sim.requests().last().unwrap().headers["tracestate"].clone();
    assert_eq!(state, "vendor=opaque", "tracestate passes on untouched");
}

#[tokio::test]
async fn a_request_without_a_valid_trace_starts_one_and_never_passes_a_forged_one_on() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "plain", "IN_PROGRESS");
    sim.create_task(KEY_A, "forged", "IN_PROGRESS");
    assert_eq!(fetch(&gw, "plain", KEY_A).await.status, 200);
    let started = upstream_traceparent(&sim, "/mj/task/plain/fetch");
    assert_eq!(started[1].len(), 32);
    assert_ne!(started[1], "0".repeat(32));
    assert_eq!(
        started[3], "00",
        "a trace recorded nowhere is not marked sampled"
    );

    let forged = format!("00-{}-{CLIENT_SPAN}-01", TRACE.to_uppercase());
    assert_eq!(
        send(traced_fetch(&gw.url("/mj/task/forged/fetch"), &forged))
            .await
            .status,
        200
    );
    let replaced = upstream_traceparent(&sim, "/mj/task/forged/fetch");
    assert_ne!(
        replaced[1],
        TRACE.to_uppercase(),
        "an invalid traceparent is replaced"
    );
    assert_ne!(replaced[1], TRACE);
}

#[tokio::test]
async fn passthrough_continues_the_trace_too() {
    let (sim, gw) = start("").await;
    let mut submit = request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(KEY_A),
        r#"{"prompt":"a lighthouse"}"#,
    );
    submit.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CLIENT_SPAN}-01").parse().unwrap(),
    );
    let reply = send(submit).await;
    assert!(reply.status.is_success(), "{reply:?}");
    let parts = upstream_traceparent(&sim, "/mj/submit/imagine");
    assert_eq!(parts[1], TRACE);
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the client's header was replaced, not forwarded"
    );
}

/// Every span of every export the receiver got.
fn exported_spans(receiver: &Receiver) -> (Vec<Span>, Vec<String>) {
    let mut spans = Vec::new();
    let mut services = Vec::new();
    for delivery in receiver.deliveries() {
        assert_eq!(
            delivery.header("content-type"),
            "application/x-protobuf",
            "OTLP/HTTP's binary encoding"
        );
        let export = ExportTraceServiceRequest::decode(delivery.body.as_ref()).unwrap();
        for resource in export.resource_spans {
            for attribute in resource.resource.iter().flat_map(|r| r.attributes.iter()) {
                if attribute.key == "service.name" {
                    services.push(format!("{:?}", attribute.value));
                }
            }
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    (spans, services)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_the_upstream_call_a_child_of_the_request() {
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let collector = Receiver::start(&[]).await;
    let log = std::env::temp_dir().join(format!("mjgate-trace-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let file = write_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[artifacts]\nenabled = false\n\
         [log]\naccess = true\naccess_to = {:?}\n\
         [trace]\notlp_endpoint = \"http://{}/v1/traces\"\nservice_name = \"mjgate-test\"\n",
        sim.url(),
        log.display().to_string(),
        collector.addr,
    ));
    let (mut child, addr) = spawn_listening(mjgate().arg("--config").arg(&file.0));
    let url = format!("http://{addr}/mj/task/t/fetch");
    let mut traced = traced_fetch(&url, &format!("00-{TRACE}-{CLIENT_SPAN}-01"));
    traced.headers_mut().remove("tracestate");
    let reply = send(traced).await;
    assert_eq!(reply.status, 200);
    // The batch exporter sends what it holds at shutdown.
    assert!(terminate(&mut child).success());

    let (spans, services) = exported_spans(&collector);
    assert!(
        services.iter().any(|s| s.contains("mjgate-test")),
        "{services:?}"
    );
    let request_span = spans
        .iter()
        .find(|s| s.name == "request")
        .unwrap_or_else(|| panic!("no request span in {spans:#?}"));
    assert_eq!(hex(&request_span.trace_id), TRACE);
    assert_eq!(hex(&request_span.parent_span_id), CLIENT_SPAN);
    assert_eq!(request_span.kind, SpanKind::Server as i32);
    let upstream_span = spans
        .iter()
        .find(|s| s.name == "upstream")
        .unwrap_or_else(|| panic!("no upstream span in {spans:#?}"));
    assert_eq!(hex(&upstream_span.trace_id), TRACE);
    assert_eq!(upstream_span.parent_span_id, request_span.span_id);
    assert_eq!(upstream_span.kind, SpanKind::Client as i32);
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| format!("{:?}", a.value))
            .unwrap_or_default()
    };
    assert!(attribute(upstream_span, "http.response.status_code").contains("200"));
    assert!(attribute(request_span, "url.path").contains("/mj/task/t/fetch"));

    // The upstream was told of the gateway's upstream span, and the access line of both ids.
    let told = upstream_traceparent(&sim, "/mj/task/t/fetch");
    assert_eq!(told[1], TRACE);
    assert_eq!(told[2], hex(&upstream_span.span_id));
    let sent = sim.requests();
    let sent = sent.iter().find(|r| r.uri == "/mj/task/t/fetch").unwrap();
    assert!(
        !sent.headers.contains_key("tracestate"),
        "the client sent none: no empty tracestate either"
    );
    let line = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(line["trace_id"], TRACE);
    assert_eq!(line["span_id"], hex(&request_span.span_id));
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_the_requests_nothing() {
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    // A port nothing listens on: every export fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let file = write_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[artifacts]\nenabled = false\n\
         [trace]\notlp_endpoint = \"http://{dead}/v1/traces\"\notlp_timeout = \"200ms\"\n",
        sim.url(),
    ));
    let (mut child, addr) = spawn_listening(mjgate().arg("--config").arg(&file.0));
    for i in 0..50 {
        let url = format!("http://{addr}/mj/task/t/fetch");
        let reply = send(traced_fetch(&url, &format!("00-{TRACE}-{CLIENT_SPAN}-01"))).await;
        assert_eq!(reply.status, 200, "request {i}");
    }
    let exited = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    assert!(
        exited.success(),
        "the exporter's failures never stop the gateway"
    );
}
