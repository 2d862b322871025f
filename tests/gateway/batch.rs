//! `list-by-condition` batches share the per-task cache and flights with single fetches.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use http::Method;
use serde_json::json;

use crate::support::*;

const LIST: &str = "/mj/task/list-by-condition";

fn ids_of(reply: &Reply) -> Vec<String> {
    reply
        .json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|task| task["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_batch_asks_upstream_only_for_what_it_lacks_and_answers_in_request_order() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"10s\"\n").await;
    sim.create_task(KEY_A, "done", "SUCCESS");
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    sim.create_task(KEY_A, "fresh", "SUBMITTED"); // last in the upstream's store order
    fetch(&gw, "done", KEY_A).await;
    fetch(&gw, "busy", KEY_A).await;

    let reply = batch(&gw, KEY_A, &["fresh", "done", "ghost", "busy", "fresh"]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        ids_of(&reply),
        ["fresh", "done", "busy"],
        "request order; unknown ids left out"
    );
    assert_eq!(reply.cache_status(), "mjgate; fwd=partial; stored");
    assert_eq!(
        sim.list_calls(),
        vec![vec!["fresh".to_owned(), "ghost".to_owned()]]
    );
    // Each task is the upstream's own object, status included.
    assert_eq!(reply.json()[0]["status"], "SUBMITTED");
    assert_eq!(reply.json()[1]["status"], "SUCCESS");
}

#[tokio::test]
async fn a_fully_cached_batch_is_a_hit_and_a_cold_one_a_miss() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "a", "SUCCESS");
    sim.create_task(KEY_A, "b", "FAILURE");
    let cold = batch(&gw, KEY_A, &["a", "b"]).await;
    assert_eq!(cold.cache_status(), "mjgate; fwd=uri-miss; stored");
    let warm = batch(&gw, KEY_A, &["b", "a"]).await;
    assert_eq!(warm.cache_status(), "mjgate; hit");
    assert_eq!(ids_of(&warm), ["b", "a"]);
    assert_eq!(sim.list_calls().len(), 1);
}

#[tokio::test]
async fn fifty_identical_concurrent_batches_cost_one_lookup_per_id() {
    let (sim, gw) = start("").await;
    let ids = ["p", "q", "r"];
    for id in ids {
        sim.create_task(KEY_A, id, "IN_PROGRESS");
    }
    let hold = sim.hold();
    let gw = Arc::new(gw);
    let batches: Vec<_> = (0..50)
        .map(|_| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move { batch(&gw, KEY_A, &ids).await })
        })
        .collect();
    sim.wait_for_calls(1).await;
    // One batch leads; the other 49 wait on its call.
    wait_for_metric(&gw, "mjgate_collapse_waiters", 49.0).await;
    drop(hold);
    for reply in join_all(batches).await {
        assert_eq!(ids_of(&reply.unwrap()), ids);
    }
    for id in ids {
        assert_eq!(sim.lookups(id), 1, "{id}");
    }
}

#[tokio::test]
async fn a_batch_warms_single_fetches_and_a_fetch_warms_batches() {
    let (sim, gw) = start("").await;
    for id in ["x", "y", "z"] {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    batch(&gw, KEY_A, &["x", "y"]).await;
    let single = fetch(&gw, "x", KEY_A).await;
    assert_eq!(single.cache_status(), "mjgate; hit");
    assert_eq!(single.json()["id"], "x");

    fetch(&gw, "z", KEY_A).await;
    let warmed = batch(&gw, KEY_A, &["z", "y"]).await;
    assert_eq!(warmed.cache_status(), "mjgate; hit");
    assert_eq!(sim.list_calls().len(), 1);
    assert_eq!(sim.all_fetch_calls(), 1);
}

#[tokio::test]
async fn a_batch_waits_on_a_fetch_in_flight_instead_of_asking_again() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.create_task(KEY_A, "u", "SUCCESS");
    let hold = sim.hold();
    let gw = Arc::new(gw);
    let single = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { fetch(&gw, "t", KEY_A).await })
    };
    sim.wait_for_calls(1).await;
    let batched = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { batch(&gw, KEY_A, &["t", "u"]).await })
    };
    sim.wait_for_calls(2).await;
    drop(hold);
    assert_eq!(single.await.unwrap().status, 200);
    assert_eq!(ids_of(&batched.await.unwrap()), ["t", "u"]);
    assert_eq!(sim.list_calls(), vec![vec!["u".to_owned()]]);
    assert_eq!(sim.lookups("t"), 1);
}

