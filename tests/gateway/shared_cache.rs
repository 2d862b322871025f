//! Replicas share one cache on Redis: upstream calls do not grow with the replica count, restarts
//! cost finished tasks nothing, and Redis going away fails no request.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use http::HeaderMap;
use mjgate::credential::Fingerprinter;

use crate::support::*;

const SECRET: &str = "test-fingerprint-secret-0123456789";

fn shared_config(sim: &Simulator, redis: &RedisServer, extra: &str) -> mjgate::Config {
    config(
        &sim.url(),
        &format!(
            "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"{SECRET}\"\nkey_prefix = \"test:\"\n{extra}",
            redis.url()
        ),
    )
}

/// `n` gateways in front of `sim`, sharing `redis`.
async fn replicas(sim: &Simulator, redis: &RedisServer, n: usize) -> Vec<Arc<Gateway>> {
    replicas_with(sim, redis, n, "").await
}

/// [`replicas`] with `extra` in their `[shared_cache]`.
async fn replicas_with(
    sim: &Simulator,
    redis: &RedisServer,
    n: usize,
    extra: &str,
) -> Vec<Arc<Gateway>> {
    let mut gateways = Vec::new();
    for _ in 0..n {
        gateways.push(Arc::new(
            start_gateway(shared_config(sim, redis, extra)).await,
        ));
    }
    gateways
}

/// The Redis name of the lease on task `id` of `credential`, as replicas configured with `SECRET` use.
fn lease_key(credential: &str, id: &str) -> String {
    redis_key("lease", credential, id)
}

/// The Redis name of `kind` (`task`, `lease`) for task `id` of `credential`.
fn redis_key(kind: &str, credential: &str, id: &str) -> String {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", credential.parse().unwrap());
    let fingerprint = Fingerprinter::from_secret(SECRET.as_bytes()).fingerprint(&headers);
    let hex: String = fingerprint
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("test:{kind}:{{{hex}:midjourney:{id}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_fetches_spread_over_three_replicas_cost_one_upstream_call() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "hot", "IN_PROGRESS");
    sim.set_latency(Duration::from_millis(300));
    let gateways = replicas(&sim, &redis, 3).await;

    let clients: Vec<_> = (0..100)
        .map(|i| {
            let gateway = Arc::clone(&gateways[i % 3]);
            tokio::spawn(async move { fetch(&gateway, "hot", KEY_A).await })
        })
        .collect();
    for reply in join_all(clients).await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["id"], "hot");
    }
    assert_eq!(sim.fetch_calls("hot"), 1);
    let waited: f64 = join_all(gateways.iter().map(|g| scrape(g)))
        .await
        .iter()
        .map(|s| s.value("mjgate_shared_cache_leases_total", &[("result", "waited")]))
        .sum::<f64>();
    let shared_hits: f64 = join_all(gateways.iter().map(|g| scrape(g)))
        .await
        .iter()
        .map(|s| s.value("mjgate_shared_cache_lookups_total", &[("result", "hit")]))
        .sum::<f64>();
    assert!(
        waited + shared_hits >= 2.0,
        "the two replicas that did not call got the answer through Redis"
    );
}

/// A waiter that looks for the answer just before the holder writes it and releases its lease
/// must not then find the lease free and call again: the look and the lease are one step. Waiters
/// polling Redis every millisecond make that moment likely; across 60 tasks, one step or not shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_answering_between_a_waiters_look_and_its_lease_try_costs_no_second_call() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.set_latency(Duration::from_millis(20));
    let gateways = replicas_with(&sim, &redis, 3, "poll_interval = \"1ms\"\n").await;
    let ids: Vec<String> = (0..60).map(|i| format!("raced-{i}")).collect();
    for id in &ids {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    for round in ids.chunks(10) {
        let fetches = round.iter().flat_map(|id| {
            gateways.iter().map(move |gateway| async move {
                assert_eq!(fetch(gateway, id, KEY_A).await.status, 200);
            })
        });
        join_all(fetches).await;
    }
    let extra: Vec<(&String, u64)> = ids
        .iter()
        .map(|id| (id, sim.fetch_calls(id)))
        .filter(|(_, calls)| *calls != 1)
        .collect();
    assert!(extra.is_empty(), "tasks called more than once: {extra:?}");
}

