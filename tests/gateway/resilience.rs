//! Whatever the upstream does, clients get the best answer available; whatever clients do, the upstream
//! sees a bounded, polite load. Each fault is injected and removed inside its test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn upstream_5xx_serves_the_stale_answer_marked_until_the_staleness_limit() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"100ms\"\nmax_stale = \"700ms\"\n").await;
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    sim.create_task(KEY_B, "other", "IN_PROGRESS");
    let fresh = fetch(&gw, "busy", KEY_A).await;
    fetch(&gw, "other", KEY_B).await;
    tokio::time::sleep(Duration::from_millis(150)).await;

    sim.inject(Fault::Status(500), 1000);
    let stale = fetch(&gw, "busy", KEY_A).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.cache_status(), "mjgate; fwd=stale; fwd-status=500");
    assert_eq!(stale.body, fresh.body);
    assert!(stale.headers.contains_key("age"));
    // The stale answer is served to its own credential only.
    assert_eq!(fetch(&gw, "other", KEY_B).await.json()["id"], "other");
    assert_eq!(
        fetch(&gw, "busy", KEY_B).await.status,
        500,
        "key B never had it: the error passes"
    );

    tokio::time::sleep(Duration::from_millis(800)).await;
    let expired = fetch(&gw, "busy", KEY_A).await;
    assert_eq!(expired.status, 500, "past max_stale the error is passed on");
    assert_eq!(
        expired.cache_status(),
        "mjgate; fwd=uri-miss; fwd-status=500"
    );
}

#[tokio::test]
async fn a_timeout_serves_stale_too_and_terminal_tasks_never_wait_on_the_upstream() {
    let (sim, gw) =
        start("[upstream]\nrequest_timeout = \"300ms\"\n[cache]\nin_progress_ttl = \"100ms\"\n")
            .await;
    sim.create_task(KEY_A, "done", "SUCCESS");
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    sim.create_task(KEY_A, "new", "IN_PROGRESS");
    fetch(&gw, "done", KEY_A).await;
    fetch(&gw, "busy", KEY_A).await;
    tokio::time::sleep(Duration::from_millis(150)).await;

    sim.set_latency(Duration::from_secs(30)); // the upstream hangs
    let calls = sim.total_calls();
    let done = fetch(&gw, "done", KEY_A).await;
    assert_eq!(done.cache_status(), "mjgate; hit");
    assert_eq!(
        sim.total_calls(),
        calls,
        "a terminal hit does not touch the upstream"
    );
    let busy = fetch(&gw, "busy", KEY_A).await;
    assert_eq!(busy.status, 200);
    assert_eq!(busy.cache_status(), "mjgate; fwd=stale; fwd-status=504");
    let new = fetch(&gw, "new", KEY_A).await;
    assert_eq!(
        new.status, 504,
        "nothing to serve: the timeout is passed on"
    );
    assert_eq!(new.json()["code"], 504);
    sim.set_latency(Duration::ZERO);
}

#[tokio::test]
async fn a_429_with_retry_after_stops_upstream_calls_for_that_credential_however_hard_clients_poll()
{
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"50ms\"\n").await;
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    sim.create_task(KEY_B, "b", "IN_PROGRESS");
    fetch(&gw, "busy", KEY_A).await;
    tokio::time::sleep(Duration::from_millis(60)).await;

    sim.inject(
        Fault::RateLimited {
            retry_after: Some(2),
        },
        1,
    );
    let limited_at = Instant::now();
    let first = fetch(&gw, "busy", KEY_A).await;
    assert_eq!(first.cache_status(), "mjgate; fwd=stale; fwd-status=429");
    let calls = sim.total_calls();

    let gw = Arc::new(gw);
    let mut polls = 0;
    while limited_at.elapsed() < Duration::from_millis(1700) {
        let batch: Vec<_> = (0..20)
            .map(|i| {
                let gw = Arc::clone(&gw);
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        fetch(&gw, "busy", KEY_A).await
                    } else {
                        fetch(&gw, "never-cached", KEY_A).await
                    }
                })
            })
            .collect();
        for reply in join_all(batch).await {
            let reply = reply.unwrap();
            if reply.status == 200 {
                assert_eq!(reply.cache_status(), "mjgate; fwd=stale; fwd-status=429");
            } else {
                assert_eq!(reply.status, 429);
                let retry: u64 = reply.header("retry-after").parse().unwrap();
                assert!((1..=2).contains(&retry), "{retry}");
            }
            polls += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(polls >= 100, "{polls}");
    assert_eq!(
        sim.total_calls(),
        calls,
        "no upstream call during the backoff"
    );
    // Another credential is not held back.
    assert_eq!(fetch(&gw, "b", KEY_B).await.status, 200);

    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(limited_at.elapsed())).await;
    let after = fetch(&gw, "busy", KEY_A).await;
    assert_eq!(after.cache_status(), "mjgate; fwd=uri-miss; stored");
    let m = scrape(&gw).await;
    assert!(m.value("mjgate_upstream_refused_total", &[("reason", "backoff")]) >= 1.0);
}

