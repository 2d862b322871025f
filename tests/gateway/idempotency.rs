//! Submits that are safe to retry: with the same `Idempotency-Key`, a retry gets the first request's
//! answer and the upstream sees one submit, whatever the client does in between.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use http_body_util::Full;

use crate::support::*;

const IMAGINE: &str = r#"{"prompt":"a cat in a hat"}"#;

/// `POST path` with `body`, `credential` and, when given, `Idempotency-Key: key`.
fn submit_request(
    gw: &Gateway,
    path: &str,
    credential: &str,
    key: Option<&str>,
    body: &str,
) -> Request<Full<bytes::Bytes>> {
    let mut request = request(Method::POST, &gw.url(path), Some(credential), body);
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    request
}

async fn imagine(gw: &Gateway, key: Option<&str>) -> Reply {
    send(submit_request(
        gw,
        "/mj/submit/imagine",
        KEY_A,
        key,
        IMAGINE,
    ))
    .await
}

fn assert_problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.json()["status"], status);
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_answer_and_the_upstream_sees_one_submit() {
    let (sim, gw) = start("").await;
    let first = imagine(&gw, Some("8e03978e-40d5-43e8-bc93-6894a57f9324")).await;
    assert_eq!(first.status, 200);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // The draft's Structured Field form names the same key as the bare one.
    for key in [
        "8e03978e-40d5-43e8-bc93-6894a57f9324",
        "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
    ] {
        let again = imagine(&gw, Some(key)).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.header("idempotent-replayed"), "true");
        assert_eq!(again.body, first.body, "byte for byte");
        assert_eq!(again.header("content-type"), first.header("content-type"));
    }
    assert_eq!(sim.submits(), 1);
    let m = scrape(&gw).await;
    assert_eq!(
        m.value("mjgate_idempotency_total", &[("outcome", "stored")]),
        1.0
    );
    assert_eq!(
        m.value("mjgate_idempotency_total", &[("outcome", "replayed")]),
        2.0
    );
    // Without a key, submits pass through as before: every one is a new task.
    imagine(&gw, None).await;
    imagine(&gw, None).await;
    assert_eq!(sim.submits(), 3);
}

