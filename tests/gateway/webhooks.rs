//! Webhooks the gateway delivers itself: a submit's `notifyHook` taken over, every change delivered to
//! a receiver on loopback, signed (Standard Webhooks) and retried.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::*;

/// The JSON body of the first request the upstream got at `uri`.
fn forwarded_body(sim: &Simulator, uri: &str) -> Value {
    let forwarded = sim
        .requests()
        .into_iter()
        .find(|r| r.uri == uri)
        .unwrap_or_else(|| panic!("the upstream never got {uri}"));
    serde_json::from_slice(&forwarded.body).unwrap()
}

/// Every delivery is an attempt at one event: one `webhook-id` throughout, every one signed.
fn assert_one_event(deliveries: &[Delivery]) {
    let ids: Vec<String> = deliveries.iter().map(|d| d.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one event throughout: {ids:?}"
    );
    assert!(deliveries.iter().all(Delivery::signed));
}

fn webhooks(extra: &str) -> String {
    format!(
        "[cache]\nin_progress_ttl = \"200ms\"\n[webhooks]\nsecret = \"{SECRET}\"\nallow_private = true\nfirst_retry = \"100ms\"\n{extra}"
    )
}

async fn submit(gw: &Gateway, hook: &str) -> Reply {
    submit_as(gw, KEY_A, hook).await
}

/// An imagine submitted with `credential` and `hook` as its `notifyHook`.
async fn submit_as(gw: &Gateway, credential: &str, hook: &str) -> Reply {
    let body = serde_json::json!({"prompt": "a cat", "notifyHook": hook, "state": "s"}).to_string();
    send(request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(credential),
        &body,
    ))
    .await
}