#[tokio::test]
async fn a_finished_task_fetched_through_one_replica_is_served_by_another_without_an_upstream_call()
{
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "done", "SUCCESS");
    let gateways = replicas(&sim, &redis, 2).await;

    let first = fetch(&gateways[0], "done", KEY_A).await;
    assert_eq!(first.cache_status(), "mjgate; fwd=uri-miss; stored");
    let second = fetch(&gateways[1], "done", KEY_A).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body, "the upstream's bytes, untouched");
    assert_eq!(second.cache_status(), "mjgate; hit; detail=shared");
    assert!(second.headers.contains_key("age"));
    let third = fetch(&gateways[1], "done", KEY_A).await;
    assert_eq!(
        third.cache_status(),
        "mjgate; hit",
        "then from its own memory"
    );
    assert_eq!(sim.fetch_calls("done"), 1);
}

#[tokio::test]
async fn an_in_progress_answer_is_shared_for_its_ttl_only() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let config = shared_config(&sim, &redis, "[cache]\nin_progress_ttl = \"400ms\"\n");
        gateways.push(start_gateway(config).await);
    }
    fetch(&gateways[0], "busy", KEY_A).await;
    assert_eq!(
        fetch(&gateways[1], "busy", KEY_A).await.cache_status(),
        "mjgate; hit; detail=shared"
    );
    assert_eq!(sim.fetch_calls("busy"), 1);

    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.set_status("busy", "SUCCESS");
    let refreshed = fetch(&gateways[1], "busy", KEY_A).await;
    assert_eq!(
        refreshed.json()["status"],
        "SUCCESS",
        "expired in Redis too"
    );
    assert_eq!(sim.fetch_calls("busy"), 2);
    assert_eq!(
        fetch(&gateways[0], "busy", KEY_A).await.json()["status"],
        "SUCCESS",
        "the other replica gets the refreshed answer"
    );
    assert_eq!(sim.fetch_calls("busy"), 2);
}

#[tokio::test]
async fn a_restarted_replica_serves_finished_tasks_from_redis() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    for id in ["t1", "t2", "t3"] {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    let before = start_gateway(shared_config(&sim, &redis, "")).await;
    for id in ["t1", "t2", "t3"] {
        fetch(&before, id, KEY_A).await;
    }
    before.shutdown().await;

    let after = start_gateway(shared_config(&sim, &redis, "")).await;
    for id in ["t1", "t2", "t3"] {
        let reply = fetch(&after, id, KEY_A).await;
        assert_eq!(reply.cache_status(), "mjgate; hit; detail=shared");
        assert_eq!(sim.fetch_calls(id), 1, "{id} was not asked again");
    }
}

#[tokio::test]
async fn a_batch_takes_ids_from_redis_and_asks_the_upstream_only_for_the_rest() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    for id in ["b1", "b2", "b3"] {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    let gateways = replicas(&sim, &redis, 2).await;
    fetch(&gateways[0], "b1", KEY_A).await;
    fetch(&gateways[0], "b2", KEY_A).await;

    let url = gateways[1].url("/mj/task/list-by-condition");
    let body = r#"{"ids":["b1","b2","b3"]}"#;
    let reply = send(request(http::Method::POST, &url, Some(KEY_A), body)).await;
    assert_eq!(reply.status, 200);
    let ids: Vec<String> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["b1", "b2", "b3"]);
    assert_eq!(reply.cache_status(), "mjgate; fwd=partial; stored");
    assert_eq!(sim.list_calls(), vec![vec!["b3".to_owned()]]);
    for id in ["b1", "b2", "b3"] {
        assert_eq!(sim.lookups(id), 1, "{id}");
    }
    // And the batch's own answer is shared back.
    assert_eq!(
        fetch(&gateways[0], "b3", KEY_A).await.cache_status(),
        "mjgate; hit; detail=shared"
    );
}