#[tokio::test]
async fn a_retry_while_the_first_is_in_flight_gets_409_and_then_the_answer() {
    let (sim, gw) = start("").await;
    sim.set_submit_latency(Duration::from_millis(1500));
    let gw = Arc::new(gw);
    let first = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { imagine(&gw, Some("k-1")).await })
    };
    poll_until("the first submit reached the upstream", || async {
        sim.submits() == 1
    })
    .await;
    let conflict = imagine(&gw, Some("k-1")).await;
    assert_problem(&conflict, 409);
    assert!(conflict.headers.contains_key("retry-after"));
    let first = first.await.unwrap();
    let replay = imagine(&gw, Some("k-1")).await;
    assert_eq!(replay.body, first.body);
    assert_eq!(sim.submits(), 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422_and_bad_keys_are_400_none_reaching_the_upstream() {
    let (sim, gw) = start("").await;
    assert_eq!(imagine(&gw, Some("k")).await.status, 200);
    let other = send(submit_request(
        &gw,
        "/mj/submit/imagine",
        KEY_A,
        Some("k"),
        r#"{"prompt":"a dog"}"#,
    ))
    .await;
    assert_problem(&other, 422);
    for bad in [
        "\"\"",
        "\"unterminated",
        &"k".repeat(256),
        "two words",
        "\"a\";p=1",
    ] {
        let reply = imagine(&gw, Some(bad)).await;
        assert_problem(&reply, 400);
    }
    let mut two = submit_request(&gw, "/mj/submit/imagine", KEY_A, Some("a"), IMAGINE);
    two.headers_mut()
        .append("idempotency-key", "b".parse().unwrap());
    assert_problem(&send(two).await, 400);
    assert_eq!(sim.submits(), 1, "only the first ever reached the upstream");
    let m = scrape(&gw).await;
    assert_eq!(
        m.value("mjgate_idempotency_total", &[("outcome", "mismatch")]),
        1.0
    );
    assert_eq!(
        m.value("mjgate_idempotency_total", &[("outcome", "invalid")]),
        6.0
    );
}

#[tokio::test]
async fn keys_are_scoped_to_the_credential_and_no_spelling_of_a_route_makes_a_second_task() {
    let (sim, gw) = start("").await;
    let a = imagine(&gw, Some("shared-key")).await;
    let b = send(submit_request(
        &gw,
        "/mj/submit/imagine",
        KEY_B,
        Some("shared-key"),
        IMAGINE,
    ))
    .await;
    assert_eq!(b.status, 200);
    assert!(
        b.headers.get("idempotent-replayed").is_none(),
        "B never sees A's answer"
    );
    assert_ne!(a.json()["result"], b.json()["result"]);
    // Spellings a lenient upstream routes alike are one request: the first answer, replayed.
    for spelling in [
        "/MJ/SUBMIT/IMAGINE",
        "/mj//submit/imagine",
        "/mj/submit/imagine/",
        "/mj/%73ubmit/imagine",
    ] {
        let again = send(submit_request(
            &gw,
            spelling,
            KEY_A,
            Some("shared-key"),
            IMAGINE,
        ))
        .await;
        assert_eq!(again.header("idempotent-replayed"), "true", "{spelling}");
        assert_eq!(again.body, a.body, "{spelling}");
    }
    // Another route under the same key (a mode segment, another action, a parameter) is another
    // request: refused as a key reused for a different one (as Stripe does), never a second task.
    for other in [
        "/mj-fast/mj/submit/imagine",
        "/a/b/mj/submit/imagine",
        "/mj/submit/imagine;x=1",
        "/mj/submit/blend",
    ] {
        let reused = send(submit_request(
            &gw,
            other,
            KEY_A,
            Some("shared-key"),
            IMAGINE,
        ))
        .await;
        assert_eq!(reused.status, 422, "{other}: {:?}", reused.body);
    }
    assert_eq!(sim.submits(), 2, "A's and B's, nothing more");
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_submit_gets_the_answer_on_retry_and_one_task_is_made() {
    let (sim, gw) = start("").await;
    sim.set_submit_latency(Duration::from_millis(1200));
    let gw = Arc::new(gw);
    let hung_up = tokio::time::timeout(Duration::from_millis(200), imagine(&gw, Some("h"))).await;
    assert!(hung_up.is_err(), "the client gave up");
    // Retried at once: still in flight.
    assert_problem(&imagine(&gw, Some("h")).await, 409);
    poll_until("the first submit's answer is kept", || async {
        scrape(&gw)
            .await
            .value("mjgate_idempotency_total", &[("outcome", "stored")])
            == 1.0
    })
    .await;
    let retry = imagine(&gw, Some("h")).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert_eq!(retry.json()["code"], 1);
    assert_eq!(sim.submits(), 1);
}

#[tokio::test]
async fn nothing_is_kept_when_the_submit_never_reached_the_upstream() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let gw = start_gateway(config(&format!("http://{addr}"), "")).await;
    let refused = imagine(&gw, Some("fresh")).await;
    assert_eq!(refused.status, 502, "no connection could be made");
    // The upstream comes up on that address: the retry is a fresh attempt, not a replay of the 502.
    let sim = Simulator::start_on(tokio::net::TcpListener::bind(addr).await.unwrap()).unwrap();
    let retry = imagine(&gw, Some("fresh")).await;
    assert_eq!(retry.status, 200);
    assert!(retry.headers.get("idempotent-replayed").is_none());
    assert_eq!(sim.submits(), 1);
}

#[tokio::test]
async fn an_answer_that_never_came_is_kept_so_the_retry_is_never_a_second_task() {
    let (sim, gw) = start("[upstream]\nsubmit_timeout = \"300ms\"\n").await;
    sim.set_submit_latency(Duration::from_secs(2));
    let first = imagine(&gw, Some("slow")).await;
    assert_eq!(first.status, 504);
    let retry = imagine(&gw, Some("slow")).await;
    assert_eq!(retry.status, 504);
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert!(
        retry.json()["description"]
            .as_str()
            .unwrap()
            .contains("may have started the task")
    );
    assert_eq!(sim.submits(), 1);
}

#[tokio::test]
async fn other_routes_ignore_the_header_and_required_mode_refuses_submits_without_one() {
    let (sim, gw) = start("[idempotency]\nrequire = true\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let listed = send(submit_request(
        &gw,
        "/mj/task/list-by-condition",
        KEY_A,
        Some("k"),
        r#"{"ids":["t"]}"#,
    ))
    .await;
    assert_eq!(listed.status, 200, "a batch is no submit");
    let models = send(submit_request(
        &gw,
        "/v1/chat/completions",
        KEY_A,
        None,
        "{}",
    ))
    .await;
    assert_eq!(models.status, 404, "passthrough, no key needed");
    assert_problem(&imagine(&gw, None).await, 400);
    assert_eq!(imagine(&gw, Some("k")).await.status, 200);
    assert_eq!(sim.submits(), 1);
}