/// The bodies of the submits the upstream got, oldest first.
fn forwarded_submits(sim: &Simulator) -> Vec<Value> {
    sim.requests()
        .into_iter()
        .filter(|r| r.uri == "/mj/submit/imagine")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn every_change_of_a_submitted_task_is_delivered_signed_and_the_upstream_never_sees_the_hook()
{
    let receiver = Receiver::start(&[]).await;
    let (sim, gw) = start(&webhooks("")).await;
    sim.set_task_duration(Duration::from_millis(1500));
    let answer = submit(&gw, &receiver.url()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["code"], 1, "the upstream's answer, unchanged");
    let id = answer.json()["result"].as_str().unwrap().to_owned();
    let forwarded = forwarded_body(&sim, "/mj/submit/imagine");
    assert!(forwarded.get("notifyHook").is_none(), "{forwarded}");
    assert_eq!(
        forwarded["state"], "s",
        "the rest of the body as the client sent it"
    );

    let deliveries = receiver.wait_for_status("SUCCESS").await;
    assert!(
        deliveries.len() >= 2,
        "a change before the end too: {deliveries:?}"
    );
    for delivery in &deliveries {
        assert!(delivery.signed(), "{delivery:?}");
        assert_eq!(delivery.json()["id"], id.as_str());
        assert_eq!(delivery.header("content-type"), "application/json");
    }
    let statuses: Vec<String> = deliveries
        .iter()
        .map(|d| d.json()["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses.last().unwrap(),
        "SUCCESS",
        "in order: {statuses:?}"
    );
    // The lifecycle's order: SUBMITTED, IN_PROGRESS (progress rising), SUCCESS, never back.
    let rank = |status: &str| {
        ["SUBMITTED", "IN_PROGRESS", "SUCCESS"]
            .iter()
            .position(|s| *s == status)
    };
    let progress = |d: &Delivery| {
        d.json()["progress"]
            .as_str()
            .and_then(|p| p.trim_end_matches('%').parse::<u32>().ok())
            .unwrap_or(0)
    };
    for pair in deliveries.windows(2) {
        let (a, b) = (pair[0].json(), pair[1].json());
        assert!(
            rank(a["status"].as_str().unwrap()) <= rank(b["status"].as_str().unwrap())
                && progress(&pair[0]) <= progress(&pair[1]),
            "out of order: {statuses:?}"
        );
    }
    let ids: std::collections::HashSet<String> =
        deliveries.iter().map(|d| d.header("webhook-id")).collect();
    assert_eq!(ids.len(), deliveries.len(), "one id per state");
    // The finished task is the same answer a fetch gives.
    let fetched = fetch(&gw, &id, KEY_A).await;
    assert_eq!(fetched.body, deliveries.last().unwrap().body);
    let metrics = scrape(&gw).await;
    assert!(
        metrics.value(
            "mjgate_webhook_deliveries_total",
            &[("outcome", "delivered")]
        ) >= 2.0
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_under_one_webhook_id() {
    let receiver = Receiver::start(&[500, 500]).await;
    let (sim, gw) = start(&webhooks("finished_only = true\n")).await;
    sim.set_task_duration(Duration::from_millis(300));
    submit(&gw, &receiver.url()).await;
    poll_until("three attempts", || async {
        receiver.deliveries().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 3, "500, 500, then 200 ends it");
    assert_one_event(&deliveries);
    assert!(deliveries.iter().all(|d| d.json()["status"] == "SUCCESS"));
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_webhook_attempts_total", &[("result", "5xx")]),
        2.0
    );
}

#[tokio::test]
async fn a_receiver_that_is_down_for_a_while_still_gets_the_event() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (sim, gw) = start(&webhooks("finished_only = true\n")).await;
    sim.set_task_duration(Duration::from_millis(200));
    let hook = format!("http://{addr}/hooks/mj");
    submit(&gw, &hook).await;
    poll_until("a refused attempt", || async {
        scrape(&gw)
            .await
            .value("mjgate_webhook_attempts_total", &[("result", "error")])
            >= 1.0
    })
    .await;
    let receiver = Receiver::start_on(TcpListener::bind(addr).await.unwrap(), &[]);
    let deliveries = receiver.wait_for_status("SUCCESS").await;
    assert!(deliveries[0].signed());
}

#[tokio::test]
async fn a_410_drops_the_hook() {
    let receiver = Receiver::start(&[410]).await;
    let (sim, gw) = start(&webhooks("")).await;
    sim.set_task_duration(Duration::from_millis(600));
    submit(&gw, &receiver.url()).await;
    poll_until("the first delivery", || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(receiver.deliveries().len(), 1, "nothing after 410");
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_webhook_deliveries_total", &[("outcome", "gone")]),
        1.0
    );
}

#[tokio::test]
async fn a_hook_on_an_internal_address_is_refused_unless_private_hooks_are_allowed() {
    let (sim, gw) = start(&format!("[webhooks]\nsecret = \"{SECRET}\"\n")).await;
    for hook in [
        "http://127.0.0.1:9/h",
        "http://localhost:9/h",
        "http://[::1]:9/h",
        "http://127.0.0.2:9/h",
        "ftp://127.0.0.1/h",
        "http://user:pw@127.0.0.1/h",
    ] {
        let answer = submit(&gw, hook).await;
        assert_eq!(answer.status, 400, "{hook}");
        assert!(
            answer.json()["description"]
                .as_str()
                .unwrap()
                .starts_with("notifyHook"),
            "{hook}"
        );
    }
    assert_eq!(sim.total_calls(), 0, "refused before the upstream");
}

#[tokio::test]
async fn without_a_webhooks_section_submits_pass_through_untouched() {
    let (sim, gw) = start("").await;
    let answer = submit(&gw, "http://127.0.0.1:9/h").await;
    assert_eq!(answer.status, 200);
    let forwarded = forwarded_body(&sim, "/mj/submit/imagine");
    assert_eq!(forwarded["notifyHook"], "http://127.0.0.1:9/h");
}

#[tokio::test]
async fn a_bad_webhook_secret_stops_start_up_naming_the_key() {
    for secret in ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2hvcnQ="] {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[webhooks]\nsecret = \"{secret}\"\n"
        );
        let error = mjgate::Config::from_toml(&text, &Default::default()).unwrap_err();
        assert!(error.to_string().contains("`webhooks.secret`"), "{error}");
        assert!(
            secret.is_empty() || !error.to_string().contains(secret),
            "{error}"
        );
    }
}

/// A gateway whose `webhooks.public_url` is its own address, so the upstream can call it back.
async fn start_with_callbacks(sim: &Simulator) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let extra = format!(
        "[cache]\nin_progress_ttl = \"30s\"\n[webhooks]\nsecret = \"{SECRET}\"\nallow_private = true\npublic_url = \"{public}\"\n"
    );
    start_gateway_on(listener, config(&sim.url(), &extra))
}