#[tokio::test]
async fn a_429_without_retry_after_backs_off_for_the_default() {
    let (sim, gw) = start("[upstream]\nretry_after_default = \"300ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.inject(Fault::RateLimited { retry_after: None }, 1);
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 429);
    let refused = fetch(&gw, "t", KEY_A).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(sim.fetch_calls("t"), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 200);
}

#[tokio::test]
async fn connection_refused_opens_the_breaker_which_closes_when_the_upstream_is_back() {
    let sim = Simulator::start().await.unwrap();
    let addr = sim.addr();
    let gw = start_gateway(config(
        &sim.url(),
        "[upstream]\nbreaker_failures = 3\nbreaker_cooldown = \"300ms\"\n",
    ))
    .await;
    drop(sim);
    tokio::time::sleep(Duration::from_millis(50)).await;

    for _ in 0..3 {
        let reply = fetch(&gw, "t", KEY_A).await;
        assert_eq!(reply.status, 502);
        assert!(
            reply.json()["description"]
                .as_str()
                .unwrap()
                .contains("unreachable")
        );
    }
    let fast = fetch(&gw, "t", KEY_A).await;
    assert_eq!(fast.status, 502);
    assert!(
        fast.json()["description"]
            .as_str()
            .unwrap()
            .contains("circuit open")
    );
    assert!(fast.headers.contains_key("retry-after"));
    assert_eq!(
        get(&gw, "/readyz", KEY_A).await.status,
        200,
        "readiness is this instance's: the cache still serves finished and stale tasks"
    );
    let upstream = get(&gw, "/upstreamz", KEY_A).await;
    assert_eq!(upstream.status, 503, "/upstreamz reflects the open circuit");
    assert_eq!(upstream.json()["circuit"], "open");
    assert_eq!(get(&gw, "/healthz", KEY_A).await.status, 200);
    let m = scrape(&gw).await;
    assert_eq!(m.value("mjgate_upstream_circuit_open", &[]), 1.0);
    assert!(
        m.value(
            "mjgate_upstream_refused_total",
            &[("reason", "circuit_open")]
        ) >= 1.0
    );

    // The upstream comes back on the same address.
    let sim = Simulator::start_on(tokio::net::TcpListener::bind(addr).await.unwrap()).unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        fetch(&gw, "t", KEY_A).await.status,
        200,
        "the probe goes through and closes it"
    );
    assert_eq!(get(&gw, "/upstreamz", KEY_A).await.status, 200);
    assert_eq!(
        scrape(&gw).await.value("mjgate_upstream_circuit_open", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_storm_of_polls_for_an_unknown_id_costs_one_call_per_not_found_ttl() {
    // Longer than the storm lasts: 200 simultaneous connects can overflow the accept backlog, and a
    // dropped SYN is retried after a second.
    let (sim, gw) = start("[cache]\nnot_found_ttl = \"10s\"\n").await;
    let gw = Arc::new(gw);
    let storm: Vec<_> = (0..200)
        .map(|_| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move { fetch(&gw, "no-such-task", KEY_A).await })
        })
        .collect();
    for reply in join_all(storm).await {
        assert_eq!(reply.unwrap().status, 404);
    }
    assert_eq!(sim.fetch_calls("no-such-task"), 1);
}