#[tokio::test]
async fn a_credential_past_its_share_of_keys_is_told_to_wait() {
    let (sim, gw) = start("[idempotency]\nmax_keys_per_credential = 2\n").await;
    assert_eq!(imagine(&gw, Some("one")).await.status, 200);
    assert_eq!(imagine(&gw, Some("two")).await.status, 200);
    let third = imagine(&gw, Some("three")).await;
    assert_problem(&third, 429);
    assert!(third.headers.contains_key("retry-after"));
    // Its own keys still replay, and another credential is not held back.
    assert_eq!(
        imagine(&gw, Some("one"))
            .await
            .header("idempotent-replayed"),
        "true"
    );
    let theirs = send(submit_request(
        &gw,
        "/mj/submit/imagine",
        KEY_B,
        Some("three"),
        IMAGINE,
    ))
    .await;
    assert_eq!(theirs.status, 200);
    assert_eq!(sim.submits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_redis_answer_one_key_alike() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.set_submit_latency(Duration::from_millis(800));
    let text = format!(
        "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"0123456789abcdef0123456789abcdef\"\nkey_prefix = \"idem:\"\n",
        redis.url()
    );
    let first = Arc::new(start_gateway(config(&sim.url(), &text)).await);
    let second = start_gateway(config(&sim.url(), &text)).await;
    let original = {
        let first = Arc::clone(&first);
        tokio::spawn(async move { imagine(&first, Some("across")).await })
    };
    poll_until("the submit reached the upstream", || async {
        sim.submits() == 1
    })
    .await;
    assert_problem(&imagine(&second, Some("across")).await, 409);
    let original = original.await.unwrap();
    let replay = imagine(&second, Some("across")).await;
    assert_eq!(replay.header("idempotent-replayed"), "true");
    assert_eq!(replay.body, original.body);
    assert_eq!(sim.submits(), 1);
    // The answer is sealed in Redis: the prompt is nowhere in clear.
    let mut connection = redis.connection().await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("idem:idem:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let value: Vec<u8> = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    let result = original.json()["result"].as_str().unwrap().to_owned();
    assert!(!value.windows(result.len()).any(|w| w == result.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_submit_leaves_a_claim_that_keeps_the_retry_from_a_second_task() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.set_submit_latency(Duration::from_secs(3));
    let text = format!(
        "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"0123456789abcdef0123456789abcdef\"\nkey_prefix = \"killed:\"\n",
        redis.url()
    );
    let file =
        crate::config_cli::write_config(&format!("{text}[upstream]\nurl = \"{}\"\n", sim.url()));
    let mut command = crate::config_cli::mjgate();
    command
        .arg("--config")
        .arg(&file.0)
        .args(["--listen", "127.0.0.1:0"]);
    let (mut child, addr) = crate::config_cli::spawn_listening(&mut command);
    let submit = {
        let url = format!("http://{addr}/mj/submit/imagine");
        tokio::spawn(async move {
            let mut request = request(Method::POST, &url, Some(KEY_A), IMAGINE);
            request
                .headers_mut()
                .insert("idempotency-key", "dies".parse().unwrap());
            try_send(request).await
        })
    };
    poll_until("the submit reached the upstream", || async {
        sim.submits() == 1
    })
    .await;
    child.kill().unwrap(); // SIGKILL mid-submit: no answer is ever written
    child.wait().unwrap();
    assert!(submit.await.unwrap().is_err());
    let survivor = start_gateway(config(&sim.url(), &text)).await;
    for _ in 0..3 {
        assert_problem(&imagine(&survivor, Some("dies")).await, 409);
    }
    assert_eq!(
        sim.submits(),
        1,
        "never sent twice while the first may still land"
    );
}
