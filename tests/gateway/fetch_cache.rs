//! Task fetches are served from the cache: terminal answers for ever, in-progress ones for the TTL.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn a_terminal_task_is_fetched_from_upstream_once_and_then_served_from_cache() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t1", "SUCCESS");

    let started = std::time::Instant::now();
    let first = fetch(&gw, "t1", KEY_A).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status(), "mjgate; fwd=uri-miss; stored");
    assert_eq!(first.json()["status"], "SUCCESS");

    let second = fetch(&gw, "t1", KEY_A).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache_status(), "mjgate; hit");
    let age: u64 = second.header("age").parse().unwrap();
    assert!(
        age <= started.elapsed().as_secs(),
        "Age counts from when the upstream answered"
    );
    assert_eq!(
        second.body, first.body,
        "hits serve the upstream's bytes unchanged"
    );
    assert_eq!(sim.fetch_calls("t1"), 1);
}

#[tokio::test]
async fn terminal_results_are_never_refetched_even_after_the_ttl() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"100ms\"\n").await;
    sim.create_task(KEY_A, "done", "FAILURE");
    assert_eq!(fetch(&gw, "done", KEY_A).await.json()["status"], "FAILURE");

    sim.set_status("done", "SUCCESS"); // the upstream changing its mind must not matter
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = fetch(&gw, "done", KEY_A).await;
    assert_eq!(later.json()["status"], "FAILURE");
    assert_eq!(later.cache_status(), "mjgate; hit");
    let age: u64 = later.header("age").parse().unwrap();
    assert!(
        age >= 1,
        "Age counts whole seconds since the upstream answered, got {age}"
    );
    assert_eq!(sim.fetch_calls("done"), 1);
}

#[tokio::test]
async fn cancel_is_terminal_too() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"50ms\"\n").await;
    sim.create_task(KEY_A, "c", "CANCEL");
    fetch(&gw, "c", KEY_A).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetch(&gw, "c", KEY_A).await.cache_status(), "mjgate; hit");
    assert_eq!(sim.fetch_calls("c"), 1);
}

#[tokio::test]
async fn an_in_progress_task_is_served_from_cache_until_the_ttl_then_refetched() {
    // Long enough that the second fetch falls inside it on the slowest machine.
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"2s\"\n").await;
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");

    assert_eq!(fetch(&gw, "busy", KEY_A).await.json()["progress"], "50%");
    sim.set_progress("busy", "70%");
    let hit = fetch(&gw, "busy", KEY_A).await;
    assert_eq!(
        hit.json()["progress"],
        "50%",
        "within the TTL the cached answer is served"
    );
    assert!(hit.cache_status().starts_with("mjgate; hit; ttl="));
    assert_eq!(sim.fetch_calls("busy"), 1);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refreshed = fetch(&gw, "busy", KEY_A).await;
    assert_eq!(refreshed.json()["progress"], "70%");
    assert_eq!(refreshed.cache_status(), "mjgate; fwd=uri-miss; stored");
    assert_eq!(sim.fetch_calls("busy"), 2);
}

#[tokio::test]
async fn the_ttl_parameter_counts_down_whole_seconds() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"3s\"\n").await;
    sim.create_task(KEY_A, "busy", "SUBMITTED");
    fetch(&gw, "busy", KEY_A).await;
    let status = fetch(&gw, "busy", KEY_A).await.cache_status().to_owned();
    let ttl: u64 = status
        .strip_prefix("mjgate; hit; ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&ttl), "{status}");
}

#[tokio::test]
async fn a_task_that_finishes_is_then_kept_for_good() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"100ms\"\n").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    fetch(&gw, "t", KEY_A).await;
    sim.set_status("t", "SUCCESS");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fetch(&gw, "t", KEY_A).await.json()["status"], "SUCCESS");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fetch(&gw, "t", KEY_A).await.cache_status(), "mjgate; hit");
    assert_eq!(sim.fetch_calls("t"), 2);
}

#[tokio::test]
async fn a_mode_prefixed_fetch_shares_the_entry_and_keeps_its_prefix_upstream() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "m1", "SUCCESS");

    let fast = get(&gw, "/mj-fast/mj/task/m1/fetch", KEY_A).await;
    assert_eq!(fast.cache_status(), "mjgate; fwd=uri-miss; stored");
    let plain = fetch(&gw, "m1", KEY_A).await;
    assert_eq!(plain.cache_status(), "mjgate; hit");
    let relax = get(&gw, "/mj-relax/mj/task/m1/fetch", KEY_A).await;
    assert_eq!(relax.cache_status(), "mjgate; hit");

    assert_eq!(sim.fetch_calls("m1"), 1);
    let upstream = sim.requests();
    assert_eq!(upstream.len(), 1);
    assert_eq!(upstream[0].uri, "/mj-fast/mj/task/m1/fetch");
}

#[tokio::test]
async fn the_upstream_path_prefix_is_kept() {
    let sim = Simulator::start().await.unwrap();
    let gw = start_gateway(config(&format!("{}/api", sim.url()), "")).await;
    sim.create_task(KEY_A, "p", "SUCCESS");
    assert_eq!(fetch(&gw, "p", KEY_A).await.status, 200);
    assert_eq!(sim.requests()[0].uri, "/api/mj/task/p/fetch");
}

#[tokio::test]
async fn the_cache_asks_the_upstream_for_an_identity_body() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut request = request(
        http::Method::GET,
        &gw.url("/mj/task/t/fetch"),
        Some(KEY_A),
        "",
    );
    request
        .headers_mut()
        .insert("accept-encoding", "gzip, br".parse().unwrap());
    send(request).await;
    assert_eq!(sim.requests()[0].headers["accept-encoding"], "identity");
}

#[tokio::test]
async fn a_gzipped_answer_from_a_cdn_that_ignores_identity_is_decoded_and_cached() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "zipped", "SUCCESS");
    sim.set_gzip_lookups(true);

    let first = fetch(&gw, "zipped", KEY_A).await;
    assert_eq!(first.status, 200);
    assert!(first.headers.get("content-encoding").is_none());
    assert_eq!(first.json()["status"], "SUCCESS");
    assert_eq!(first.cache_status(), "mjgate; fwd=uri-miss; stored");

    let second = fetch(&gw, "zipped", KEY_A).await;
    assert_eq!(second.cache_status(), "mjgate; hit");
    assert_eq!(second.body, first.body);
    assert_eq!(sim.fetch_calls("zipped"), 1);
}