#[tokio::test]
async fn calls_over_the_in_flight_ceiling_wait_briefly_then_get_503_with_retry_after() {
    let (sim, gw) =
        start("[upstream]\nmax_in_flight_per_credential = 1\nqueue_timeout = \"100ms\"\n").await;
    for id in ["x", "y"] {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    sim.create_task(KEY_B, "z", "SUCCESS");
    let hold = sim.hold();
    let gw = Arc::new(gw);
    let first = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { fetch(&gw, "x", KEY_A).await })
    };
    sim.wait_for_calls(1).await;
    let over = fetch(&gw, "y", KEY_A).await;
    assert_eq!(over.status, 503);
    assert!(over.headers.contains_key("retry-after"));
    let other_key = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { fetch(&gw, "z", KEY_B).await })
    };
    sim.wait_for_calls(2).await; // key B has its own slots
    drop(hold);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(other_key.await.unwrap().status, 200);
    assert_eq!(sim.fetch_calls("y"), 0);
    assert_eq!(fetch(&gw, "y", KEY_A).await.status, 200, "room again");
}

#[tokio::test]
async fn the_rate_ceiling_holds_under_a_flood_of_distinct_ids() {
    let (sim, gw) = start("[upstream]\nmax_rps = 20\nqueue_timeout = \"200ms\"\n").await;
    let gw = Arc::new(gw);
    let started = Instant::now();
    let flood: Vec<_> = (0..100)
        .map(|i| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move { fetch(&gw, &format!("id-{i}"), KEY_A).await.status })
        })
        .collect();
    let statuses: Vec<u16> = join_all(flood)
        .await
        .into_iter()
        .map(|s| s.unwrap().as_u16())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let sent = sim.all_fetch_calls() as f64;
    // A burst of 20, then 20 per second: never more than that over the flood's span.
    assert!(
        sent <= 20.0 + 20.0 * elapsed + 1.0,
        "{sent} calls in {elapsed}s"
    );
    assert!(
        statuses.iter().all(|s| *s == 404 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503));
}