#[tokio::test]
async fn an_upstream_callback_refreshes_the_cache_and_the_hook_with_no_extra_poll() {
    let receiver = Receiver::start(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_task_duration(Duration::from_secs(600));
    let gw = start_with_callbacks(&sim).await;
    let answer = submit(&gw, &receiver.url()).await;
    let id = answer.json()["result"].as_str().unwrap().to_owned();
    let forwarded = forwarded_body(&sim, "/mj/submit/imagine");
    let callback = forwarded["notifyHook"].as_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&gw.url("/_mjgate/callback/")) && callback.len() > 40,
        "the gateway's own URL with a token: {callback}"
    );
    receiver.wait_for_status("SUBMITTED").await;
    let polls = sim.fetch_calls(&id);

    // The upstream calls back with the finished task (as midjourney-proxy posts it).
    sim.set_status(&id, "SUCCESS");
    let finished = send(request(
        Method::GET,
        &format!("{}/mj/task/{id}/fetch", sim.url()),
        Some(KEY_A),
        "",
    ))
    .await
    .body;
    let called = send(request(
        Method::POST,
        &callback,
        None,
        std::str::from_utf8(&finished).unwrap(),
    ))
    .await;
    assert_eq!(called.status, 200);

    receiver.wait_for_status("SUCCESS").await;
    let fetched = fetch(&gw, &id, KEY_A).await;
    assert_eq!(fetched.json()["status"], "SUCCESS");
    assert_eq!(fetched.cache_status(), "mjgate; hit");
    assert_eq!(
        sim.fetch_calls(&id),
        polls + 1,
        "0 polls for the change; the one extra call is this test's own look at the upstream"
    );
    assert_eq!(
        scrape(&gw)
            .await
            .value("mjgate_webhook_callbacks_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn a_callback_writes_only_its_own_task_under_its_own_credential() {
    let receiver = Receiver::start(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_task_duration(Duration::from_secs(600));
    sim.create_task(KEY_A, "other", "IN_PROGRESS");
    let gw = start_with_callbacks(&sim).await;
    let id = submit(&gw, &receiver.url()).await.json()["result"]
        .as_str()
        .unwrap()
        .to_owned();
    let forwarded = forwarded_body(&sim, "/mj/submit/imagine");
    let callback = forwarded["notifyHook"].as_str().unwrap().to_owned();
    let post = |url: String, body: String| send(request(Method::POST, &url, None, &body));

    let forged = serde_json::json!({"id": "other", "status": "SUCCESS"}).to_string();
    assert_eq!(
        post(callback.clone(), forged).await.status,
        404,
        "another task"
    );
    let wrong_token = gw.url("/_mjgate/callback/00000000000000000000000000000000");
    let real = serde_json::json!({"id": id, "status": "SUCCESS"}).to_string();
    assert_eq!(
        post(wrong_token, real.clone()).await.status,
        404,
        "a token never issued"
    );
    assert_eq!(post(callback, real).await.status, 200);

    // Stored under the submitting credential only: key B still asks the upstream (and is refused).
    let theirs = fetch(&gw, &id, KEY_B).await;
    assert_ne!(theirs.status, 200);
    let other = fetch(&gw, "other", KEY_A).await;
    assert_eq!(
        other.json()["status"],
        "IN_PROGRESS",
        "the forged callback wrote nothing"
    );
}

#[tokio::test]
async fn with_redis_a_replica_stopped_mid_retry_leaves_the_delivery_to_another() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&[500, 500, 500]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_task_duration(Duration::from_millis(300));
    let text = format!(
        "[webhooks]\nsecret = \"{SECRET}\"\nallow_private = true\nfinished_only = true\nfirst_retry = \"700ms\"\n\
         [shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"0123456789abcdef0123456789abcdef\"\nkey_prefix = \"hooks:\"\nlease_ttl = \"1s\"\n",
        redis.url()
    );
    let first = start_gateway(config(&sim.url(), &text)).await;
    let second = start_gateway(config(&sim.url(), &text)).await;
    submit(&first, &receiver.url()).await;
    poll_until("a failed attempt by the first replica", || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    let mut connection = redis.connection().await;
    let records: Vec<String> = redis::cmd("KEYS")
        .arg("hooks:hook:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "the hook is kept in Redis: {records:?}");
    let sealed: Vec<u8> = redis::cmd("GET")
        .arg(&records[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        !sealed.windows(KEY_A.len()).any(|w| w == KEY_A.as_bytes()),
        "the credential is sealed"
    );

    first.shutdown().await;
    poll_until("the second replica delivers", || async {
        scrape(&second).await.value(
            "mjgate_webhook_deliveries_total",
            &[("outcome", "delivered")],
        ) == 1.0
    })
    .await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 4, "three 500s, then the 200");
    let ids: Vec<String> = deliveries.iter().map(|d| d.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one event throughout: {ids:?}"
    );
    assert!(deliveries.iter().all(Delivery::signed));
    poll_until(
        "the record and its index entry are gone once delivered",
        || async {
            let mut connection = redis.connection().await;
            let left: Vec<String> = redis::cmd("KEYS")
                .arg("hooks:hook:*")
                .query_async(&mut connection)
                .await
                .unwrap();
            let listed: u64 = redis::cmd("SCARD")
                .arg("hooks:hooks")
                .query_async(&mut connection)
                .await
                .unwrap();
            left.is_empty() && listed == 0
        },
    )
    .await;
}

#[tokio::test]
async fn a_family_whose_description_names_its_callback_field_gets_the_same() {
    let receiver = Receiver::start(&[]).await;
    let extra = webhooks(
        "[families.suno.submit]\nroutes = [\"/suno/submit/music\"]\ncallback_field = \"notify_hook\"\nid_at = [\"/data\"]\n",
    );
    let (sim, gw) = start(&extra).await;
    sim.set_task_duration(Duration::from_millis(400));
    let body = serde_json::json!({"prompt": "a song", "notify_hook": receiver.url()}).to_string();
    let answer = send(request(
        Method::POST,
        &gw.url("/suno/submit/music"),
        Some(KEY_A),
        &body,
    ))
    .await;
    assert_eq!(answer.json()["code"], "success");
    let id = answer.json()["data"].as_str().unwrap().to_owned();
    let forwarded = forwarded_body(&sim, "/suno/submit/music");
    assert!(forwarded.get("notify_hook").is_none(), "{forwarded}");
    poll_until("Suno's finished state delivered", || async {
        receiver
            .deliveries()
            .iter()
            .any(|d| d.json()["data"]["status"] == "SUCCESS")
    })
    .await;
    let deliveries = receiver.deliveries();
    assert!(deliveries.iter().all(Delivery::signed));
    assert!(
        deliveries
            .iter()
            .all(|d| d.json()["data"]["task_id"] == id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_replica_killed_mid_retry_leaves_the_delivery_to_another() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&[500, 500, 500]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_task_duration(Duration::from_millis(300));
    let text = format!(
        "[webhooks]\nsecret = \"{SECRET}\"\nallow_private = true\nfinished_only = true\nfirst_retry = \"700ms\"\n\
         [shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"0123456789abcdef0123456789abcdef\"\nkey_prefix = \"killed:\"\nlease_ttl = \"1s\"\n",
        redis.url(),
    );
    // A Redis full of other keys: the survivor finds the hook without wading through them.
    let mut connection = redis.connection().await;
    let mut junk = redis::pipe();
    for i in 0..5000 {
        junk.cmd("SET")
            .arg(format!("killed:task:junk-{i}"))
            .arg("x")
            .ignore();
    }
    let _: () = junk.query_async(&mut connection).await.unwrap();
    let file =
        crate::config_cli::write_config(&format!("{text}[upstream]\nurl = \"{}\"\n", sim.url()));
    let mut command = crate::config_cli::mjgate();
    command
        .arg("--config")
        .arg(&file.0)
        .args(["--listen", "127.0.0.1:0"]);
    let (child, addr) = crate::config_cli::spawn_listening(&mut command);
    let mut killed = KillOnDrop(child);
    let survivor = start_gateway(config(&sim.url(), &text)).await;
    let body = serde_json::json!({"prompt": "a cat", "notifyHook": receiver.url()}).to_string();
    let answer = send(request(
        Method::POST,
        &format!("http://{addr}/mj/submit/imagine"),
        Some(KEY_A),
        &body,
    ))
    .await;
    assert_eq!(answer.status, 200);
    poll_until("a failed attempt by the replica about to die", || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    killed.0.kill().unwrap(); // SIGKILL: no shutdown, its lease just stops being renewed
    killed.0.wait().unwrap();
    poll_until("the survivor delivers", || async {
        scrape(&survivor).await.value(
            "mjgate_webhook_deliveries_total",
            &[("outcome", "delivered")],
        ) == 1.0
    })
    .await;
    let deliveries = receiver.deliveries();
    let ids: Vec<String> = deliveries.iter().map(|d| d.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one event throughout: {ids:?}"
    );
    assert!(deliveries.iter().all(|d| d.json()["status"] == "SUCCESS"));
    assert!(
        deliveries.len() >= 4,
        "three 500s, then the 200: {}",
        deliveries.len()
    );
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_state_that_replaced_a_waiting_one_is_delivered_once() {
    // The first states fail while the task moves on; each acknowledged state is delivered once.
    let receiver = Receiver::start(&[500, 500, 500]).await;
    let (sim, gw) = start(&webhooks("")).await;
    sim.set_task_duration(Duration::from_millis(1200));
    submit(&gw, &receiver.url()).await;
    receiver.wait_for_status("SUCCESS").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let acknowledged: Vec<String> = receiver.deliveries()[3..]
        .iter()
        .map(|d| d.header("webhook-id"))
        .collect();
    let unique: std::collections::HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(unique.len(), acknowledged.len(), "{acknowledged:?}");
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value(
            "mjgate_webhook_deliveries_total",
            &[("outcome", "delivered")]
        ),
        acknowledged.len() as f64
    );
}

#[tokio::test]
async fn one_credential_cannot_take_every_place_and_a_full_gateway_still_checks_hooks() {
    let receiver = Receiver::start(&[500; 50]).await;
    let (sim, gw) = start(&webhooks("max_pending_per_credential = 1\n")).await;
    sim.set_task_duration(Duration::from_secs(600));
    submit(&gw, &receiver.url()).await;
    // Key A's second hook finds its share taken: forwarded as it came.
    submit(&gw, &receiver.url()).await;
    let bodies = forwarded_submits(&sim);
    assert!(bodies[0].get("notifyHook").is_none());
    assert_eq!(bodies[1]["notifyHook"], receiver.url().as_str());
    // Key B still has its share.
    submit_as(&gw, KEY_B, &receiver.url()).await;
    let last = forwarded_submits(&sim).pop().unwrap();
    assert!(
        last.get("notifyHook").is_none(),
        "key B's hook is taken over"
    );
    // Full or not, a hook the gateway would refuse is refused (never forwarded as it came).
    let before = forwarded_submits(&sim).len();
    let refused = submit(&gw, "ftp://127.0.0.1/x").await;
    assert_eq!(
        refused.status, 400,
        "key A's share is full, and the hook is still checked"
    );
    assert_eq!(forwarded_submits(&sim).len(), before, "not forwarded");
    let metrics = scrape(&gw).await;
    assert!(
        metrics.value(
            "mjgate_webhook_deliveries_total",
            &[("outcome", "overflow")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn watched_hooks_are_charged_what_they_cost_and_past_max_memory_are_forwarded_as_they_came() {
    let receiver = Receiver::start(&[]).await;
    let (sim, gw) = start(&webhooks(
        "max_memory = \"1MiB\"\nmax_pending_per_credential = 1000\n",
    ))
    .await;
    sim.set_task_duration(Duration::from_secs(600));
    for _ in 0..60 {
        assert_eq!(submit(&gw, &receiver.url()).await.status, 200);
    }
    let bodies = forwarded_submits(&sim);
    let taken = bodies
        .iter()
        .filter(|b| b.get("notifyHook").is_none())
        .count();
    // Each watched hook is charged its record and 24 KiB for its tracker and poller: about 42 fit
    // in 1 MiB, and the others keep their hook for the upstream's own callback.
    assert!((35..=42).contains(&taken), "{taken} hooks taken over");
    assert!(
        bodies[taken..]
            .iter()
            .all(|b| b["notifyHook"] == receiver.url().as_str()),
        "the first ones fit, the rest are forwarded as they came"
    );
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value(
            "mjgate_webhook_deliveries_total",
            &[("outcome", "overflow")]
        ),
        (60 - taken) as f64
    );
    let held = metrics.value("mjgate_webhook_memory_bytes", &[]);
    assert!(
        held >= (taken * (24 << 10)) as f64 && held <= (1 << 20) as f64,
        "{held}"
    );
}

#[tokio::test]
async fn receivers_that_never_answer_hold_at_most_max_in_flight_connections() {
    use std::time::Instant;
    // A receiver that takes every connection and never answers; it notes when each was open.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hooks/mj", listener.local_addr().unwrap());
    // When each connection was accepted, and when the receiver saw it closed.
    type Spans = Vec<(Instant, Option<Instant>)>;
    let spans: Arc<Mutex<Spans>> = Arc::default();
    let noted = Arc::clone(&spans);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let noted = Arc::clone(&noted);
            let i = {
                let mut spans = noted.lock();
                spans.push((Instant::now(), None));
                spans.len() - 1
            };
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                noted.lock()[i].1 = Some(Instant::now());
            });
        }
    });
    let (sim, gw) = start(&webhooks(
        "finished_only = true\ntimeout = \"500ms\"\nmax_in_flight = 2\n",
    ))
    .await;
    sim.set_task_duration(Duration::from_millis(100));
    for _ in 0..6 {
        assert_eq!(submit(&gw, &hook).await.status, 200);
    }
    poll_until("attempts beyond the first two", || async {
        spans.lock().iter().filter(|(_, end)| end.is_some()).count() >= 4
    })
    .await;
    // Most connections open at once. An attempt holds its connection for its whole 500 ms deadline;
    // the receiver notices a close a moment after it happens, so overlaps under 50 ms do not count.
    let spans = spans.lock().clone();
    let now = Instant::now();
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, end)| {
                    let end = end.unwrap_or(now) - Duration::from_millis(50);
                    s <= start && *start < end
                })
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(most <= 2, "{most} at once: {spans:?}");
}
