//! The shared tier on the Redis operators run: TLS (a private CA, client certificates), ACL users
//! and passwords kept out of the file, a three-master Redis Cluster, and a master under Sentinel.
//! In each, replicas collapse across each other and share finished tasks, and losing a node
//! (a cluster master, a sentinel's master) fails no client request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;

use crate::support::*;

const SECRET: &str = "topology-fingerprint-secret-0123456789";

/// A gateway config sharing its cache through `[shared_cache]` `layout` (its layout keys, TLS
/// files), with quick probes so tests do not wait long on a returning Redis, and a deadline of 2 s
/// rather than 250 ms: a debug build's TLS handshakes on a busy test machine are not what is tested.
fn shared(sim: &Simulator, layout: &str, password: Option<&str>) -> mjgate::Config {
    let mut config = config(
        &sim.url(),
        &format!(
            "[shared_cache]\nfingerprint_secret = \"{SECRET}\"\nkey_prefix = \"test:\"\nretry_interval = \"100ms\"\ntimeout = \"2s\"\n{layout}\n"
        ),
    );
    // What `MJGATE_REDIS_PASSWORD` sets.
    config.shared_cache.as_mut().unwrap().password = password.map(str::to_owned);
    config
}

/// These tests run one at a time: each starts up to six Redis processes and kills some, and on a
/// two-core machine running the rest of the suite, several at once make healthy nodes miss their
/// deadlines.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

async fn replicas(configs: impl IntoIterator<Item = mjgate::Config>) -> Vec<Arc<Gateway>> {
    let mut gateways = Vec::new();
    for config in configs {
        gateways.push(Arc::new(start_gateway(config).await));
    }
    gateways
}

/// 40 concurrent fetches of a fresh slow task spread over `gateways` cost one upstream call, and a
/// finished task fetched through the first is served by the second from Redis.
async fn assert_replicas_share(sim: &Simulator, gateways: &[Arc<Gateway>], tag: &str) {
    let hot = format!("hot-{tag}");
    sim.create_task(KEY_A, &hot, "IN_PROGRESS");
    sim.set_latency(Duration::from_millis(300));
    let clients: Vec<_> = (0..40)
        .map(|i| {
            let gateway = Arc::clone(&gateways[i % gateways.len()]);
            let hot = hot.clone();
            tokio::spawn(async move { fetch(&gateway, &hot, KEY_A).await })
        })
        .collect();
    for reply in join_all(clients).await {
        assert_eq!(reply.unwrap().status, 200);
    }
    sim.set_latency(Duration::ZERO);
    let calls = sim.fetch_calls(&hot);
    if calls != 1 {
        // Say why: each replica's view of the tier (leases won, waited, given up; errors).
        let mut tier = String::new();
        for (g, gateway) in gateways.iter().enumerate() {
            let scrape = scrape(gateway).await;
            for line in scrape.text.lines() {
                if line.starts_with("mjgate_shared_cache_") {
                    tier.push_str(&format!("replica {g}: {line}\n"));
                }
            }
        }
        panic!("{calls} upstream calls across replicas, not 1:\n{tier}");
    }

    assert_finished_shared(sim, gateways, &format!("done-{tag}")).await;
}

