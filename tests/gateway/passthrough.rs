//! Every other request is forwarded untouched, streamed, and never cached.

use http::{Method, Request};
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn a_submit_reaches_the_upstream_with_its_body_headers_and_query() {
    let (sim, gw) = start("").await;
    let body = r#"{"prompt":"a red fox --v 6","notifyHook":"https://client.example/hook"}"#;
    let request = Request::builder()
        .method(Method::POST)
        .uri(gw.url("/mj/submit/imagine?trace=1&x=%20y"))
        .header("authorization", KEY_A)
        .header("content-type", "application/json")
        .header("x-client-tag", "fleet-7")
        .header("connection", "x-hop-secret")
        .header("x-hop-secret", "must not pass")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let reply = send(request).await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["code"], 1);
    assert_eq!(
        reply.header("x-simulator"),
        "submit",
        "upstream response headers pass"
    );
    assert!(
        reply.headers.get("cache-status").is_none(),
        "passthrough is not a cache route"
    );

    let seen = &sim.requests()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/mj/submit/imagine?trace=1&x=%20y");
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.headers["authorization"], KEY_A);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["x-client-tag"], "fleet-7");
    assert!(
        seen.headers.get("x-hop-secret").is_none(),
        "Connection-named headers are hop-by-hop"
    );
    assert_eq!(seen.headers["host"], sim.addr().to_string());
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["true-client-ip"], "127.0.0.1");
}

#[tokio::test]
async fn submits_are_never_cached() {
    let (sim, gw) = start("").await;
    let submit = || {
        send(request(
            Method::POST,
            &gw.url("/mj/submit/imagine"),
            Some(KEY_A),
            r#"{"prompt":"same"}"#,
        ))
    };
    let first = submit().await.json();
    let second = submit().await.json();
    assert_ne!(
        first["result"], second["result"],
        "each submit makes a new task"
    );
    assert_eq!(sim.total_calls(), 2);
}

#[tokio::test]
async fn a_submitted_task_can_be_polled_through_the_gateway() {
    let (sim, gw) = start("").await;
    let submitted = send(request(
        Method::POST,
        &gw.url("/mj-fast/mj/submit/imagine"),
        Some(KEY_A),
        r#"{"prompt":"a lighthouse"}"#,
    ))
    .await
    .json();
    let id = submitted["result"].as_str().unwrap().to_owned();
    let task = fetch(&gw, &id, KEY_A).await;
    assert_eq!(task.status, 200);
    assert_eq!(task.json()["status"], "SUBMITTED");
    assert_eq!(task.json()["prompt"], "a lighthouse");
    assert_eq!(sim.fetch_calls(&id), 1);
}

#[tokio::test]
async fn binary_bodies_stream_through_unchanged() {
    let (sim, gw) = start("").await;
    let reply = get(&gw, "/mj/image/abc", KEY_A).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "image/png");
    assert_eq!(reply.body.len(), 256 * 1024);
    let seed = b"abc".iter().fold(0u8, |a, b| a.wrapping_add(*b));
    assert!(
        reply
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u8).wrapping_add(seed))
    );
    assert_eq!(sim.total_calls(), 1);
}

#[tokio::test]
async fn other_methods_on_task_routes_pass_through_uncached() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let seed = get(&gw, "/mj/task/t/image-seed", KEY_A).await;
    assert_eq!(
        seed.status, 404,
        "the simulator has no image-seed: passed on as is"
    );
    get(&gw, "/mj/task/t/image-seed", KEY_A).await;
    assert_eq!(sim.total_calls(), 2);
}

#[tokio::test]
async fn health_endpoints_answer_without_the_upstream() {
    let (sim, gw) = start("").await;
    assert_eq!(get(&gw, "/healthz", KEY_A).await.status, 200);
    assert_eq!(get(&gw, "/readyz", KEY_A).await.status, 200);
    assert_eq!(sim.total_calls(), 0);
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let h2 = h2_client();
    for expected in ["mjgate; fwd=uri-miss; stored", "mjgate; hit"] {
        let response = h2
            .request(request(
                Method::GET,
                &gw.url("/mj/task/t/fetch"),
                Some(KEY_A),
                "",
            ))
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.headers()["cache-status"], expected);
    }
    let submit = h2
        .request(request(
            Method::POST,
            &gw.url("/mj/submit/imagine"),
            Some(KEY_A),
            r#"{"prompt":"h2"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(submit.status(), 200);
    assert_eq!(sim.fetch_calls("t"), 1);
    // The upstream is reached over HTTP/1.1 whatever the client spoke.
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.headers.get("host").is_some())
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_upstream_is_told_the_real_client_and_otherwise_never_a_claim() {
    // The test's own connections come from loopback: trusted in one gateway, not in the other.
    let (sim, trusting) = start("[server]\ntrusted_proxies = [\"127.0.0.0/8\", \"::1\"]\n").await;
    let (plain_sim, plain) = start("").await;
    let ask = |gw: &Gateway, forwarded_for: &'static str| {
        let request = Request::builder()
            .uri(gw.url("/v1/models"))
            .header("authorization", KEY_A)
            .header("x-forwarded-for", forwarded_for)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        send(request)
    };
    // A client's claim on the left, then the balancer's view of it.
    ask(&trusting, "6.6.6.6, 198.51.100.7").await;
    let seen = sim.requests().pop().unwrap();
    assert_eq!(
        seen.headers["x-real-ip"], "198.51.100.7",
        "the last untrusted hop"
    );
    assert_eq!(seen.headers["true-client-ip"], "198.51.100.7");
    assert_eq!(
        seen.headers["x-forwarded-for"], "6.6.6.6, 198.51.100.7, 127.0.0.1",
        "the chain, and this hop"
    );
    ask(&plain, "198.51.100.7").await;
    let seen = plain_sim.requests().pop().unwrap();
    assert_eq!(
        seen.headers["x-real-ip"], "127.0.0.1",
        "an untrusted peer's claim is not believed"
    );
    assert_eq!(seen.headers["true-client-ip"], "127.0.0.1");
}
