//! Answers in gzip for clients that ask: task and batch answers, each representation with its own
//! `ETag`, `Vary: Accept-Encoding` on both, identity clients unchanged.

use std::io::Read as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use crate::support::*;

/// `request` with one `Accept-Encoding` line per entry of `encodings`.
fn accepting(mut request: Request<Full<Bytes>>, encodings: &[&str]) -> Request<Full<Bytes>> {
    for encoding in encodings {
        request
            .headers_mut()
            .append("accept-encoding", encoding.parse().unwrap());
    }
    request
}

/// `GET path` with `Accept-Encoding: encoding` (and `If-None-Match` when given).
async fn get_encoded(
    gw: &Gateway,
    path: &str,
    encoding: &str,
    if_none_match: Option<&str>,
) -> Reply {
    let mut request = accepting(
        request(Method::GET, &gw.url(path), Some(KEY_A), ""),
        &[encoding],
    );
    if let Some(tag) = if_none_match {
        request
            .headers_mut()
            .insert("if-none-match", tag.parse().unwrap());
    }
    send(request).await
}

/// A Midjourney batch of `ids` for a client accepting `encoding`.
async fn batch_encoded(gw: &Gateway, ids: &[&str], encoding: &str) -> Reply {
    let body = serde_json::json!({ "ids": ids }).to_string();
    let url = gw.url("/mj/task/list-by-condition");
    send(accepting(
        request(Method::POST, &url, Some(KEY_A), &body),
        &[encoding],
    ))
    .await
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut decoded)
        .expect("a gzip body");
    decoded
}

fn varies_by_encoding(reply: &Reply) -> bool {
    reply.headers.get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")
    })
}

#[tokio::test]
async fn a_gzip_client_gets_the_same_task_compressed_under_its_own_tag() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let identity = get_encoded(&gw, "/mj/task/t/fetch", "identity", None).await;
    let gzipped = get_encoded(&gw, "/mj/task/t/fetch", "gzip, deflate, br", None).await;
    assert_eq!(identity.status, 200);
    assert_eq!(gzipped.status, 200);
    assert!(identity.headers.get("content-encoding").is_none());
    assert_eq!(gzipped.header("content-encoding"), "gzip");
    assert!(varies_by_encoding(&identity) && varies_by_encoding(&gzipped));
    assert_eq!(
        gunzip(&gzipped.body),
        identity.body,
        "decodes to the identity body"
    );
    assert!(
        gzipped.body.len() < identity.body.len(),
        "{} < {}",
        gzipped.body.len(),
        identity.body.len()
    );
    assert_ne!(identity.header("etag"), gzipped.header("etag"));
    assert!(gzipped.header("cache-status").contains("hit"));
    // A client with no Accept-Encoding at all is an identity client.
    let plain = fetch(&gw, "t", KEY_A).await;
    assert_eq!(plain.body, identity.body);
    assert_eq!(plain.header("etag"), identity.header("etag"));
    assert_eq!(sim.fetch_calls("t"), 1);
}

#[tokio::test]
async fn each_representation_is_revalidated_against_its_own_tag() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let path = "/mj/task/t/fetch";
    let gz_tag = get_encoded(&gw, path, "gzip", None)
        .await
        .header("etag")
        .to_owned();
    let id_tag = get_encoded(&gw, path, "identity", None)
        .await
        .header("etag")
        .to_owned();
    let not_modified = get_encoded(&gw, path, "gzip", Some(&gz_tag)).await;
    assert_eq!(not_modified.status, 304);
    assert!(
        not_modified.headers.get("content-encoding").is_none(),
        "no body, no coding"
    );
    assert!(varies_by_encoding(&not_modified));
    assert_eq!(
        get_encoded(&gw, path, "identity", Some(&id_tag))
            .await
            .status,
        304
    );
    // The other representation's tag does not validate this one: the body is sent.
    let crossed = get_encoded(&gw, path, "gzip", Some(&id_tag)).await;
    assert_eq!(crossed.status, 200);
    assert_eq!(crossed.header("content-encoding"), "gzip");
    let crossed = get_encoded(&gw, path, "identity", Some(&gz_tag)).await;
    assert_eq!(crossed.status, 200);
    assert!(crossed.headers.get("content-encoding").is_none());
}