#[tokio::test]
async fn idle_half_open_connections_do_not_stop_normal_requests_and_are_closed() {
    let (sim, gw) = start("[server]\nheader_read_timeout = \"500ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(b"GET /mj/task/t/fetch HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        idle.push(stream);
    }
    let reply = fetch(&gw, "t", KEY_A).await;
    assert_eq!(reply.status, 200);
    // Each half-sent head is dropped after header_read_timeout.
    let mut closed = 0;
    for mut stream in idle {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_byte_of_its_answer_loses_the_connection_after_send_timeout() {
    let (sim, gw) =
        start("[server]\nsend_timeout = \"300ms\"\n[upstream]\nmax_body = \"64MiB\"\n").await;
    sim.create_task(KEY_A, "big", "SUCCESS");
    // About 12 MiB of answer: more than the kernel buffers for one connection.
    sim.set_prompt("big", &"x".repeat(4 << 20));
    assert_eq!(fetch(&gw, "big", KEY_A).await.status, 200);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    let head =
        format!("GET /mj/task/big/fetch HTTP/1.1\r\nHost: gw\r\nAuthorization: {KEY_A}\r\n\r\n");
    stalled.write_all(head.as_bytes()).await.unwrap();
    // It reads nothing: the gateway's writes wait, and past send_timeout the connection goes.
    wait_for_metric(&gw, "mjgate_client_send_timeouts_total", 1.0).await;
    poll_until("the stalled connection is closed", || async {
        scrape(&gw).await.value("mjgate_client_connections", &[]) == 1.0
    })
    .await;
    // A client that reads gets the same answer whole.
    let reply = fetch(&gw, "big", KEY_A).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.len() > 12 << 20);
    assert_eq!(
        scrape(&gw)
            .await
            .value("mjgate_client_send_timeouts_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_while_existing_ones_keep_working() {
    let (sim, gw) = start("[server]\nmax_connections = 2\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    // Two connections, each known to hold its slot: it has been answered on.
    let health = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(health).await.unwrap();
        let mut answer = [0u8; 256];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let mut a = held.remove(0);
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let refused = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(
        matches!(refused, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed"
    );

    let head =
        format!("GET /mj/task/t/fetch HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\n\r\n");
    a.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    assert!(scrape_after_close(&gw, a).await >= 1.0);
}

/// Frees a connection slot, then reads the refused-connections counter (once the server has noticed the
/// close and the slot is free again).
async fn scrape_after_close(gw: &Gateway, stream: tokio::net::TcpStream) -> f64 {
    drop(stream);
    for _ in 0..100 {
        let request = request(Method::GET, &gw.url("/metrics"), None, "");
        if let Ok(reply) = try_send(request).await {
            let text = String::from_utf8(reply.body.to_vec()).unwrap();
            return Scrape::parse(text).value("mjgate_client_connections_refused_total", &[]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the freed connection slot never became available");
}

#[tokio::test]
async fn passthrough_bodies_over_the_limit_get_413() {
    let (sim, gw) = start("[server]\nmax_request_body = \"4KiB\"\n").await;
    let big = format!("{{\"prompt\":\"{}\"}}", "x".repeat(8192));
    let declared = send(request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(KEY_A),
        &big,
    ))
    .await;
    assert_eq!(declared.status, 413);
    assert_eq!(sim.total_calls(), 0);

    // Chunked: the limit is enforced as the body streams.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /mj/submit/imagine HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        let chunk = "y".repeat(2048);
        let _ = stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let small = send(request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(KEY_A),
        "{\"prompt\":\"ok\"}",
    ))
    .await;
    assert_eq!(small.status, 200);
}

#[tokio::test]
async fn a_request_body_that_stalls_gets_408_and_frees_its_connection() {
    let (sim, gw) = start("[server]\nbody_read_timeout = \"300ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    for path in ["/mj/task/list-by-condition", "/mj/submit/imagine"] {
        // A head announcing 100 bytes, then 7 of them, then nothing.
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"ids\":"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the gateway waited on the stalled body for ever")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("\"description\":"), "{path}: {answer}");
    }
    assert_eq!(sim.list_calls().len(), 0, "no batch reached the upstream");

    // A body that keeps coming, however slowly, is not cut off.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let body = br#"{"ids":["t"]}"#;
    let head = format!(
        "POST /mj/task/list-by-condition HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for byte in body {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"id\":\"t\""), "{answer}");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_is_kept() {
    let (sim, gw) = start("[server]\nidle_timeout = \"300ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");

    // Busy: one HTTP/2 connection fetching every 100 ms for 1.5 s, five idle timeouts.
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let reply = sender
            .send_request(request(
                Method::GET,
                &gw.url("/mj/task/t/fetch"),
                Some(KEY_A),
                "",
            ))
            .await
            .expect("a busy connection stays open");
        assert_eq!(reply.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then idle: the gateway sends GOAWAY and the connection ends cleanly.
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("an idle HTTP/2 connection is never closed")
        .unwrap()
        .unwrap();

    // A client that only opens the connection (preface and SETTINGS) and sends nothing is closed too.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut sent = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut sent))
        .await
        .expect("a silent HTTP/2 connection is never closed")
        .unwrap();
}

#[tokio::test]
async fn ten_thousand_distinct_ids_across_credentials_keep_the_cache_within_budget() {
    let (sim, gw) = start("[cache]\nmax_memory = \"2MiB\"\n").await;
    let keys: Vec<String> = (0..5).map(|k| format!("Bearer sk-flood-{k}")).collect();
    for (k, key) in keys.iter().enumerate() {
        for i in 0..2000 {
            sim.create_task(key, &format!("k{k}-t{i}"), "SUCCESS");
        }
    }
    for (k, key) in keys.iter().enumerate() {
        for chunk in 0..4 {
            let ids: Vec<String> = (chunk * 500..(chunk + 1) * 500)
                .map(|i| format!("k{k}-t{i}"))
                .collect();
            let body = serde_json::json!({ "ids": ids }).to_string();
            let reply = send(request(
                Method::POST,
                &gw.url("/mj/task/list-by-condition"),
                Some(key),
                &body,
            ))
            .await;
            assert_eq!(reply.json().as_array().unwrap().len(), 500);
        }
    }
    let m = scrape(&gw).await;
    let used = m.value("mjgate_cache_weighted_bytes", &[]);
    let budget = m.value("mjgate_cache_capacity_bytes", &[]);
    assert_eq!(budget, 2.0 * 1024.0 * 1024.0);
    assert!(used <= budget, "{used} > {budget}");
    assert!(
        used > budget / 2.0,
        "the cache is used, not emptied: {used}"
    );
    let entries = m.value("mjgate_cache_entries", &[]);
    assert!(entries < 10_000.0 && entries > 500.0, "{entries}");
    // Whatever was evicted, nothing mixed: every answer is the asking key's own task.
    let reply = fetch(&gw, "k3-t1999", &keys[3]).await;
    assert_eq!(reply.json()["id"], "k3-t1999");
    assert_eq!(fetch(&gw, "k3-t1999", &keys[4]).await.status, 404);
}

#[tokio::test]
async fn a_batch_serves_stale_answers_when_its_upstream_call_fails() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"100ms\"\n").await;
    sim.create_task(KEY_A, "done", "SUCCESS");
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    let body = r#"{"ids":["busy","done"]}"#;
    let list = || {
        send(request(
            Method::POST,
            &gw.url("/mj/task/list-by-condition"),
            Some(KEY_A),
            body,
        ))
    };
    list().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    sim.inject(Fault::Status(503), 1);
    let stale = list().await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.cache_status(), "mjgate; fwd=stale; fwd-status=503");
    let tasks = stale.json();
    let ids: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["busy", "done"]);
    assert_eq!(sim.list_calls().len(), 2);
}

#[tokio::test]
async fn a_failing_upstream_sees_at_most_one_refresh_per_task_per_ttl_however_often_clients_poll() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"200ms\"\n").await;
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    fetch(&gw, "busy", KEY_A).await;
    tokio::time::sleep(Duration::from_millis(250)).await;

    sim.set_fault(Some(Fault::Status(500)));
    let started = Instant::now();
    let before = sim.fetch_calls("busy");
    let mut polls = 0;
    while started.elapsed() < Duration::from_millis(1000) {
        let reply = fetch(&gw, "busy", KEY_A).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.cache_status(), "mjgate; fwd=stale; fwd-status=500");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let calls = sim.fetch_calls("busy") - before;
    let windows = (started.elapsed().as_millis() / 200) as u64 + 1;
    assert!(polls >= 20, "{polls}");
    assert!(
        calls <= windows,
        "{calls} upstream calls for {polls} polls in {windows} TTL windows"
    );

    sim.set_fault(None);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        fetch(&gw, "busy", KEY_A).await.cache_status(),
        "mjgate; fwd=uri-miss; stored"
    );
}

#[tokio::test]
async fn request_heads_over_the_header_limit_are_refused_and_the_gateway_keeps_serving() {
    let (sim, gw) = start("[server]\nmax_header_bytes = \"8KiB\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "GET /mj/task/t/fetch HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\nx-padding: {}\r\n\r\n",
        "p".repeat(32 * 1024)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(sim.total_calls(), 0);
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 200);
}

#[tokio::test]
async fn the_header_limit_holds_for_every_request_of_a_kept_alive_connection() {
    let (sim, gw) = start("").await; // max_header_bytes 64 KiB
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // hyper bounds its read buffer exactly for a connection's first head only: a small first
    // request ...
    let allowed = format!(
        "GET /mj/task/t/fetch HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\nx-padding: {}\r\n\r\n",
        "p".repeat(10)
    );
    // ... then one over the limit, on the same connection, must not reach the upstream.
    let over = format!(
        "GET /anything HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\nx-padding: {}\r\nconnection: close\r\n\r\n",
        "p".repeat(70_000)
    );
    stream.write_all(allowed.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 404"));
    let _ = stream.write_all(over.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        sim.requests()
            .iter()
            .filter(|r| r.uri == "/anything")
            .count(),
        0,
        "never forwarded"
    );
}
