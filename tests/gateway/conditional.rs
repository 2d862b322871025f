//! Conditional requests: every cached answer carries a strong ETag, and a client that already holds it
//! gets `304 Not Modified` and no body.

use std::time::Duration;

use http::Method;

use crate::support::*;

const TTL: &str = "[cache]\nin_progress_ttl = \"300ms\"\n";

/// `GET` of task `id` with `If-None-Match: tag`.
pub async fn fetch_if_none_match(
    gateway: &Gateway,
    id: &str,
    credential: &str,
    tag: &str,
) -> Reply {
    let mut request = request(
        Method::GET,
        &gateway.url(&format!("/mj/task/{id}/fetch")),
        Some(credential),
        "",
    );
    request
        .headers_mut()
        .insert("if-none-match", tag.parse().unwrap());
    send(request).await
}

#[tokio::test]
async fn the_etag_is_stable_while_the_task_is_unchanged_and_changes_with_it() {
    let (sim, gw) = start(TTL).await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    sim.set_progress("t", "10%");
    let first = fetch(&gw, "t", KEY_A).await;
    let tag = first.header("etag").to_owned();
    assert!(
        tag.starts_with('"') && tag.ends_with('"'),
        "a strong tag: {tag}"
    );
    assert_eq!(fetch(&gw, "t", KEY_A).await.header("etag"), tag, "a hit");

    tokio::time::sleep(Duration::from_millis(350)).await;
    let refetched = fetch(&gw, "t", KEY_A).await;
    assert_eq!(refetched.cache_status(), "mjgate; fwd=uri-miss; stored");
    assert_eq!(
        refetched.header("etag"),
        tag,
        "same bytes from the upstream, same tag"
    );

    sim.set_progress("t", "50%");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let changed = fetch(&gw, "t", KEY_A).await;
    assert_eq!(changed.json()["progress"], "50%");
    assert_ne!(changed.header("etag"), tag);
}

#[tokio::test]
async fn if_none_match_with_the_current_tag_gets_304_and_no_body() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "done", "SUCCESS");
    let first = fetch(&gw, "done", KEY_A).await;
    let tag = first.header("etag").to_owned();

    let unchanged = fetch_if_none_match(&gw, "done", KEY_A, &tag).await;
    assert_eq!(unchanged.status, 304);
    assert!(unchanged.body.is_empty());
    assert_eq!(unchanged.header("etag"), tag);
    assert_eq!(unchanged.cache_status(), "mjgate; hit");
    assert!(unchanged.headers.get("content-type").is_none());

    let listed = fetch_if_none_match(&gw, "done", KEY_A, &format!("\"x\", W/{tag}")).await;
    assert_eq!(
        listed.status, 304,
        "a list, and a weak form of the tag, match too"
    );

    let other = fetch_if_none_match(&gw, "done", KEY_A, "\"something-else\"").await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, first.body);

    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_not_modified_total", &[("route", "fetch")]),
        2.0
    );
    assert_eq!(sim.fetch_calls("done"), 1);
}

#[tokio::test]
async fn a_miss_answers_304_too_when_the_client_already_has_the_answer() {
    let (sim, gw) = start(TTL).await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let reply = fetch_if_none_match(&gw, "t", KEY_A, &tag).await;
    assert_eq!(reply.status, 304);
    assert_eq!(reply.cache_status(), "mjgate; fwd=uri-miss; stored");
    assert_eq!(sim.fetch_calls("t"), 2);
}

#[tokio::test]
async fn a_batch_carries_a_tag_over_its_tasks() {
    let (sim, gw) = start(TTL).await;
    sim.create_task(KEY_A, "a", "SUCCESS");
    sim.create_task(KEY_A, "b", "IN_PROGRESS");
    let url = gw.url("/mj/task/list-by-condition");
    let body = r#"{"ids":["a","b"]}"#;
    let first = send(request(Method::POST, &url, Some(KEY_A), body)).await;
    let tag = first.header("etag").to_owned();

    let mut again = request(Method::POST, &url, Some(KEY_A), body);
    again
        .headers_mut()
        .insert("if-none-match", tag.parse().unwrap());
    let unchanged = send(again).await;
    assert_eq!(unchanged.status, 304);
    assert!(unchanged.body.is_empty());

    sim.set_progress("b", "70%");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut after = request(Method::POST, &url, Some(KEY_A), body);
    after
        .headers_mut()
        .insert("if-none-match", tag.parse().unwrap());
    let changed = send(after).await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag"), tag);
    assert_eq!(changed.json()[1]["progress"], "70%");
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_not_modified_total", &[("route", "batch")]),
        1.0
    );
}