#[tokio::test]
async fn a_fetch_waiting_on_a_batch_that_lacked_its_id_gets_the_upstreams_own_answer() {
    let (sim, gw) = start("").await;
    let hold = sim.hold();
    let gw = Arc::new(gw);
    let batched = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { batch(&gw, KEY_A, &["ghost"]).await })
    };
    sim.wait_for_calls(1).await;
    let single = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { fetch(&gw, "ghost", KEY_A).await })
    };
    wait_for_metric(&gw, "mjgate_collapse_waiters", 1.0).await;
    drop(hold);
    assert_eq!(batched.await.unwrap().json(), json!([]));
    let single = single.await.unwrap();
    assert_eq!(single.status, 404);
    assert_eq!(single.json()["description"], "task_no_found");
}

#[tokio::test]
async fn key_b_never_sees_key_a_tasks_through_a_batch() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "secret", "SUCCESS");
    assert_eq!(ids_of(&batch(&gw, KEY_A, &["secret"]).await), ["secret"]);
    let other = batch(&gw, KEY_B, &["secret"]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.json(), json!([]));
    assert_eq!(
        sim.list_calls().len(),
        2,
        "key B's batch went upstream under key B"
    );
    assert_eq!(fetch(&gw, "secret", KEY_B).await.status, 404);
}

#[tokio::test]
async fn an_upstream_error_is_passed_on_stores_nothing_and_loses_no_cached_id() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "kept", "SUCCESS");
    sim.create_task(KEY_A, "new", "SUCCESS");
    fetch(&gw, "kept", KEY_A).await;
    sim.inject(Fault::Status(503), 1);
    let failed = batch(&gw, KEY_A, &["kept", "new"]).await;
    assert_eq!(failed.status, 503);
    assert_eq!(
        fetch(&gw, "kept", KEY_A).await.cache_status(),
        "mjgate; hit"
    );
    let retried = batch(&gw, KEY_A, &["kept", "new"]).await;
    assert_eq!(ids_of(&retried), ["kept", "new"]);
    assert_eq!(
        sim.list_calls().len(),
        2,
        "the failed answer was not stored"
    );
}

#[tokio::test]
async fn a_slow_upstream_batch_is_a_504() {
    let (sim, gw) = start("[upstream]\nrequest_timeout = \"200ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.set_latency(Duration::from_millis(600));
    let reply = batch(&gw, KEY_A, &["t"]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["code"], 504);
}

#[tokio::test]
async fn large_misses_are_split_into_concurrent_upstream_calls() {
    let (sim, gw) = start("[batch]\nupstream_chunk = 2\n").await;
    let ids = ["c1", "c2", "c3", "c4", "c5"];
    for id in ids {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    let reply = batch(&gw, KEY_A, &ids).await;
    assert_eq!(ids_of(&reply), ids);
    let mut sizes: Vec<usize> = sim.list_calls().iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 2, 2]);
}

#[tokio::test]
async fn mode_prefixed_batches_share_the_entries() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "m", "SUCCESS");
    fetch(&gw, "m", KEY_A).await;
    let reply = batch_at(&gw, "/mj-fast/mj/task/list-by-condition", KEY_A, &["m"]).await;
    assert_eq!(reply.cache_status(), "mjgate; hit");
    batch_at(&gw, "/mj-relax/mj/task/list-by-condition", KEY_A, &["n"]).await;
    assert_eq!(
        sim.requests().last().unwrap().uri,
        "/mj-relax/mj/task/list-by-condition",
        "a miss is sent with its own prefix"
    );
}

#[tokio::test]
async fn other_conditions_pass_through_unchanged_and_uncached() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let body = r#"{"ids":["t"],  "status":"SUCCESS"}"#;
    for _ in 0..2 {
        let reply = send(request(Method::POST, &gw.url(LIST), Some(KEY_A), body)).await;
        assert_eq!(reply.status, 200);
        assert!(reply.headers.get("cache-status").is_none());
    }
    assert_eq!(sim.list_calls().len(), 2);
    assert_eq!(sim.requests()[0].body, body.as_bytes());
}