/// A task finished upstream, fetched through the first replica, is served by the second from
/// Redis: one upstream call.
async fn assert_finished_shared(sim: &Simulator, gateways: &[Arc<Gateway>], id: &str) {
    sim.create_task(KEY_A, id, "SUCCESS");
    assert_eq!(fetch(&gateways[0], id, KEY_A).await.status, 200);
    assert_eq!(
        fetch(&gateways[1], id, KEY_A).await.cache_status(),
        "mjgate; hit; detail=shared"
    );
    assert_eq!(sim.fetch_calls(id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_private_ca_replicas_share_one_cache() {
    let _serial = one_at_a_time().await;
    let pki = Pki::new("redis-tls");
    let redis = RedisServer::start_with(RedisOptions {
        tls: Some(pki.redis_files(false)),
        ..RedisOptions::default()
    });
    let sim = Simulator::start().await.unwrap();
    let layout = format!(
        "redis_url = \"{}\"\nca_file = {}",
        redis.tls_url(),
        toml_path(&pki.ca_file())
    );
    let gateways = replicas((0..2).map(|_| shared(&sim, &layout, None))).await;
    assert_replicas_share(&sim, &gateways, "tls").await;
    let connected = redis.cli(&["INFO", "clients"]);
    assert!(connected.contains("connected_clients:"), "{connected}");
    assert_eq!(
        scrape(&gateways[0])
            .await
            .value("mjgate_shared_cache_errors_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_server_that_requires_client_certificates_gets_the_configured_one() {
    let _serial = one_at_a_time().await;
    let pki = Pki::new("redis-mtls");
    let redis = RedisServer::start_with(RedisOptions {
        tls: Some(pki.redis_files(true)),
        ..RedisOptions::default()
    });
    let (cert, key) = pki.client_files();
    let sim = Simulator::start().await.unwrap();
    let base = format!(
        "redis_url = \"{}\"\nca_file = {}",
        redis.tls_url(),
        toml_path(&pki.ca_file())
    );
    let with_certificate = format!(
        "{base}\nclient_cert_file = {}\nclient_key_file = {}",
        toml_path(&cert),
        toml_path(&key)
    );
    let gateways = replicas((0..2).map(|_| shared(&sim, &with_certificate, None))).await;
    assert_replicas_share(&sim, &gateways, "mtls").await;

    // Without one, the server hangs up: requests are answered local-only, and it is counted.
    let bare = start_gateway(shared(&sim, &base, None)).await;
    sim.create_task(KEY_A, "bare", "SUCCESS");
    assert_eq!(fetch(&bare, "bare", KEY_A).await.status, 200);
    wait_for_shared_state(&bare, false).await;
    assert!(
        scrape(&bare)
            .await
            .value("mjgate_shared_cache_errors_total", &[])
            >= 1.0
    );
}

#[tokio::test]
async fn a_redis_certificate_from_another_ca_is_refused_in_plain_words_and_counted() {
    let _serial = one_at_a_time().await;
    let logs = crate::observability::captured_logs();
    let pki = Pki::new("redis-ca");
    let other = Pki::new("redis-other-ca");
    let redis = RedisServer::start_with(RedisOptions {
        tls: Some(pki.redis_files(false)),
        ..RedisOptions::default()
    });
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t1", "SUCCESS");
    let layout = format!(
        "redis_url = \"{}\"\nca_file = {}",
        redis.tls_url(),
        toml_path(&other.ca_file())
    );
    let gateway = start_gateway(shared(&sim, &layout, None)).await;
    assert_eq!(fetch(&gateway, "t1", KEY_A).await.status, 200);
    wait_for_shared_state(&gateway, false).await;
    // The handshake fails in whichever connects first (a request, the probe, the listener).
    let mut counted = 0.0;
    for _ in 0..200 {
        counted = scrape(&gateway).await.value(
            "mjgate_shared_cache_errors_total",
            &[("kind", "tls_certificate")],
        );
        if counted >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(counted >= 1.0, "{}", logs.text());
    assert!(
        logs.text()
            .contains("Redis's TLS certificate is not signed by a trusted authority"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn an_acl_user_with_its_password_from_the_environment_shares_within_its_keys() {
    let _serial = one_at_a_time().await;
    // `mjgate` has the rules docs/operations.md gives: only `test:` keys and channels, nothing
    // dangerous; `default` is the test's own.
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("admin-pass".into()),
        args: [
            "--user",
            "mjgate",
            "on",
            ">acl-pass-5d1c",
            "~test:*",
            "&test:*",
            "+@all",
            "-@dangerous",
            "+cluster|nodes",
            "+scan",
        ]
        .map(String::from)
        .to_vec(),
        ..RedisOptions::default()
    });
    let sim = Simulator::start().await.unwrap();
    let layout = format!("redis_url = \"redis://mjgate@127.0.0.1:{}\"", redis.port());
    let gateways = replicas((0..2).map(|_| shared(&sim, &layout, Some("acl-pass-5d1c")))).await;
    assert_replicas_share(&sim, &gateways, "acl").await;
    let metrics = scrape(&gateways[0]).await;
    assert_eq!(metrics.value("mjgate_shared_cache_errors_total", &[]), 0.0);
    assert!(!metrics.text.contains("acl-pass"), "no password in metrics");

    // A wrong password: refused by Redis, every request still answered.
    let wrong = start_gateway(shared(&sim, &layout, Some("not-the-password"))).await;
    sim.create_task(KEY_A, "wrong", "SUCCESS");
    assert_eq!(fetch(&wrong, "wrong", KEY_A).await.status, 200);
    wait_for_shared_state(&wrong, false).await;
}

/// The Redis names of task `id` of `KEY_A` (its value and lease), as `SECRET` replicas write them.
fn task_names(id: &str) -> [String; 2] {
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", KEY_A.parse().unwrap());
    let fingerprint =
        mjgate::credential::Fingerprinter::from_secret(SECRET.as_bytes()).fingerprint(&headers);
    let hex: String = fingerprint
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ["task", "lease"].map(|kind| format!("test:{kind}:{{{hex}:midjourney:{id}}}"))
}

/// Fetches fresh finished tasks through each gateway until one of its lands in Redis (`written` of
/// its task key): every replica is writing to the Redis that serves now. Bounded.
async fn until_written(
    sim: &Simulator,
    gateways: &[Arc<Gateway>],
    tag: &str,
    written: impl Fn(&str) -> bool,
) {
    for (g, gateway) in gateways.iter().enumerate() {
        let landed = async {
            for i in 0..200 {
                let id = format!("{tag}-{g}-{i}");
                sim.create_task(KEY_A, &id, "SUCCESS");
                assert_eq!(fetch(gateway, &id, KEY_A).await.status, 200);
                if written(&task_names(&id)[0]) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        };
        assert!(landed.await, "{tag}: replica {g} never wrote to Redis");
    }
}

/// Fetches of `ids` through every gateway, round after round, until `stop`: how many were
/// answered, and how many were not 200.
fn keep_fetching(
    gateways: &[Arc<Gateway>],
    ids: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let gateways = gateways.to_vec();
    tokio::spawn(async move {
        let (mut answered, mut failed) = (0, 0);
        for _round in 0..10_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let fetches = ids.iter().enumerate().map(|(i, id)| {
                let gateway = Arc::clone(&gateways[i % gateways.len()]);
                async move { fetch(&gateway, id, KEY_A).await.status }
            });
            for status in join_all(fetches).await {
                answered += 1;
                if status != 200 {
                    failed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (answered, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_password_cluster_shares_like_one_server_and_survives_losing_a_master() {
    let _serial = one_at_a_time().await;
    let logs = crate::observability::captured_logs();
    let pki = Pki::new("redis-cluster");
    let mut cluster = RedisCluster::start(Some(pki.redis_files(false)), Some("cluster-pass"));
    let sim = Simulator::start().await.unwrap();
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| format!("{s:?}")).collect();
    let layout = format!(
        "cluster = [{}]\nca_file = {}",
        seeds.join(", "),
        toml_path(&pki.ca_file())
    );
    let gateways = replicas((0..2).map(|_| shared(&sim, &layout, Some("cluster-pass")))).await;
    // Connected (the first connection learns six nodes over TLS: on a busy machine it may take
    // longer than one command's deadline, which only sends that request local-only).
    until_written(&sim, &gateways, "ready", |key| !cluster.get(key).is_empty()).await;
    assert_replicas_share(&sim, &gateways, "cluster").await;

    // Each task's value and lease sit in one slot; the tasks spread over the masters.
    let [task, lease] = task_names("done-cluster");
    assert_eq!(cluster.keyslot(&task), cluster.keyslot(&lease));
    assert!(
        cluster.keys("test:task:*").contains(&task),
        "{:?}",
        cluster.keys("test:*")
    );
    let ids: Vec<String> = (0..30).map(|i| format!("load-{i}")).collect();
    for id in &ids {
        sim.create_task(KEY_A, id, "IN_PROGRESS");
    }
    let slots: std::collections::BTreeSet<u16> = ids
        .iter()
        .map(|id| cluster.keyslot(&task_names(id)[0]))
        .collect();
    assert!(slots.len() > 20, "ids hash apart: {} slots", slots.len());

    // Under load, the master holding a finished task dies; its replica takes over.
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_fetching(&gateways, ids.clone(), Arc::clone(&stop));
    let victim = cluster.keyslot(&task);
    cluster.kill_master_of(victim);
    until_written(&sim, &gateways, "moved", |key| !cluster.get(key).is_empty()).await;
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = load.await.unwrap();
    assert!(answered >= ids.len(), "the load ran: {answered}");
    assert_eq!(failed, 0, "every request answered through the failover");

    // Sharing goes on: a pair of replicas shares fresh tasks again (a slot of the dead master
    // may cost a request or two local-only while the client learns the new layout)...
    let mut shared_again = false;
    for i in 0..100 {
        let id = format!("after-{i}");
        sim.create_task(KEY_A, &id, "SUCCESS");
        assert_eq!(fetch(&gateways[0], &id, KEY_A).await.status, 200);
        let second = fetch(&gateways[1], &id, KEY_A).await;
        assert_eq!(second.status, 200);
        if second.cache_status() == "mjgate; hit; detail=shared" {
            assert_eq!(sim.fetch_calls(&id), 1);
            shared_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shared_again,
        "sharing resumed after the failover: {}",
        logs.text()
            .lines()
            .filter(|l| l.contains("unreachable"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // ...and the finished task the dead master held is kept by its promoted replica.
    assert!(
        !cluster.get(&task).is_empty(),
        "the promoted replica holds it"
    );
}

/// Two replicas on `sentinel`'s master, each seen writing there.
async fn sentinel_replicas(sentinel: &RedisSentinel, sim: &Simulator) -> Vec<Arc<Gateway>> {
    let nodes: Vec<String> = sentinel.nodes().iter().map(|n| format!("{n:?}")).collect();
    let layout = format!(
        "sentinel = {{ master = \"{MASTER_NAME}\", nodes = [{}] }}",
        nodes.join(", ")
    );
    let gateways = replicas((0..2).map(|_| shared(sim, &layout, None))).await;
    until_written(sim, &gateways, "ready", |key| {
        !sentinel.master.cli(&["GET", key]).is_empty()
    })
    .await;
    gateways
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sentinel_replicas_share_and_follow_a_failover_without_a_restart() {
    let _serial = one_at_a_time().await;
    let mut sentinel = RedisSentinel::start();
    let sim = Simulator::start().await.unwrap();
    let gateways = sentinel_replicas(&sentinel, &sim).await;
    assert_replicas_share(&sim, &gateways, "sentinel").await;
    let [done, _] = task_names("done-sentinel");
    assert!(!sentinel.master.cli(&["GET", &done]).is_empty());

    let ids: Vec<String> = (0..20).map(|i| format!("load-{i}")).collect();
    for id in &ids {
        sim.create_task(KEY_A, id, "IN_PROGRESS");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_fetching(&gateways, ids.clone(), Arc::clone(&stop));
    sentinel.fail_over();
    // Both replicas find the new master by themselves, and write there again.
    until_written(&sim, &gateways, "moved", |key| {
        !sentinel.replica.cli(&["GET", key]).is_empty()
    })
    .await;
    assert_finished_shared(&sim, &gateways, "after").await;
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = load.await.unwrap();
    assert!(answered >= ids.len(), "the load ran: {answered}");
    assert_eq!(failed, 0, "every request answered through the failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cluster_costs_one_deadline_then_is_skipped_until_it_answers() {
    let _serial = one_at_a_time().await;
    let cluster = RedisCluster::start(None, None);
    let sim = Simulator::start().await.unwrap();
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| format!("{s:?}")).collect();
    let layout = format!("cluster = [{}]", seeds.join(", "));
    let gateways = replicas((0..2).map(|_| {
        let mut config = shared(&sim, &layout, None);
        // Short enough that the frozen cluster is thawed well within its node timeout.
        config.shared_cache.as_mut().unwrap().timeout = Duration::from_millis(300);
        config
    }))
    .await;
    until_written(&sim, &gateways, "ready", |key| !cluster.get(key).is_empty()).await;
    for id in ["hung-1", "hung-2"] {
        sim.create_task(KEY_A, id, "SUCCESS");
    }

    cluster.pause();
    let first = fetch(&gateways[0], "hung-1", KEY_A).await;
    let after_deadline = scrape(&gateways[0]).await;
    let second = fetch(&gateways[0], "hung-2", KEY_A).await;
    let skipping = scrape(&gateways[0]).await;
    cluster.resume();

    assert_eq!(
        first.status, 200,
        "answered from the upstream after the deadline"
    );
    assert!(
        after_deadline.value("mjgate_shared_cache_errors_total", &[("kind", "timeout")]) >= 1.0
    );
    assert_eq!(after_deadline.value("mjgate_shared_cache_up", &[]), 0.0);
    assert_eq!(second.status, 200);
    assert!(
        skipping.value(
            "mjgate_shared_cache_lookups_total",
            &[("result", "skipped")]
        ) >= 1.0,
        "once marked down, the cluster is not asked"
    );

    // Thawed, the cluster is picked up again and shared through.
    for gateway in &gateways {
        wait_for_shared_state(gateway, true).await;
    }
    assert_finished_shared(&sim, &gateways, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_batches_read_every_slot_and_a_purge_reaches_every_master_and_replica() {
    let _serial = one_at_a_time().await;
    const TOKEN: &str = "admin-token-0123456789";
    let cluster = RedisCluster::start(None, None);
    let sim = Simulator::start().await.unwrap();
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| format!("{s:?}")).collect();
    let layout = format!(
        "cluster = [{}]\n[admin]\ntoken = \"{TOKEN}\"",
        seeds.join(", ")
    );
    let gateways = replicas((0..2).map(|_| shared(&sim, &layout, None))).await;
    until_written(&sim, &gateways, "ready", |key| !cluster.get(key).is_empty()).await;

    // Twenty finished tasks in twenty-odd slots: written by one batch, read back by another.
    let ids: Vec<String> = (0..20).map(|i| format!("batch-{i}")).collect();
    for id in &ids {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let first = batch(&gateways[0], KEY_A, &ids).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json().as_array().unwrap().len(), 20);
    let second = batch(&gateways[1], KEY_A, &ids).await;
    assert_eq!(second.json().as_array().unwrap().len(), 20);
    for id in &ids {
        assert_eq!(
            sim.lookups(id),
            1,
            "{id}: read from the cluster by the second"
        );
    }
    let found: f64 = scrape(&gateways[1])
        .await
        .value("mjgate_shared_cache_lookups_total", &[("result", "hit")]);
    assert!(found >= 20.0, "{found}");

    // A purge of everything on one replica deletes on every master and is heard by the other.
    let bearer = format!("Bearer {TOKEN}");
    let purge = |gw: &Gateway| {
        request(
            http::Method::DELETE,
            &gw.url("/admin/tasks/midjourney"),
            Some(&bearer),
            "",
        )
    };
    let purged = send(purge(&gateways[0])).await;
    assert_eq!(purged.status, 200, "{}", purged.json());
    assert!(
        purged.json()["purged"]["shared"].as_u64().unwrap() >= 20,
        "{}",
        purged.json()
    );
    assert!(
        cluster.keys("test:task:*").is_empty(),
        "{:?}",
        cluster.keys("test:task:*")
    );
    poll_until("the other replica dropped its copies", || async {
        batch(&gateways[1], KEY_A, &ids[..1]).await;
        sim.lookups(ids[0]) == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_the_sentinels_run_while_the_old_master_still_answers_is_followed() {
    let _serial = one_at_a_time().await;
    let sentinel = RedisSentinel::start();
    let sim = Simulator::start().await.unwrap();
    let gateways = sentinel_replicas(&sentinel, &sim).await;
    // No command fails: the old master answers until the sentinels demote it.
    sentinel.switch_over();
    until_written(&sim, &gateways, "moved", |key| {
        !sentinel.replica.cli(&["GET", key]).is_empty()
    })
    .await;
    // They moved because the sentinels said so, not because the old master turned them away: it
    // is demoted seconds later (sentinels reconfigure it after the new master is announced).
    assert!(
        sentinel.master.cli(&["ROLE"]).starts_with("master"),
        "the old master was still a master when both replicas had moved"
    );
    assert_finished_shared(&sim, &gateways, "after").await;
}
