//! Bad input gets a clear JSON 4xx and never reaches the upstream; upstream faults get 502/504, never stored.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn invalid_task_ids_are_refused_before_the_upstream() {
    let (sim, gw) = start("").await;
    let long = "a".repeat(129);
    for path in [
        "/mj/task//fetch".to_owned(),
        format!("/mj/task/{long}/fetch"),
        "/mj/task/a%20b/fetch".to_owned(),
        "/mj/task/a/b/fetch".to_owned(),
        "/mj-fast/mj/task/a$b/fetch".to_owned(),
    ] {
        let reply = get(&gw, &path, KEY_A).await;
        assert_eq!(reply.status, 400, "{path}");
        assert_eq!(reply.json()["code"], 400);
        assert!(
            reply.json()["description"]
                .as_str()
                .unwrap()
                .contains("task id")
        );
    }
    assert_eq!(sim.total_calls(), 0);
    assert_eq!(
        get(&gw, &format!("/mj/task/{}/fetch", "a".repeat(128)), KEY_A)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn unknown_ids_are_passed_on_in_every_upstream_style_and_kept_only_briefly() {
    let (sim, gw) = start("[cache]\nnot_found_ttl = \"150ms\"\n").await;
    for (style, status) in [
        (NotFound::Status404, 404),
        (NotFound::Status400, 400),
        (NotFound::EmptyBody, 200),
        (NotFound::NoContent, 204),
    ] {
        sim.set_not_found(style);
        let id = format!("missing-{status}");
        let first = fetch(&gw, &id, KEY_A).await;
        assert_eq!(first.status, status, "{style:?}");
        let again = fetch(&gw, &id, KEY_A).await;
        assert_eq!(again.status, status, "{style:?}");
        assert_eq!(
            again.body, first.body,
            "{style:?}: the upstream's own answer is replayed"
        );
        assert!(
            again.cache_status().starts_with("mjgate; hit; ttl="),
            "{style:?}"
        );
        assert_eq!(sim.fetch_calls(&id), 1, "{style:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        fetch(&gw, &id, KEY_A).await;
        assert_eq!(
            sim.fetch_calls(&id),
            2,
            "{style:?}: kept for not_found_ttl only"
        );
    }
}

#[tokio::test]
async fn upstream_errors_are_passed_on_and_not_stored() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.inject(Fault::Status(500), 1);
    sim.inject(Fault::Status(502), 1);
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 500);
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 502);
    let ok = fetch(&gw, "t", KEY_A).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.cache_status(), "mjgate; fwd=uri-miss; stored");
    assert_eq!(sim.fetch_calls("t"), 3);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_with_a_json_body() {
    // Port 9 (discard): nothing listens there, and unlike a port freed a moment ago, no other test's
    // listener can take it meanwhile.
    let gw = start_gateway(config("http://127.0.0.1:9", "")).await;
    for path in ["/mj/task/t/fetch", "/mj/submit/imagine"] {
        let reply = get(&gw, path, KEY_A).await;
        assert_eq!(reply.status, 502, "{path}");
        assert_eq!(reply.json()["code"], 502);
        assert!(
            reply.json()["description"]
                .as_str()
                .unwrap()
                .contains("unreachable")
        );
    }
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_and_nothing_is_stored() {
    let (sim, gw) = start("[upstream]\nrequest_timeout = \"200ms\"\n").await;
    sim.create_task(KEY_A, "slow", "SUCCESS");
    sim.set_latency(Duration::from_millis(600));
    let reply = fetch(&gw, "slow", KEY_A).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["code"], 504);
    sim.set_latency(Duration::ZERO);
    assert_eq!(fetch(&gw, "slow", KEY_A).await.status, 200);
    assert_eq!(sim.fetch_calls("slow"), 2);
}
