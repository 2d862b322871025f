//! The cache is partitioned by credential: no request ever sees an answer fetched with another one.

use http::Method;

use crate::support::*;

#[tokio::test]
async fn another_authorization_never_gets_a_cached_task() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "mine", "SUCCESS");
    assert_eq!(fetch(&gw, "mine", KEY_A).await.status, 200);
    assert_eq!(
        fetch(&gw, "mine", KEY_A).await.cache_status(),
        "mjgate; hit"
    );

    let other = fetch(&gw, "mine", KEY_B).await;
    assert_eq!(
        other.status, 404,
        "key B must get the upstream's own answer"
    );
    assert_eq!(other.json()["description"], "task_no_found");
    assert_eq!(sim.fetch_calls("mine"), 2);
}

#[tokio::test]
async fn mj_api_secret_partitions_the_cache_too() {
    let (sim, gw) = start("").await;
    sim.create_task("secret-1", "t", "SUCCESS");
    let with_secret = |secret: &str| {
        let mut request = request(Method::GET, &gw.url("/mj/task/t/fetch"), None, "");
        request
            .headers_mut()
            .insert("mj-api-secret", secret.parse().unwrap());
        send(request)
    };
    assert_eq!(with_secret("secret-1").await.status, 200);
    assert_eq!(with_secret("secret-1").await.cache_status(), "mjgate; hit");
    assert_eq!(with_secret("secret-2").await.status, 404);
    // The same value as an Authorization header is another credential.
    assert_eq!(fetch(&gw, "t", "secret-1").await.status, 200);
    assert_eq!(sim.fetch_calls("t"), 3);
}

#[tokio::test]
async fn requests_without_a_credential_do_not_see_credentialed_entries() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    fetch(&gw, "t", KEY_A).await;
    let anonymous = send(request(Method::GET, &gw.url("/mj/task/t/fetch"), None, "")).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(sim.fetch_calls("t"), 2);
}

#[tokio::test]
async fn cached_answers_tell_shared_caches_downstream_not_to_store_them() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let miss = fetch(&gw, "t", KEY_A).await;
    let hit = fetch(&gw, "t", KEY_A).await;
    let batch = send(request(
        Method::POST,
        &gw.url("/mj/task/list-by-condition"),
        Some(KEY_A),
        r#"{"ids":["t"]}"#,
    ))
    .await;
    let mut conditional = request(Method::GET, &gw.url("/mj/task/t/fetch"), Some(KEY_A), "");
    conditional
        .headers_mut()
        .insert("if-none-match", hit.header("etag").parse().unwrap());
    let not_modified = send(conditional).await;
    assert_eq!(not_modified.status, 304);
    for (what, reply) in [
        ("miss", &miss),
        ("hit", &hit),
        ("batch", &batch),
        ("304", &not_modified),
    ] {
        assert_eq!(reply.header("cache-control"), "private", "{what}");
    }
}
