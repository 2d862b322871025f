//! What an adversarial client can and cannot do: broken bodies are the client's error, slow uploads
//! cannot starve task fetches, a request is cached under exactly the credential the upstream sees, one
//! client's validators never reach a shared upstream call, and requests HTTP forbids are refused.
//! Raw sockets where the bytes on the wire are the point.

use std::time::Duration;

use http::Method;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// `{"code": 400, "description": ..., "type": "mjgate_error"}` in a raw HTTP/1.1 answer, or the panic
/// names the answer.
fn assert_json_error(answer: &str, status: u16) -> String {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected {status}: {answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"));
    assert_eq!(json["code"], status, "{answer}");
    assert_eq!(json["type"], "mjgate_error", "{answer}");
    json["description"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn broken_and_abandoned_upload_bodies_are_the_clients_error_and_never_open_the_breaker() {
    // `passthrough_buffer = 0` streams every body through the upstream client, where the failure
    // surfaces inside its error; the default reads small bodies first. Both must hold.
    for buffer in ["0", "\"64KiB\""] {
        let (sim, gw) = start(&format!(
            "[upstream]\nbreaker_failures = 2\n[server]\npassthrough_buffer = {buffer}\n"
        ))
        .await;
        sim.create_task(KEY_A, "t", "SUCCESS");
        for _ in 0..6 {
            // A chunk size that is not hex.
            let answer = raw(
                &gw,
                &format!(
                    "POST /mj/submit/imagine HTTP/1.1\r\nhost: g\r\nauthorization: {KEY_A}\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\nzz\r\nxx\r\n"
                ),
            )
            .await;
            let description = assert_json_error(&answer, 400);
            assert!(
                !description.contains("Body stream") && !description.contains("chunk"),
                "the gateway's words, not hyper's: {description}"
            );
            // An upload abandoned half way: the client closes after 10 of 100 bytes.
            let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            let head = format!(
                "POST /mj/submit/imagine HTTP/1.1\r\nhost: g\r\nauthorization: {KEY_A}\r\ncontent-length: 100\r\n\r\n{{\"prompt\":"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            drop(stream);
        }
        // Let the abandoned uploads be noticed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ready = get(&gw, "/readyz", KEY_A).await;
        assert_eq!(ready.status, 200, "buffer {buffer}: {:?}", ready.body);
        assert_eq!(fetch(&gw, "t", KEY_A).await.status, 200, "buffer {buffer}");
        let submit = send(request(
            Method::POST,
            &gw.url("/mj/submit/imagine"),
            Some(KEY_A),
            "{\"prompt\":\"ok\"}",
        ))
        .await;
        assert_eq!(submit.status, 200, "buffer {buffer}");
        let metrics = scrape(&gw).await;
        assert_eq!(metrics.value("mjgate_upstream_circuit_open", &[]), 0.0);
        assert!(
            metrics.value("mjgate_client_errors_total", &[("reason", "body_broken")]) >= 6.0,
            "buffer {buffer}: {}",
            metrics.text
        );
    }
}

/// `n` uploads of 1,000 bytes, each under an invented credential, that send one byte and stop there.
async fn start_uploads(gw: &Gateway, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut uploads = Vec::new();
    for n in 0..n {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST /mj/submit/imagine HTTP/1.1\r\nhost: g\r\nauthorization: Bearer invented-{n}\r\ncontent-length: 1000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        uploads.push(stream);
    }
    uploads
}

#[tokio::test]
async fn slow_uploads_under_invented_credentials_cannot_starve_task_fetches() {
    // Streaming bodies (no buffer): trickling uploads fill passthrough's share, never the rest.
    let (sim, gw) = start(
        "[upstream]\nmax_in_flight = 4\nmax_in_flight_per_credential = 4\nqueue_timeout = \"100ms\"\n[server]\npassthrough_buffer = 0\n",
    )
    .await;
    let trickles = start_uploads(&gw, 6).await;
    // Passthrough's share (half of 4) is taken by the trickles.
    poll_until("the uploads take passthrough's two slots", || async {
        scrape(&gw).await.value("mjgate_upstream_in_flight", &[]) >= 2.0
    })
    .await;
    for n in 0..8 {
        sim.create_task(KEY_A, &format!("t{n}"), "IN_PROGRESS");
        let reply = fetch(&gw, &format!("t{n}"), KEY_A).await;
        assert_eq!(reply.status, 200, "fetch {n}: {:?}", reply.body);
    }
    drop(trickles);

    // With the default buffer, a trickling small body takes no upstream slot at all.
    let (sim, gw) = start(
        "[upstream]\nmax_in_flight = 2\nmax_in_flight_per_credential = 2\nqueue_timeout = \"100ms\"\n",
    )
    .await;
    let trickles = start_uploads(&gw, 20).await;
    for n in 0..8 {
        sim.create_task(KEY_A, &format!("t{n}"), "IN_PROGRESS");
        assert_eq!(fetch(&gw, &format!("t{n}"), KEY_A).await.status, 200);
    }
    let submit = send(request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(KEY_B),
        "{\"prompt\":\"ok\"}",
    ))
    .await;
    assert_eq!(submit.status, 200, "other submits still go through");
    let submits = sim
        .requests()
        .iter()
        .filter(|r| r.uri.contains("/submit/"))
        .count();
    assert_eq!(submits, 1, "no trickling upload reached the upstream");
    drop(trickles);
}

#[tokio::test]
async fn a_credential_named_in_connection_is_refused_not_filed_under_another_partition() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    for (header, value) in [("authorization", KEY_A), ("mj-api-secret", "secret-a")] {
        for connection in [
            "close, authorization",
            "close, Authorization, mj-api-secret",
        ] {
            let answer = raw(
                &gw,
                &format!(
                    "GET /mj/task/t/fetch HTTP/1.1\r\nhost: g\r\n{header}: {value}\r\nconnection: {connection}\r\n\r\n"
                ),
            )
            .await;
            assert_json_error(&answer, 400);
        }
    }
    assert_eq!(sim.total_calls(), 0);
    let reply = fetch(&gw, "t", KEY_A).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["id"],
        "t",
        "A's own task, not an anonymous answer"
    );
    // Connection naming other headers is as before.
    let answer = raw(
        &gw,
        &format!(
            "GET /mj/task/t/fetch HTTP/1.1\r\nhost: g\r\nauthorization: {KEY_A}\r\nconnection: close, x-trace\r\nx-trace: 1\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[tokio::test]
async fn cached_routes_call_the_upstream_without_one_clients_range_or_validators() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    sim.create_task(KEY_A, "u", "SUCCESS");
    let per_client = [
        ("range", "bytes=0-3"),
        ("if-range", "\"abc\""),
        ("if-none-match", "\"abc\""),
        ("if-match", "\"abc\""),
        ("if-modified-since", "Sun, 29 Nov 2026 10:00:00 GMT"),
        ("if-unmodified-since", "Sun, 29 Nov 2026 10:00:00 GMT"),
        ("accept", "text/event-stream"),
    ];
    let with_headers = |method: Method, path: &str, body: &str| {
        let mut request = request(method, &gw.url(path), Some(KEY_A), body);
        for (name, value) in per_client {
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        request
    };
    let fetched = send(with_headers(Method::GET, "/mj/task/t/fetch", "")).await;
    assert_eq!(fetched.status, 200, "the whole answer, whatever was asked");
    assert_eq!(fetched.json()["id"], "t");
    let batch = send(with_headers(
        Method::POST,
        "/mj/task/list-by-condition",
        r#"{"ids":["u"]}"#,
    ))
    .await;
    assert_eq!(batch.status, 200);
    let upstream = sim.requests();
    assert_eq!(upstream.len(), 2);
    for call in &upstream {
        for (name, _) in per_client.iter().filter(|(n, _)| *n != "accept") {
            assert!(
                !call.headers.contains_key(*name),
                "{} carried {name}",
                call.uri
            );
        }
        assert_eq!(call.headers["accept"], "application/json", "{}", call.uri);
    }
}

#[tokio::test]
async fn several_credential_headers_are_refused_on_every_route_even_during_a_backoff() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    sim.inject(
        Fault::RateLimited {
            retry_after: Some(30),
        },
        1,
    );
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 429);
    let calls = sim.total_calls();
    for (second, value) in [
        ("authorization", KEY_B),
        ("mj-api-secret", "junk"),
        ("mj-api-secret", ""),
    ] {
        for (method, path, body) in [
            (Method::GET, "/mj/task/t/fetch", ""),
            (Method::GET, "/mj/task/t/fetch?wait=1s", ""),
            (Method::GET, "/mj/task/t/events", ""),
            (
                Method::POST,
                "/mj/task/list-by-condition",
                r#"{"ids":["t"]}"#,
            ),
            (Method::POST, "/mj/submit/imagine", "{}"),
        ] {
            let mut request = request(method, &gw.url(path), Some(KEY_A), body);
            request.headers_mut().append(second, value.parse().unwrap());
            let reply = send(request).await;
            assert_eq!(reply.status, 400, "{path} with a second {second}");
            assert!(
                reply.json()["description"]
                    .as_str()
                    .unwrap()
                    .contains("one credential"),
                "{path}"
            );
        }
    }
    assert_eq!(sim.total_calls(), calls, "none reached the upstream");
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_client_errors_total", &[("reason", "credentials")]),
        15.0
    );
}

#[tokio::test]
async fn dot_segments_asterisk_and_connect_never_reach_the_upstream() {
    let sim = Simulator::start().await.unwrap();
    let gw = start_gateway(config(&format!("{}/api", sim.url()), "")).await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    for target in [
        "GET /mj/../admin/secret",
        "GET /mj/task/../fetch",
        "GET /mj/task/./fetch",
        "GET /../mj/task/t/fetch",
        "GET /mj/%2e%2e/admin",
        "GET /mj/%2E%2E%2fadmin",
        "POST /mj/submit/../../admin",
        "GET /mj/task/..%5c..%5cadmin/fetch",
        "OPTIONS *",
    ] {
        let answer = raw(
            &gw,
            &format!("{target} HTTP/1.1\r\nhost: g\r\nauthorization: {KEY_A}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"),
        )
        .await;
        assert_json_error(&answer, 400);
    }
    let answer = raw(
        &gw,
        "CONNECT 127.0.0.1:443 HTTP/1.1\r\nhost: 127.0.0.1:443\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_json_error(&answer, 405);
    let answer = raw(
        &gw,
        &format!("TRACE /mj/task/t/fetch HTTP/1.1\r\nhost: g\r\nauthorization: {KEY_A}\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_json_error(&answer, 405);
    assert_eq!(sim.total_calls(), 0);
    // Dots inside a segment are no dot segment.
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 200);
    assert_eq!(get(&gw, "/mj/task/a.b/fetch", KEY_A).await.status, 404);
}

#[tokio::test]
async fn http_1_1_without_host_or_with_two_is_refused_even_for_a_cached_task() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 200);
    for hosts in ["", "host: a\r\nhost: b\r\n"] {
        for path in ["/mj/task/t/fetch", "/mj/submit/imagine"] {
            let answer = raw(
                &gw,
                &format!(
                    "GET {path} HTTP/1.1\r\n{hosts}authorization: {KEY_A}\r\nconnection: close\r\n\r\n"
                ),
            )
            .await;
            let description = assert_json_error(&answer, 400);
            assert!(description.contains("Host"), "{description}");
        }
    }
    // HTTP/1.0 may leave it out, and the cached task is a hit.
    let answer = raw(
        &gw,
        &format!("GET /mj/task/t/fetch HTTP/1.0\r\nauthorization: {KEY_A}\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    assert!(answer.contains("cache-status: mjgate; hit"), "{answer}");
    assert_eq!(sim.total_calls(), 1);
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_client_errors_total", &[("reason", "host")]),
        4.0
    );
}

#[tokio::test]
async fn a_body_on_get_is_refused_so_nothing_can_be_smuggled_onto_a_pooled_connection() {
    let (sim, gw) = start("").await;
    // A GET whose body is a whole second request: an upstream that does not read GET bodies would
    // take it for the next request on the connection, and answer another client with it.
    let smuggled = "POST /mj/submit/imagine HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-eve\r\ncontent-length: 200\r\n\r\n{\"prompt\":\"";
    for method in ["GET", "HEAD", "DELETE", "OPTIONS"] {
        let answer = raw(
            &gw,
            &format!(
                "{method} /mj/echo HTTP/1.1\r\nhost: g\r\nauthorization: Bearer sk-eve\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        )
        .await;
        if method == "HEAD" {
            assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        } else {
            let description = assert_json_error(&answer, 400);
            assert!(description.contains("cannot carry a body"), "{description}");
        }
    }
    // Over HTTP/2 a body needs no Content-Length.
    let h2 = h2_client();
    let mut get = request(Method::GET, &gw.url("/mj/echo"), Some(KEY_A), smuggled);
    get.headers_mut().remove("content-length");
    let response = h2.request(get).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(sim.total_calls(), 0);
    // An empty body is no body.
    let answer = raw(
        &gw,
        "GET /mj/echo HTTP/1.1\r\nhost: g\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

#[tokio::test]
async fn transfer_and_content_codings_the_gateway_cannot_decode_are_refused() {
    let (sim, gw) = start("").await;
    let answer = raw(
        &gw,
        "POST /mj/submit/imagine HTTP/1.1\r\nhost: g\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_json_error(&answer, 501);
    let mut batch = request(
        Method::POST,
        &gw.url("/mj/task/list-by-condition"),
        Some(KEY_A),
        r#"{"ids":["t"]}"#,
    );
    batch
        .headers_mut()
        .insert("content-encoding", "br".parse().unwrap());
    assert_eq!(send(batch).await.status, 415);
    assert_eq!(sim.total_calls(), 0);
}

#[tokio::test]
async fn an_upstream_hanging_up_mid_call_is_a_502_but_never_opens_the_breaker() {
    // An upstream path that closes the connection without an answer (as some answer a large upload
    // with an early 413 and close): any client can trigger it, so it must not take the gateway out.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            let mut head = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut head).await;
            drop(stream);
        }
    });
    let gw = start_gateway(config(&url, "[upstream]\nbreaker_failures = 2\n")).await;
    for _ in 0..6 {
        let reply = send(request(
            Method::POST,
            &gw.url("/mj/upload"),
            Some(KEY_A),
            "{}",
        ))
        .await;
        assert_eq!(reply.status, 502);
    }
    assert_eq!(get(&gw, "/readyz", KEY_A).await.status, 200);
    let metrics = scrape(&gw).await;
    assert_eq!(metrics.value("mjgate_upstream_circuit_open", &[]), 0.0);
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_head_timeout() {
    // Two slots, two silent clients: hyper's head timer starts with the first byte, so without the
    // gateway's own deadline they would hold both slots until the idle check (two idle timeouts).
    let (sim, gw) = start(
        "[server]\nmax_connections = 2\nheader_read_timeout = \"300ms\"\nidle_timeout = \"1h\"\n",
    )
    .await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    for mut stream in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
        )
        .await
        .expect("closed well before the idle timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert_eq!(
        fetch(&gw, "t", KEY_A).await.status,
        200,
        "the slots are free"
    );
}

#[tokio::test]
async fn batch_bodies_trickled_in_are_charged_what_they_sent_and_past_the_budget_get_503() {
    use tokio::io::AsyncReadExt;
    let (sim, gw) = start(
        "[batch]\nmax_body = \"1MiB\"\n[server]\nbody_buffer_total = \"1MiB\"\nbody_read_timeout = \"30s\"\n",
    )
    .await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    // Clients declare 600 KiB bodies and trickle them: two whole ones would hold more than the
    // budget, but what they have sent so far is all they hold.
    let head = format!(
        "POST /mj/task/list-by-condition HTTP/1.1\r\nHost: gw\r\nAuthorization: {KEY_A}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        600 << 10
    );
    let buffered = || async {
        scrape(&gw)
            .await
            .value("mjgate_request_body_buffered_bytes", &[])
    };
    let mut first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for client in [&mut first, &mut second] {
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(&vec![b' '; 100 << 10]).await.unwrap();
    }
    poll_until("both have their first 100 KiB held", || async {
        buffered().await >= (200 << 10) as f64
    })
    .await;
    assert!(
        buffered().await <= ((2 * 128) << 10) as f64,
        "charged what was sent (in doubling buffers), not the 1200 KiB announced"
    );
    assert_eq!(
        batch(&gw, KEY_A, &["t"]).await.status,
        200,
        "room for others"
    );
    // Both send most of the rest: the second no longer fits beside the first.
    first.write_all(&vec![b' '; 400 << 10]).await.unwrap();
    poll_until("the first body has grown to 512 KiB", || async {
        buffered().await == ((512 + 128) << 10) as f64
    })
    .await;
    second.write_all(&vec![b' '; 450 << 10]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert_json_error(&answer, 503);
    let m = scrape(&gw).await;
    assert_eq!(m.value("mjgate_request_body_over_budget_total", &[]), 1.0);
    assert!(m.value("mjgate_request_body_buffered_bytes", &[]) <= (1 << 20) as f64);
    // The held body is given back when its client goes.
    drop(first);
    poll_until("the held body is given back", || async {
        buffered().await == 0.0
    })
    .await;
}