#[tokio::test]
async fn credentials_stay_partitioned_across_replicas_and_keys_name_no_credential() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "mine", "SUCCESS");
    let gateways = replicas(&sim, &redis, 2).await;
    assert_eq!(fetch(&gateways[0], "mine", KEY_A).await.status, 200);

    let other = fetch(&gateways[1], "mine", KEY_B).await;
    assert_eq!(other.status, 404, "key B does not see key A's task");
    assert!(!other.cache_status().contains("hit"));

    let mut connection = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.starts_with("test:"), "{key}");
        assert!(!key.contains("sk-key"), "a key names a credential: {key}");
        let value: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&value);
        assert!(
            !text.contains("sk-key"),
            "a value holds a credential: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_fails_no_request_and_sharing_resumes_when_it_returns() {
    let logs = crate::observability::captured_logs();
    let mut redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    for id in ["before", "during", "after"] {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    let gateways = replicas(&sim, &redis, 2).await;
    fetch(&gateways[0], "before", KEY_A).await;

    redis.stop();
    // Every request is answered; each replica still collapses its own concurrent misses.
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let gateway = Arc::clone(&gateways[i % 2]);
            tokio::spawn(async move { fetch(&gateway, "during", KEY_A).await })
        })
        .collect();
    for reply in join_all(clients).await {
        assert_eq!(reply.unwrap().status, 200);
    }
    assert!(
        sim.fetch_calls("during") <= 2,
        "at most one call per replica, got {}",
        sim.fetch_calls("during")
    );
    let before = fetch(&gateways[1], "before", KEY_A).await;
    assert_eq!(before.status, 200, "a miss with Redis down goes upstream");
    wait_for_shared_state(&gateways[0], false).await;
    let metrics = scrape(&gateways[0]).await;
    assert!(metrics.value("mjgate_shared_cache_errors_total", &[]) >= 1.0);

    redis.restart();
    wait_for_shared_state(&gateways[0], true).await;
    wait_for_shared_state(&gateways[1], true).await;
    fetch(&gateways[0], "after", KEY_A).await;
    assert_eq!(
        fetch(&gateways[1], "after", KEY_A).await.cache_status(),
        "mjgate; hit; detail=shared",
        "sharing resumed"
    );
    assert_eq!(sim.fetch_calls("after"), 1);
    assert!(
        scrape(&gateways[0])
            .await
            .value("mjgate_shared_cache_state_changes_total", &[])
            >= 2.0
    );
    // Logged once per state change and replica, not once per failed command.
    let address = redis.url().replace("redis://", "");
    let text = logs.text();
    let lines = |needle: &str| {
        text.lines()
            .filter(|l| l.contains(needle) && l.contains(&address))
            .count()
    };
    assert_eq!(lines("shared cache unreachable"), 2, "{text}");
    assert_eq!(lines("shared cache reachable again"), 2, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_one_timeout_then_requests_skip_it_until_it_answers() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    for id in ["slow-1", "slow-2", "later"] {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    let gateways = replicas(&sim, &redis, 2).await;
    fetch(&gateways[0], "later", KEY_A).await; // connected and working

    redis.pause();
    let reply = fetch(&gateways[0], "slow-1", KEY_A).await;
    assert_eq!(
        reply.status, 200,
        "answered from the upstream after the Redis deadline"
    );
    let metrics = scrape(&gateways[0]).await;
    assert!(metrics.value("mjgate_shared_cache_errors_total", &[("kind", "timeout")]) >= 1.0);
    assert_eq!(metrics.value("mjgate_shared_cache_up", &[]), 0.0);
    let reply = fetch(&gateways[0], "slow-2", KEY_A).await;
    assert_eq!(reply.status, 200);
    let metrics = scrape(&gateways[0]).await;
    assert!(
        metrics.value(
            "mjgate_shared_cache_lookups_total",
            &[("result", "skipped")]
        ) >= 1.0,
        "once marked down, Redis is not asked"
    );

    redis.resume();
    wait_for_shared_state(&gateways[0], true).await;
    assert_eq!(
        fetch(&gateways[1], "later", KEY_A).await.cache_status(),
        "mjgate; hit; detail=shared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_release_failed_is_released_when_redis_answers_again() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.set_latency(Duration::from_millis(800));
    let gateway = Arc::new(start_gateway(shared_config(&sim, &redis, "")).await);
    let mut connection = redis.connection().await;
    let lease = lease_key(KEY_A, "t");
    let call = {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move { fetch(&gateway, "t", KEY_A).await })
    };
    poll_until("the gateway holds the lease", || {
        let mut connection = connection.clone();
        let lease = lease.clone();
        async move {
            let held: Option<String> = redis::cmd("GET")
                .arg(lease)
                .query_async(&mut connection)
                .await
                .unwrap();
            held.is_some()
        }
    })
    .await;
    // Redis hangs while the upstream call runs: the answer's write and the release fail.
    redis.pause();
    assert_eq!(call.await.unwrap().status, 200);
    redis.resume();
    wait_for_shared_state(&gateway, true).await;
    let held: Option<String> = redis::cmd("GET")
        .arg(&lease)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        held, None,
        "released on the way back up, not left to expire after lease_ttl"
    );
}