#[tokio::test]
async fn each_kind_of_malformed_body_is_a_400_naming_the_problem() {
    let (sim, gw) = start("[batch]\nmax_ids = 3\n").await;
    for (body, says) in [
        ("{\"ids\": [", "malformed JSON"),
        ("[\"a\"]", "JSON object"),
        ("{}", "`ids` is missing"),
        ("{\"ids\": \"a\"}", "array of strings"),
        ("{\"ids\": [1, 2]}", "array of strings"),
        (
            "{\"ids\": [\"a\",\"b\",\"c\",\"d\"]}",
            "more than the maximum of 3",
        ),
        ("{\"ids\": [\"ok\", \"not ok\"]}", "ids[1]"),
    ] {
        let reply = send(request(Method::POST, &gw.url(LIST), Some(KEY_A), body)).await;
        assert_eq!(reply.status, 400, "{body}");
        let description = reply.json()["description"].as_str().unwrap().to_owned();
        assert!(description.contains(says), "{body}: {description}");
    }
    assert_eq!(sim.total_calls(), 0);
}

#[tokio::test]
async fn an_oversized_body_is_a_413_and_the_gateway_keeps_serving() {
    let (sim, gw) = start("[batch]\nmax_body = \"1KiB\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let ids: Vec<String> = (0..200).map(|i| format!("id-{i}")).collect();
    let body = json!({ "ids": ids }).to_string();
    assert!(body.len() > 1024);
    let reply = send(request(Method::POST, &gw.url(LIST), Some(KEY_A), &body)).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["code"], 413);
    assert_eq!(sim.total_calls(), 0);
    assert_eq!(ids_of(&batch(&gw, KEY_A, &["t"]).await), ["t"]);
}

#[tokio::test]
async fn an_oversized_chunked_body_is_a_413_and_leaves_the_connection_usable_or_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sim, gw) = start("[batch]\nmax_body = \"1KiB\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let chunk = format!("{{\"ids\":[\"{}\"]}}", "a".repeat(2000));
    let oversized = format!(
        "POST {LIST} HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    // A second request on the same connection: it must be answered correctly or not at all, never
    // misread from the rest of the first body.
    let next = format!(
        "GET /mj/task/t/fetch HTTP/1.1\r\nhost: x\r\nauthorization: {KEY_A}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(oversized.as_bytes()).await.unwrap();
    let _ = stream.write_all(next.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let responses = answer.matches("HTTP/1.1 ").count();
    assert!(
        responses == 1 || answer.contains("HTTP/1.1 200"),
        "the second request was misread: {answer}"
    );
    assert!(!answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(sim.list_calls().len(), 0);
    // And the gateway keeps serving on new connections.
    assert_eq!(fetch(&gw, "t", KEY_A).await.status, 200);
}

#[tokio::test]
async fn an_empty_id_list_answers_an_empty_array() {
    let (sim, gw) = start("").await;
    let reply = batch(&gw, KEY_A, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!([]));
    assert_eq!(sim.total_calls(), 0);
}

#[tokio::test]
async fn an_upstream_400_that_is_not_a_not_found_answer_is_passed_on_not_swallowed() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.inject(Fault::Status(400), 1);
    let reply = batch(&gw, KEY_A, &["t"]).await;
    assert_eq!(reply.status, 400, "an upstream error, not an empty answer");
    assert_eq!(reply.json()["description"], "simulated upstream fault");
    assert_eq!(
        ids_of(&batch(&gw, KEY_A, &["t"]).await),
        ["t"],
        "nothing was stored from it"
    );
}

#[tokio::test]
async fn a_gzipped_batch_answer_is_decoded_and_split_into_the_cache() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "z1", "SUCCESS");
    sim.create_task(KEY_A, "z2", "FAILURE");
    sim.set_gzip_lookups(true);

    let reply = batch(&gw, KEY_A, &["z1", "z2"]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(ids_of(&reply), ["z1", "z2"]);
    assert_eq!(reply.cache_status(), "mjgate; fwd=uri-miss; stored");

    assert_eq!(fetch(&gw, "z2", KEY_A).await.cache_status(), "mjgate; hit");
    assert_eq!(sim.list_calls().len(), 1);
    assert_eq!(sim.fetch_calls("z2"), 0);
}
