//! Many upstreams behind one gateway (`[[upstream.members]]`): submits are spread by the policy and
//! held under each member's running limit, and every follow-up (fetch, action, batch, download)
//! reaches the member that owns its task, whichever member a lookup found it on.

use http::Method;
use mjgate::tools::simulator::Api;
use serde_json::json;

use crate::support::*;

/// Three (or `n`) simulators, as independent upstream instances.
async fn members(n: usize) -> Vec<Simulator> {
    let mut sims = Vec::with_capacity(n);
    for _ in 0..n {
        sims.push(Simulator::start().await.unwrap());
    }
    sims
}

/// A config listing `sims` as members `m0`, `m1`, ... with `max_running`, under `policy`, plus
/// `extra` (which must not open `[upstream]`).
fn pool_config(
    sims: &[Simulator],
    policy: &str,
    max_running: usize,
    extra: &str,
) -> mjgate::Config {
    let mut text = format!("{extra}\n[upstream]\npolicy = \"{policy}\"\n");
    for (i, sim) in sims.iter().enumerate() {
        text.push_str(&format!(
            "[[upstream.members]]\nname = \"m{i}\"\nurl = \"{}\"\nmax_running = {max_running}\n",
            sim.url()
        ));
    }
    text.push_str("[artifacts]\nenabled = false\n");
    mjgate::Config::from_toml(&text, &Default::default()).expect("pool config")
}

async fn submit(gw: &Gateway, path: &str, credential: &str, body: serde_json::Value) -> Reply {
    send(request(
        Method::POST,
        &gw.url(path),
        Some(credential),
        &body.to_string(),
    ))
    .await
}

async fn imagine(gw: &Gateway, credential: &str) -> Reply {
    submit(
        gw,
        "/mj/submit/imagine",
        credential,
        json!({"prompt": "a cat"}),
    )
    .await
}

/// Imagines one task, which must be accepted; its id.
async fn imagined(gw: &Gateway) -> String {
    let reply = imagine(gw, KEY_A).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["code"], 1, "{:?}", reply.body);
    reply.json()["result"].as_str().unwrap().to_owned()
}

/// A fresh simulator (no tasks) on the port a stopped one had, as a member that restarted: the
/// old server lets go of its port as its tasks wind down (5 s at most).
async fn restart_on(addr: std::net::SocketAddr) -> Simulator {
    for _ in 0..250 {
        if let Ok(listener) = std::net::TcpListener::bind(addr) {
            listener.set_nonblocking(true).unwrap();
            return Simulator::start_on(tokio::net::TcpListener::from_std(listener).unwrap())
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{addr} never came free");
}

fn submits(sims: &[Simulator]) -> Vec<u64> {
    sims.iter().map(Simulator::submits).collect()
}

#[tokio::test]
async fn round_robin_and_least_busy_spread_submits_evenly() {
    for policy in ["round-robin", "least-busy"] {
        let sims = members(3).await;
        let gw = start_gateway(pool_config(&sims, policy, 0, "")).await;
        for _ in 0..9 {
            imagined(&gw).await;
        }
        assert_eq!(submits(&sims), [3, 3, 3], "{policy}");
        let metrics = scrape(&gw).await;
        for m in ["m0", "m1", "m2"] {
            let labels = [("member", m), ("outcome", "sent")];
            assert_eq!(
                metrics.value("mjgate_member_submits_total", &labels),
                3.0,
                "{policy} {m}"
            );
            assert_eq!(
                metrics.value("mjgate_member_running_tasks", &[("member", m)]),
                3.0
            );
        }
    }
}

#[tokio::test]
async fn weighted_sends_nothing_to_nobody_and_most_to_the_heaviest() {
    let sims = members(2).await;
    let mut text = "[upstream]\npolicy = \"weighted\"\n".to_owned();
    for (sim, weight) in sims.iter().zip([1, 1000]) {
        text.push_str(&format!(
            "[[upstream.members]]\nname = \"w{weight}\"\nurl = \"{}\"\nweight = {weight}\n",
            sim.url()
        ));
    }
    text.push_str("[artifacts]\nenabled = false\n");
    let gw = start_gateway(mjgate::Config::from_toml(&text, &Default::default()).unwrap()).await;
    for _ in 0..40 {
        imagined(&gw).await;
    }
    // 1 in 1001 per submit goes to the light one: more than 3 of 40 is a broken draw (p < 1e-7).
    assert_eq!(sims[0].submits() + sims[1].submits(), 40);
    assert!(sims[1].submits() >= 37, "{:?}", submits(&sims));
}

#[tokio::test]
async fn a_running_limit_holds_and_a_full_pool_answers_429_itself() {
    let sims = members(2).await;
    let gw = start_gateway(pool_config(&sims, "least-busy", 2, "")).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(imagined(&gw).await);
    }
    assert_eq!(submits(&sims), [2, 2]);

    let full = imagine(&gw, KEY_A).await;
    assert_eq!(full.status, 429);
    assert_eq!(full.header("retry-after"), "5");
    assert!(
        full.json()["description"]
            .as_str()
            .unwrap()
            .contains("running-task limit")
    );
    assert_eq!(
        submits(&sims),
        [2, 2],
        "the full pool's submit reached nobody"
    );
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_pool_submits_refused_total", &[("reason", "busy")]),
        1.0
    );
    assert_eq!(
        send(request(Method::GET, &gw.url("/readyz"), None, ""))
            .await
            .status,
        200,
        "full is not down"
    );

    // A task seen finished frees its member's place.
    let done = &ids[0];
    for sim in &sims {
        sim.set_status(done, "SUCCESS"); // on its holder; nothing on the other
    }
    let owner = holder_by_submit(&sims, &gw, done).await;
    assert_eq!(fetch(&gw, done, KEY_A).await.json()["status"], "SUCCESS");
    imagined(&gw).await;
    let mut expected = [2, 2];
    expected[owner] = 3;
    assert_eq!(
        submits(&sims),
        expected,
        "the freed place took the next submit"
    );
}