#[tokio::test]
async fn a_lease_left_by_a_dead_replica_expires_and_is_taken_over() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "orphan", "SUCCESS");
    let gateway = start_gateway(shared_config(&sim, &redis, "lease_ttl = \"300ms\"\n")).await;

    // A replica took the lease and died: its lease stays until it expires.
    let mut connection = redis.connection().await;
    let _: () = redis::cmd("SET")
        .arg(lease_key(KEY_A, "orphan"))
        .arg("dead-replica")
        .arg("PX")
        .arg(300)
        .query_async(&mut connection)
        .await
        .unwrap();

    let reply = fetch(&gateway, "orphan", KEY_A).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.cache_status(), "mjgate; fwd=uri-miss; stored");
    assert_eq!(sim.fetch_calls("orphan"), 1);
    let metrics = scrape(&gateway).await;
    assert_eq!(
        metrics.value(
            "mjgate_shared_cache_leases_total",
            &[("result", "taken_over")]
        ),
        1.0
    );
    // Its own lease is gone once the answer is written.
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("test:lease:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(leases.is_empty(), "{leases:?}");
}

#[tokio::test]
async fn without_a_redis_url_each_instance_keeps_its_own_cache() {
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "solo", "SUCCESS");
    let a = start_gateway(config(&sim.url(), "")).await;
    let b = start_gateway(config(&sim.url(), "")).await;
    fetch(&a, "solo", KEY_A).await;
    fetch(&b, "solo", KEY_A).await;
    assert_eq!(sim.fetch_calls("solo"), 2);
    assert_eq!(scrape(&a).await.value("mjgate_shared_cache_up", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_replica_is_woken_by_the_announcement_not_by_polling() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.set_latency(Duration::from_millis(300));
    // Polling Redis once a minute: only the pub/sub notice can wake the waiter within the client's
    // 20-second timeout.
    let slow_polls = "poll_interval = \"60s\"\n";
    let a = Arc::new(start_gateway(shared_config(&sim, &redis, slow_polls)).await);
    let b = Arc::new(start_gateway(shared_config(&sim, &redis, slow_polls)).await);
    // Both replicas listen on the announcement channel before the race starts.
    let mut connection = redis.connection().await;
    for _ in 0..200 {
        let (_, listeners): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("test:landed")
            .query_async(&mut connection)
            .await
            .unwrap();
        if listeners == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let first = tokio::spawn({
        let a = Arc::clone(&a);
        async move { fetch(&a, "t", KEY_A).await }
    });
    sim.wait_for_calls(1).await;
    let second = fetch(&b, "t", KEY_A).await;
    assert_eq!(second.status, 200);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(sim.fetch_calls("t"), 1);
    assert_eq!(
        scrape(&b)
            .await
            .value("mjgate_shared_cache_leases_total", &[("result", "waited")]),
        1.0
    );
}

#[tokio::test]
async fn a_replica_releases_only_its_own_lease() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    let gateway = start_gateway(shared_config(&sim, &redis, "")).await;
    let hold = sim.hold();
    let reply = tokio::spawn({
        let url = gateway.url("/mj/task/t/fetch");
        async move { send(request(http::Method::GET, &url, Some(KEY_A), "")).await }
    });
    sim.wait_for_calls(1).await;
    // Meanwhile its lease lapsed and another replica took the key (another token in its place).
    let mut connection = redis.connection().await;
    let _: () = redis::cmd("SET")
        .arg(lease_key(KEY_A, "t"))
        .arg("another-replica")
        .arg("PX")
        .arg(10_000)
        .query_async(&mut connection)
        .await
        .unwrap();
    drop(hold);
    assert_eq!(reply.await.unwrap().status, 200);
    let holder: Option<String> = redis::cmd("GET")
        .arg(lease_key(KEY_A, "t"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        holder.as_deref(),
        Some("another-replica"),
        "the release deleted someone else's lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_moved_to_another_credentials_key_is_refetched_never_served() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    let first = start_gateway(shared_config(&sim, &redis, "")).await;
    assert_eq!(fetch(&first, "t", KEY_A).await.status, 200);
    // Someone with access to Redis copies A's answer under B's key.
    let mut connection = redis.connection().await;
    let copied: i64 = redis::cmd("COPY")
        .arg(redis_key("task", KEY_A, "t"))
        .arg(redis_key("task", KEY_B, "t"))
        .arg("REPLACE")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(copied, 1);
    let second = start_gateway(shared_config(&sim, &redis, "")).await;
    let theirs = fetch(&second, "t", KEY_B).await;
    assert_eq!(theirs.status, 404, "B is not A: {:?}", theirs.body);
    assert_eq!(
        sim.fetch_calls("t"),
        2,
        "B's own answer came from the upstream"
    );
    let m = scrape(&second).await;
    assert_eq!(
        m.value("mjgate_shared_cache_errors_total", &[("kind", "corrupt")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_redis_could_hold_but_no_replica_wrote_are_refetched() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    let gw = start_gateway(shared_config(
        &sim,
        &redis,
        "[upstream]\nmax_body = \"1MiB\"\n",
    ))
    .await;
    let mut connection = redis.connection().await;
    let mut planted = Vec::new();
    // An old version's value with a status no HTTP answer has; a 20 MiB blob; plain garbage.
    let mut bogus = b"MJG2\x00\x03\xe7".to_vec();
    bogus.extend_from_slice(&[0u8; 26]);
    bogus.extend_from_slice(br#"{"id":"a","status":"SUCCESS"}"#);
    for (id, value) in [
        ("a", bogus),
        ("b", vec![b'x'; 20 << 20]),
        ("c", b"not a value".to_vec()),
    ] {
        sim.create_task(KEY_A, id, "IN_PROGRESS");
        let _: () = redis::cmd("SET")
            .arg(redis_key("task", KEY_A, id))
            .arg(value)
            .query_async(&mut connection)
            .await
            .unwrap();
        planted.push(id);
    }
    for id in planted {
        let reply = fetch(&gw, id, KEY_A).await;
        assert_eq!(reply.status, 200, "{id}");
        assert_eq!(
            reply.json()["status"],
            "IN_PROGRESS",
            "{id}: the upstream's answer"
        );
        assert_eq!(sim.fetch_calls(id), 1, "{id}");
    }
    let m = scrape(&gw).await;
    assert_eq!(
        m.value("mjgate_shared_cache_errors_total", &[("kind", "corrupt")]),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_another_type_are_one_bad_answer_each_not_a_failing_redis() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    let gateways = replicas(&sim, &redis, 2).await;
    let mut connection = redis.connection().await;
    // Hashes where a task's value (running and finished) and a lease go.
    for (key, id, status) in [
        (
            redis_key("task", KEY_A, "running"),
            "running",
            "IN_PROGRESS",
        ),
        (redis_key("task", KEY_A, "done"), "done", "SUCCESS"),
        (lease_key(KEY_A, "leased"), "leased", "SUCCESS"),
    ] {
        sim.create_task(KEY_A, id, status);
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg("field")
            .arg("value")
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    for id in ["running", "done", "leased"] {
        let reply = fetch(&gateways[0], id, KEY_A).await;
        assert_eq!(reply.status, 200, "{id}");
        assert_eq!(sim.fetch_calls(id), 1, "{id}");
    }
    let m = scrape(&gateways[0]).await;
    assert_eq!(m.value("mjgate_shared_cache_up", &[]), 1.0, "still up");
    assert_eq!(m.value("mjgate_shared_cache_state_changes_total", &[]), 0.0);
    assert_eq!(
        m.value("mjgate_shared_cache_errors_total", &[("kind", "error")]),
        0.0
    );
    assert!(m.value("mjgate_shared_cache_errors_total", &[("kind", "corrupt")]) >= 3.0);
    // The answers written over the planted values are the other replica's to share.
    for id in ["running", "done"] {
        assert_eq!(
            fetch(&gateways[1], id, KEY_A).await.cache_status(),
            "mjgate; hit; detail=shared",
            "{id}"
        );
        assert_eq!(sim.fetch_calls(id), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_no_replica_wrote_is_not_waited_on() {
    let redis = RedisServer::start();
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let gw = start_gateway(shared_config(&sim, &redis, "")).await;
    let mut connection = redis.connection().await;
    // A lease without an expiry: it would block every replica for ever (and a waiter for up to
    // queue_timeout + request_timeout + lease_ttl, 36 s, past the test client's 20 s).
    let _: () = redis::cmd("SET")
        .arg(lease_key(KEY_A, "t"))
        .arg("someone")
        .query_async(&mut connection)
        .await
        .unwrap();
    let reply = fetch(&gw, "t", KEY_A).await;
    assert_eq!(reply.status, 200);
    assert_eq!(sim.fetch_calls("t"), 1);
    let m = scrape(&gw).await;
    assert_eq!(
        m.value("mjgate_shared_cache_errors_total", &[("kind", "corrupt")]),
        1.0
    );
}

#[tokio::test]
async fn a_redis_that_cannot_be_reached_reads_down_from_the_start_without_a_request() {
    let sim = Simulator::start().await.unwrap();
    // Nothing listens there.
    let text = format!(
        "[shared_cache]\nredis_url = \"redis://127.0.0.1:{}\"\nfingerprint_secret = \"{SECRET}\"\n",
        free_port()
    );
    let gateway = start_gateway(config(&sim.url(), &text)).await;
    wait_for_shared_state(&gateway, false).await;
    assert_eq!(sim.total_calls(), 0, "no request needed to find out");
}