#[tokio::test]
async fn refused_and_unknown_encodings_get_identity() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    for accept in ["gzip;q=0", "br", "*;q=0", "deflate, gzip; q=0.000"] {
        let reply = get_encoded(&gw, "/mj/task/t/fetch", accept, None).await;
        assert_eq!(reply.status, 200, "{accept}");
        assert!(reply.headers.get("content-encoding").is_none(), "{accept}");
        assert!(reply.json()["id"] == "t", "{accept}");
    }
    let star = get_encoded(&gw, "/mj/task/t/fetch", "*", None).await;
    assert_eq!(star.header("content-encoding"), "gzip");
    // Several lines are one list: gzip refused on one is refused, whatever `*` says on another,
    // on a hit and on a batch (the slow path) alike.
    let url = gw.url("/mj/task/t/fetch");
    let lines = &["gzip;q=0", "*"];
    let hit = send(accepting(
        request(Method::GET, &url, Some(KEY_A), ""),
        lines,
    ))
    .await;
    assert_eq!(hit.status, 200);
    assert!(hit.headers.get("content-encoding").is_none());
    let batch_url = gw.url("/mj/task/list-by-condition");
    let body = r#"{"ids":["t"]}"#;
    let batch = send(accepting(
        request(Method::POST, &batch_url, Some(KEY_A), body),
        lines,
    ))
    .await;
    assert_eq!(batch.status, 200);
    assert!(batch.headers.get("content-encoding").is_none());
}

#[tokio::test]
async fn a_batch_of_100_tasks_is_compressed_and_decodes_to_the_identity_batch() {
    let (sim, gw) = start("").await;
    let ids: Vec<String> = (0..100).map(|i| format!("task-{i}")).collect();
    for id in &ids {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let identity = batch(&gw, KEY_A, &ids).await;
    let gzipped = batch_encoded(&gw, &ids, "gzip").await;
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), "gzip");
    assert!(varies_by_encoding(&gzipped) && varies_by_encoding(&identity));
    assert_eq!(gunzip(&gzipped.body), identity.body);
    assert_eq!(identity.json().as_array().unwrap().len(), 100);
    assert!(
        gzipped.body.len() * 4 < identity.body.len(),
        "similar tasks compress well"
    );
    assert_ne!(identity.header("etag"), gzipped.header("etag"));
}

#[tokio::test]
async fn a_long_poll_holding_the_gzip_tag_waits_for_the_change() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"100ms\"\n").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    sim.set_progress("t", "10%");
    let first = get_encoded(&gw, "/mj/task/t/fetch", "gzip", None).await;
    let tag = first.header("etag").to_owned();
    assert!(tag.ends_with("-gzip\""), "{tag}");
    let gw_url = gw.url("/mj/task/t/fetch?wait=10s");
    let waiting = tokio::spawn(async move {
        let mut request = accepting(request(Method::GET, &gw_url, Some(KEY_A), ""), &["gzip"]);
        request
            .headers_mut()
            .insert("if-none-match", tag.parse().unwrap());
        send(request).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set_progress("t", "55%");
    let changed = waiting.await.unwrap();
    assert_eq!(changed.status, 200);
    assert_eq!(changed.header("content-encoding"), "gzip");
    let task: serde_json::Value = serde_json::from_slice(&gunzip(&changed.body)).unwrap();
    assert_eq!(
        task["progress"], "55%",
        "held until the change, not answered at once"
    );
}

#[tokio::test]
async fn short_answers_and_not_found_answers_are_sent_as_they_are() {
    let (sim, gw) = start("").await;
    let missing = get_encoded(&gw, "/mj/task/nope/fetch", "gzip", None).await;
    assert_eq!(missing.status, 404);
    assert!(missing.headers.get("content-encoding").is_none());
    sim.create_task(KEY_A, "t", "SUCCESS");
    let one = batch(&gw, KEY_A, &["nope"]).await;
    assert!(one.headers.get("content-encoding").is_none());
}

#[tokio::test]
async fn gzip_can_be_turned_off() {
    let (sim, gw) = start("[cache]\ngzip = false\n").await;
    let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    for id in &ids {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    let reply = get_encoded(&gw, "/mj/task/t0/fetch", "gzip", None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("content-encoding").is_none());
    assert!(!varies_by_encoding(&reply));
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let batch = batch_encoded(&gw, &ids, "gzip").await;
    assert_eq!(batch.status, 200);
    assert!(
        batch.headers.get("content-encoding").is_none(),
        "batches too"
    );
    assert_eq!(batch.json().as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn gzip_answers_over_http2_decode_too() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let request = accepting(
        request(Method::GET, &gw.url("/mj/task/t/fetch"), Some(KEY_A), ""),
        &["gzip"],
    );
    let response = h2_client().request(request).await.unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let task: serde_json::Value = serde_json::from_slice(&gunzip(&body)).unwrap();
    assert_eq!(task["id"], "t");
}