/// The member whose fetch answers task `id` through the gateway (each member is asked once at most).
async fn holder_by_submit(sims: &[Simulator], gw: &Gateway, id: &str) -> usize {
    let reply = fetch(gw, id, KEY_A).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let asked: Vec<usize> = (0..sims.len())
        .filter(|&m| sims[m].fetch_calls(id) > 0)
        .collect();
    assert_eq!(
        asked.len(),
        1,
        "the owner alone is asked for {id}: {asked:?}"
    );
    asked[0]
}

#[tokio::test]
async fn every_follow_up_reaches_the_member_that_owns_its_task() {
    let sims = members(3).await;
    let gw = start_gateway(pool_config(&sims, "round-robin", 0, "")).await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(imagined(&gw).await);
        }
        ids
    };
    // Fetches: each asks its owner only (round-robin put task i on member i).
    for (m, id) in ids.iter().enumerate() {
        assert_eq!(holder_by_submit(&sims, &gw, id).await, m);
    }
    // Actions name their parent in the body: each goes to the parent's owner, which knows it.
    for (m, id) in ids.iter().enumerate() {
        let before = submits(&sims);
        let action = submit(
            &gw,
            "/mj/submit/action",
            KEY_A,
            json!({"customId": "MJ::JOB::upsample::1::x", "taskId": id}),
        )
        .await;
        assert_eq!(action.json()["code"], 1, "{:?}", action.body);
        let mut expected = before.clone();
        expected[m] += 1;
        assert_eq!(submits(&sims), expected, "the action on {id} went to m{m}");
    }
    // A batch spanning three new tasks is split by owner and merged in request order.
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(imagined(&gw).await);
    }
    let order = [fresh[2].as_str(), fresh[0].as_str(), fresh[1].as_str()];
    let reply = batch(&gw, KEY_A, &order).await;
    assert_eq!(reply.status, 200);
    let answered: Vec<String> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(answered, order);
    for (m, sim) in sims.iter().enumerate() {
        assert_eq!(
            sim.batch_calls_in(Api::Midjourney),
            [vec![fresh[m].clone()]],
            "m{m} is asked for its own task only"
        );
    }
    // The cache stays the credential's: another key is not served m1's task.
    let other = fetch(&gw, &ids[1], KEY_B).await;
    assert_eq!(other.status, 404, "{:?}", other.body);
}

