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