#[tokio::test]
async fn a_task_made_elsewhere_is_found_on_every_member_at_once_then_routed_directly() {
    let sims = members(3).await;
    let gw = start_gateway(pool_config(&sims, "round-robin", 0, "")).await;
    sims[2].create_task(KEY_A, "1700000000000000001", "SUCCESS");

    let action = || {
        submit(
            &gw,
            "/mj/submit/action",
            KEY_A,
            json!({"customId": "MJ::JOB::variation::2::x", "taskId": "1700000000000000001"}),
        )
    };
    assert_eq!(action().await.json()["code"], 1);
    assert_eq!(submits(&sims), [0, 0, 1], "the action went to the finder");
    let lookups: Vec<u64> = sims
        .iter()
        .map(|s| s.fetch_calls("1700000000000000001"))
        .collect();
    assert_eq!(lookups, [1, 1, 1], "each member asked once");
    assert_eq!(action().await.json()["code"], 1);
    assert_eq!(submits(&sims), [0, 0, 2]);
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value(
            "mjgate_owner_lookups_total",
            &[("member", "m2"), ("result", "found")]
        ),
        1.0,
        "found on m2, and remembered: no second lookup"
    );
    assert_eq!(
        fetch(&gw, "1700000000000000001", KEY_A).await.json()["status"],
        "SUCCESS"
    );
    assert_eq!(sims[2].fetch_calls("1700000000000000001"), 2);
    assert_eq!(sims[0].fetch_calls("1700000000000000001"), 1);

    // Nowhere is not found, as one upstream says it.
    let missing = fetch(&gw, "1700000000000000009", KEY_A).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        scrape(&gw)
            .await
            .value("mjgate_owner_lookups_total", &[("result", "nowhere")]),
        1.0
    );
}

#[tokio::test]
async fn a_member_that_is_down_takes_no_submits_and_its_tasks_are_served_stale() {
    let mut sims = members(2).await;
    let extra = "[cache]\nin_progress_ttl = \"100ms\"\nmax_stale = \"1h\"\n";
    let mut config = pool_config(&sims, "round-robin", 0, extra);
    config.upstream.breaker_failures = 1;
    config.upstream.breaker_cooldown = std::time::Duration::from_secs(3600);
    let gw = start_gateway(config).await;
    let _on_m0 = imagined(&gw).await;
    let on_m1 = imagined(&gw).await;
    assert_eq!(fetch(&gw, &on_m1, KEY_A).await.status, 200);

    drop(sims.pop()); // m1 stops: its port refuses connections
    for _ in 0..4 {
        imagined(&gw).await;
    }
    assert_eq!(sims[0].submits(), 5, "every submit went to m0");
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value(
            "mjgate_member_submits_total",
            &[("member", "m1"), ("outcome", "skipped")]
        ),
        1.0,
        "tried once, then out of the rotation"
    );
    assert_eq!(
        metrics.value("mjgate_member_circuit_open", &[("member", "m1")]),
        1.0
    );
    assert_eq!(metrics.value("mjgate_upstream_circuit_open", &[]), 0.0);

    // m1's task: served stale once its TTL passed, nothing else slowed.
    poll_until("m1's task answered stale", || async {
        fetch(&gw, &on_m1, KEY_A)
            .await
            .cache_status()
            .contains("fwd=stale")
    })
    .await;
    let ready = send(request(Method::GET, &gw.url("/readyz"), None, "")).await;
    assert_eq!(ready.status, 200, "one member down is not the pool down");
    let state = send(request(Method::GET, &gw.url("/upstreamz"), None, "")).await;
    assert_eq!(state.status, 200);
    let members = state.json()["members"].clone();
    let circuits: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["circuit"].as_str().unwrap())
        .collect();
    assert_eq!(circuits, ["closed", "open"]);
}

#[tokio::test]
async fn a_pool_with_every_member_down_refuses_submits_with_503_and_is_not_ready() {
    let sims = members(2).await;
    let mut config = pool_config(&sims, "least-busy", 0, "");
    config.upstream.breaker_failures = 1;
    config.upstream.breaker_cooldown = std::time::Duration::from_secs(3600);
    drop(sims);
    let gw = start_gateway(config).await;
    let reply = imagine(&gw, KEY_A).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert!(
        reply.json()["description"].as_str().unwrap().contains("m0"),
        "the members are named: {:?}",
        reply.body
    );
    let ready = send(request(Method::GET, &gw.url("/readyz"), None, "")).await;
    assert_eq!(ready.status, 503);
}

#[test]
fn check_config_lists_the_members_and_how_submits_are_spread() {
    let file = crate::config_cli::write_config(
        "[upstream]\npolicy = \"round-robin\"\nqueue_wait = \"2s\"\n\
         [[upstream.members]]\nname = \"basic-1\"\nurl = \"http://127.0.0.1:9101\"\nmax_running = 3\n\
         [[upstream.members]]\nname = \"pro-1\"\nurl = \"http://127.0.0.1:9102\"\nweight = 3\n",
    );
    let out = crate::config_cli::mjgate()
        .args(["--config", file.0.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 members, submits spread round-robin (queue_wait 2s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("member basic-1       http://127.0.0.1:9101 (weight 1, max_running 3)"),
        "{stdout}"
    );
    assert!(stdout.contains("pro-1"), "{stdout}");
    assert!(stdout.contains("(weight 3, no running limit)"), "{stdout}");
}

#[tokio::test]
async fn two_replicas_on_redis_route_one_task_to_the_same_member() {
    let redis = RedisServer::start();
    let sims = members(3).await;
    let shared = format!(
        "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"fp-secret-0123456789abcdef0123456789\"\nkey_prefix = \"pools:\"\n",
        redis.url()
    );
    let a = start_gateway(pool_config(&sims, "round-robin", 0, &shared)).await;
    let b = start_gateway(pool_config(&sims, "round-robin", 0, &shared)).await;
    // Replica a places two submits (m0, then m1); replica b never saw them.
    imagined(&a).await;
    let on_m1 = imagined(&a).await;
    assert_eq!(submits(&sims), [1, 1, 0]);

    let fetched = fetch(&b, &on_m1, KEY_A).await;
    assert_eq!(fetched.status, 200, "{:?}", fetched.body);
    let asked: Vec<u64> = sims.iter().map(|s| s.fetch_calls(&on_m1)).collect();
    assert_eq!(asked, [0, 1, 0], "b went straight to the owner a recorded");
    assert_eq!(
        scrape(&b)
            .await
            .value("mjgate_owner_lookups_total", &[("result", "found")]),
        0.0,
        "no lookup on every member"
    );
    // An action on b for a's task goes to the owner too.
    let action = submit(
        &b,
        "/mj/submit/action",
        KEY_A,
        json!({"customId": "MJ::JOB::upsample::1::x", "taskId": on_m1}),
    )
    .await;
    assert_eq!(action.json()["code"], 1, "{:?}", action.body);
    assert_eq!(submits(&sims), [1, 2, 0]);
}

#[tokio::test]
async fn a_batch_on_another_replica_asks_each_owner_redis_recorded_for_its_own_tasks() {
    let redis = RedisServer::start();
    let sims = members(3).await;
    let shared = format!(
        "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"fp-secret-0123456789abcdef0123456789\"\nkey_prefix = \"pools-batch:\"\n",
        redis.url()
    );
    let a = start_gateway(pool_config(&sims, "round-robin", 0, &shared)).await;
    let b = start_gateway(pool_config(&sims, "round-robin", 0, &shared)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(imagined(&a).await); // m0, m1, m2
    }
    let batch = submit(
        &b,
        "/mj/task/list-by-condition",
        KEY_A,
        json!({ "ids": ids }),
    )
    .await;
    assert_eq!(batch.status, 200, "{:?}", batch.body);
    let answered: Vec<String> = batch
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(answered, ids);
    for (m, sim) in sims.iter().enumerate() {
        assert_eq!(
            sim.list_calls(),
            vec![vec![ids[m].clone()]],
            "m{m} was asked for its own task only"
        );
    }
    assert_eq!(
        scrape(&b)
            .await
            .value("mjgate_owner_lookups_total", &[("result", "found")]),
        0.0
    );
}

#[tokio::test]
async fn a_down_members_task_with_nothing_stale_gets_a_502_naming_the_member() {
    let mut sims = members(2).await;
    let mut config = pool_config(&sims, "round-robin", 0, "");
    config.upstream.breaker_failures = 1;
    config.upstream.breaker_cooldown = std::time::Duration::from_secs(3600);
    let gw = start_gateway(config).await;
    let on_m0 = imagined(&gw).await;
    let on_m1 = imagined(&gw).await;
    drop(sims.pop());
    for _ in 0..2 {
        // Not a connection refused once, then a circuit: both say which member.
        let reply = fetch(&gw, &on_m1, KEY_A).await;
        assert_eq!(reply.status, 502, "{:?}", reply.body);
        let said = reply.json()["description"].as_str().unwrap().to_owned();
        assert!(said.contains("pool member m1"), "{said}");
        assert!(!said.contains("127.0.0.1"), "no address told: {said}");
    }
    assert_eq!(
        fetch(&gw, &on_m0, KEY_A).await.status,
        200,
        "m0's tasks untouched"
    );
}

#[tokio::test]
async fn a_probed_member_that_dies_leaves_the_rotation_before_a_submit_finds_it_and_returns_by_itself()
 {
    let mut sims = members(2).await;
    let m1_addr = sims[1].addr();
    let extra = "";
    let mut config = pool_config(&sims, "round-robin", 0, extra);
    config.upstream.breaker_failures = 2;
    config.upstream.breaker_cooldown = std::time::Duration::from_secs(3600);
    config.upstream.probe = Some(mjgate::config::ProbeConfig {
        path: "/healthz".into(),
        interval: std::time::Duration::from_millis(50),
        timeout: std::time::Duration::from_millis(500),
    });
    let gw = start_gateway(config).await;
    poll_until("both members probed up", || async {
        let m = scrape(&gw).await;
        ["m0", "m1"].iter().all(|member| {
            m.value(
                "mjgate_member_probes_total",
                &[("member", member), ("result", "up")],
            ) >= 1.0
        })
    })
    .await;

    drop(sims.pop()); // m1 stops
    poll_until("m1's circuit opened by its probes", || async {
        scrape(&gw)
            .await
            .value("mjgate_member_circuit_open", &[("member", "m1")])
            == 1.0
    })
    .await;
    for _ in 0..4 {
        imagined(&gw).await;
    }
    assert_eq!(sims[0].submits(), 4);
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value(
            "mjgate_member_submits_total",
            &[("member", "m1"), ("outcome", "skipped")]
        ),
        0.0,
        "no submit was spent finding m1 dead"
    );
    assert!(
        metrics.value(
            "mjgate_member_probes_total",
            &[("member", "m1"), ("result", "down")]
        ) >= 2.0
    );

    // m1 back on its port: the probe closes its circuit (the cooldown is an hour), and round-robin
    // reaches it again.
    let back = restart_on(m1_addr).await;
    poll_until("m1's circuit closed by a probe", || async {
        scrape(&gw)
            .await
            .value("mjgate_member_circuit_open", &[("member", "m1")])
            == 0.0
    })
    .await;
    for _ in 0..2 {
        imagined(&gw).await;
    }
    assert_eq!(back.submits(), 1, "m1 takes submits again");
}

#[tokio::test]
async fn families_go_to_their_own_pool_and_passthrough_follows_their_prefix() {
    let mj = Simulator::start().await.unwrap();
    let relay = Simulator::start().await.unwrap();
    let text = format!(
        "[upstream]\nurl = \"{}\"\n[upstreams.relay]\nurl = \"{}\"\n[families.suno]\nupstream = \"relay\"\n\
         [artifacts]\nenabled = false\n",
        mj.url(),
        relay.url()
    );
    let gw = start_gateway(mjgate::Config::from_toml(&text, &Default::default()).unwrap()).await;
    relay.create_task_in(Api::Suno, KEY_A, "song-1", "SUCCESS");

    let song = send(request(
        Method::GET,
        &gw.url("/suno/fetch/song-1"),
        Some(KEY_A),
        "",
    ))
    .await;
    assert_eq!(song.status, 200, "{:?}", song.body);
    assert_eq!(relay.fetch_calls_in(Api::Suno, "song-1"), 1);
    let imagine = imagined(&gw).await;
    assert_eq!((mj.submits(), relay.submits()), (1, 0));
    assert_eq!(fetch(&gw, &imagine, KEY_A).await.status, 200);
    assert_eq!(relay.fetch_calls(&imagine), 0);

    // Passthrough: under suno's prefix to the relay, anything else to the default pool.
    let before = (mj.requests().len(), relay.requests().len());
    send(request(
        Method::GET,
        &gw.url("/suno/lyrics/abc"),
        Some(KEY_A),
        "",
    ))
    .await;
    send(request(Method::GET, &gw.url("/v1/models"), Some(KEY_A), "")).await;
    let relay_paths: Vec<String> = relay.requests()[before.1..]
        .iter()
        .map(|r| r.uri.clone())
        .collect();
    let mj_paths: Vec<String> = mj.requests()[before.0..]
        .iter()
        .map(|r| r.uri.clone())
        .collect();
    assert_eq!(relay_paths, ["/suno/lyrics/abc"]);
    assert_eq!(mj_paths, ["/v1/models"]);

    let metrics = scrape(&gw).await;
    assert!(metrics.value("mjgate_member_calls_total", &[("member", "relay")]) >= 2.0);
    let state = send(request(Method::GET, &gw.url("/upstreamz"), None, "")).await;
    let pools: Vec<String> = state.json()["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pools, ["default", "relay"]);
}

#[test]
fn check_config_lists_each_pool_and_the_families_that_go_to_it() {
    let file = crate::config_cli::write_config(
        "[upstream]\nurl = \"http://127.0.0.1:9101\"\n\
         [upstreams.relay]\nurl = \"http://127.0.0.1:9102\"\n[upstreams.relay.probe]\npath = \"/status\"\n\
         [families.suno]\nupstream = \"relay\"\n[families.kling]\nupstream = \"relay\"\n",
    );
    let out = crate::config_cli::mjgate()
        .args(["--config", file.0.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pool relay (for suno, kling): http://127.0.0.1:9102"),
        "{stdout}"
    );
    assert!(stdout.contains("probe GET /status every 10s"), "{stdout}");
}

#[tokio::test]
async fn a_member_that_restarted_and_lost_its_tasks_frees_their_places_at_their_submitters_poll() {
    let mut sims = members(2).await;
    let gw = start_gateway(pool_config(&sims, "round-robin", 1, "")).await;
    let on_m0 = imagined(&gw).await;
    let on_m1 = imagined(&gw).await;
    assert_eq!(imagine(&gw, KEY_A).await.status, 429, "both members full");

    // Another key's not-found (tasks are private to the key that made them) frees nothing.
    assert_eq!(fetch(&gw, &on_m1, KEY_B).await.status, 404);
    assert_eq!(imagine(&gw, KEY_A).await.status, 429, "still full");

    // m1 restarts on its port with no tasks: its submitter's next poll is not-found, and frees it.
    let addr = sims[1].addr();
    drop(sims.pop());
    let back = restart_on(addr).await;
    assert_eq!(fetch(&gw, &on_m1, KEY_A).await.status, 404);
    let next = imagine(&gw, KEY_A).await;
    assert_eq!(next.status, 200, "{:?}", next.body);
    assert_eq!(back.submits(), 1, "the freed place took it");
    assert_eq!(sims[0].submits(), 1);
    assert_eq!(fetch(&gw, &on_m0, KEY_A).await.status, 200);
}

#[tokio::test]
async fn passthrough_under_nested_prefixes_goes_to_the_innermost_familys_pool() {
    let default = Simulator::start().await.unwrap();
    let relay = Simulator::start().await.unwrap();
    // video-query (`/v1/video/`) goes to the relay; video-generations (`/v1/video/generations/`)
    // stays on the default pool.
    let text = format!(
        "[upstream]\nurl = \"{}\"\n[upstreams.relay]\nurl = \"{}\"\n\
         [families.video-query]\nupstream = \"relay\"\n[artifacts]\nenabled = false\n",
        default.url(),
        relay.url()
    );
    let gw = start_gateway(mjgate::Config::from_toml(&text, &Default::default()).unwrap()).await;
    for path in ["/v1/video/generations/abc/extra", "/v1/video/other"] {
        send(request(Method::GET, &gw.url(path), Some(KEY_A), "")).await;
    }
    let uris =
        |sim: &Simulator| -> Vec<String> { sim.requests().iter().map(|r| r.uri.clone()).collect() };
    assert_eq!(uris(&default), ["/v1/video/generations/abc/extra"]);
    assert_eq!(uris(&relay), ["/v1/video/other"]);
}
