//! Submits while the gateway delivers hooks: a submit's work outlives its client, a body a lenient
//! upstream could read otherwise never reaches it, "no such task" is never an event, a finished
//! task stays finished, every event has its own id, and any replica answers a callback.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::support::*;

/// `[webhooks]` with private hooks allowed (the receivers are on loopback) and quick retries.
fn webhooks(extra: &str) -> String {
    format!(
        "[cache]\nin_progress_ttl = \"200ms\"\n[webhooks]\nsecret = \"{SECRET}\"\nallow_private = true\nfirst_retry = \"100ms\"\n{extra}"
    )
}

/// `[webhooks]` as an operator runs it: hooks on internal addresses refused.
fn strict_webhooks() -> String {
    format!("[webhooks]\nsecret = \"{SECRET}\"\n")
}

async fn post(gw: &Gateway, path: &str, body: &str) -> Reply {
    send(request(Method::POST, &gw.url(path), Some(KEY_A), body)).await
}

fn imagine(hook: &str) -> String {
    serde_json::json!({"prompt": "a cat", "notifyHook": hook}).to_string()
}

/// A gateway that gives the upstream its own callback URL (`public_url`), `extra` appended to its
/// `[webhooks]`; `quiet` makes running answers fresh for an hour, so only callbacks bring news.
async fn with_callbacks(sim: &Simulator, extra: &str, quiet: bool) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let mut text = webhooks(&format!("public_url = \"{public}\"\n{extra}"));
    if quiet {
        text = text.replacen("in_progress_ttl = \"200ms\"", "in_progress_ttl = \"1h\"", 1);
    }
    start_gateway_on(listener, config(&sim.url(), &text))
}

/// Submits an imagine with `hook`; the task id and the callback URL the upstream was given.
async fn submit_with_callback(gw: &Gateway, sim: &Simulator, hook: &str) -> (String, String) {
    let id = post(gw, "/mj/submit/imagine", &imagine(hook)).await.json()["result"]
        .as_str()
        .unwrap()
        .to_owned();
    let callback = sim
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.uri == "/mj/submit/imagine")
        .and_then(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["notifyHook"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("the upstream got the gateway's callback URL");
    (id, callback)
}

/// The task ids of every finished (`SUCCESS`) delivery the receiver got.
fn finished(receiver: &Receiver) -> HashSet<String> {
    receiver
        .deliveries()
        .iter()
        .filter(|d| d.json()["status"] == "SUCCESS")
        .map(|d| d.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_task_the_upstream_does_not_show_yet_is_looked_for_and_no_not_found_is_an_event() {
    let receiver = Receiver::start(&[]).await;
    let (sim, gw) = start(&webhooks("")).await;
    sim.set_task_duration(Duration::from_millis(800));
    // new-api answers `200 {"code":3,"description":"task_no_found"}` until its row is inserted.
    sim.set_hidden_lookups(3);
    let answer = post(&gw, "/mj/submit/imagine", &imagine(&receiver.url())).await;
    let id = answer.json()["result"].as_str().unwrap().to_owned();
    receiver.wait_for_status("SUCCESS").await;
    let deliveries = receiver.deliveries();
    for delivery in &deliveries {
        assert_eq!(
            delivery.json()["id"],
            id.as_str(),
            "only task states are events: {:?}",
            String::from_utf8_lossy(&delivery.body)
        );
    }
    assert!(
        sim.fetch_calls(&id) >= 4,
        "it kept looking past the not-found answers"
    );
}

#[tokio::test]
async fn clients_that_hang_up_during_a_slow_submit_still_get_their_hooks_delivered() {
    let receiver = Receiver::start(&[]).await;
    let (sim, gw) = start(&webhooks("")).await;
    sim.set_task_duration(Duration::from_millis(500));
    sim.set_submit_latency(Duration::from_millis(1500));
    let gw = Arc::new(gw);
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let gw = Arc::clone(&gw);
            let body = imagine(&receiver.url());
            tokio::spawn(async move {
                // The client gives up long before the upstream answers, and closes its connection.
                let submit = post(&gw, "/mj/submit/imagine", &body);
                tokio::time::timeout(Duration::from_millis(200), submit).await
            })
        })
        .collect();
    for client in clients {
        assert!(client.await.unwrap().is_err(), "the client hung up");
    }
    poll_until("every task finished and delivered", || async {
        finished(&receiver).len() == 20
    })
    .await;
    assert_eq!(sim.submits(), 20, "one upstream task per submit");
    let forwarded: Vec<Value> = sim
        .requests()
        .into_iter()
        .filter(|r| r.uri == "/mj/submit/imagine")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(
        forwarded
            .iter()
            .all(|body| body.get("notifyHook").is_none()),
        "the hooks were taken over, not left to the upstream"
    );
    poll_until("no tracker left", || async {
        scrape(&gw).await.value("mjgate_webhook_pending", &[]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn submit_bodies_a_lenient_upstream_could_read_otherwise_are_refused() {
    let (sim, gw) = start(&strict_webhooks()).await;
    let inside = "http://127.0.0.1:9/hook";
    let refused = [
        format!("\u{FEFF}{}", imagine(inside)),
        format!("{} x", imagine(inside)),
        format!("{}{{\"a\":1}}", imagine(inside)),
        format!(r#"{{"prompt":"p","notifyHook":"{inside}","notifyHook":""}}"#),
        format!(r#"{{"prompt":"p","notifyHook":"","notifyHook":"{inside}"}}"#),
        format!(r#"{{"prompt":"p","NotifyHook":"{inside}"}}"#),
        format!(r#"{{"prompt":"p","notifyhook":"{inside}"}}"#),
        format!(
            r#"{{"prompt":"p","notifyHook":"https://hooks.example.invalid/","NOTIFYHOOK":"{inside}"}}"#
        ),
        format!(r#"{{"prompt":"p","notifyHook":["{inside}"]}}"#),
        r#"{"prompt":"p","notifyHook":"http://[::1%25lo]:9/"}"#.to_owned(),
        r#"{"prompt":"p","notifyHook":"http://[::1%lo]:9/"}"#.to_owned(),
    ];
    for body in &refused {
        let reply = post(&gw, "/mj/submit/imagine", body).await;
        assert_eq!(reply.status, 400, "{body}: {:?}", reply.body);
        assert_eq!(reply.json()["type"], "mjgate_error", "{body}");
    }
    // Every path an upstream's router would take for a submit is one.
    for path in [
        "/mj//submit/imagine",
        "/a/b/mj/submit/imagine",
        "/mj-fast/mj/submit/imagine",
        "/mj/insight-face/swap",
        "/mj/%73ubmit/imagine",
        "/mj/submit/imagine/",
        "/MJ/submit/imagine",
        "/mj/submit/blend",
        // For a router behind a proxy that decodes once more, or one that folds `\` into `/`.
        "/mj/%2573ubmit/imagine",
        "/mj\\submit\\imagine",
    ] {
        let reply = post(&gw, path, &imagine(inside)).await;
        assert_eq!(reply.status, 400, "{path}: {:?}", reply.body);
        assert!(
            reply.json()["description"]
                .as_str()
                .unwrap()
                .contains("notifyHook"),
            "{path}"
        );
    }
    assert!(
        sim.requests().is_empty(),
        "none of them reached the upstream: {:?}",
        sim.requests().iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    let errors = scrape(&gw).await;
    assert_eq!(
        errors.value("mjgate_client_errors_total", &[("reason", "submit_body")]),
        7.0,
        "counted as the client's: a BOM, two trailers, two duplicates, two spellings, an array"
    );
    assert_eq!(
        errors.value("mjgate_client_errors_total", &[("reason", "submit_hook")]),
        (refused.len() - 7 + 10) as f64,
        "and the hooks it would not deliver to"
    );
}

#[tokio::test]
async fn a_finished_task_stays_finished_whatever_callbacks_arrive_after() {
    let receiver = Receiver::start(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_task_duration(Duration::from_secs(600));
    let gw = with_callbacks(&sim, "finished_only = true\n", false).await;
    let (id, callback) = submit_with_callback(&gw, &sim, &receiver.url()).await;
    let call_back = |status: &str| {
        let body = serde_json::json!({"id": id, "status": status, "progress": "50%"}).to_string();
        send(request(Method::POST, &callback, None, &body))
    };
    let first = call_back("SUCCESS").await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    receiver.wait_for_status("SUCCESS").await;
    // Out of order, late, or wrong: acknowledged, and nothing changes.
    assert_eq!(call_back("IN_PROGRESS").await.status, 200);
    assert_eq!(call_back("FAILURE").await.status, 200);
    let fetched = fetch(&gw, &id, KEY_A).await;
    assert_eq!(fetched.json()["status"], "SUCCESS");
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_webhook_callbacks_total", &[("result", "ignored")]),
        2.0
    );
    assert!(
        receiver
            .deliveries()
            .iter()
            .all(|d| d.json()["status"] == "SUCCESS"),
        "nothing after the finished state"
    );
    assert_eq!(
        sim.fetch_calls(&id),
        1,
        "the tracker's first look; after it, the callbacks were the only news"
    );
}

#[tokio::test]
async fn every_event_has_its_own_id_even_when_a_state_comes_back() {
    let receiver = Receiver::start(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_task_duration(Duration::from_secs(600));
    let gw = with_callbacks(&sim, "", true).await;
    let (id, callback) = submit_with_callback(&gw, &sim, &receiver.url()).await;
    receiver.wait_for_status("SUBMITTED").await;
    for (n, progress) in ["10%", "20%", "10%"].into_iter().enumerate() {
        let body = serde_json::json!({"id": id, "status": "IN_PROGRESS", "progress": progress})
            .to_string();
        assert_eq!(
            send(request(Method::POST, &callback, None, &body))
                .await
                .status,
            200
        );
        poll_until("the change delivered", || async {
            receiver.deliveries().len() == n + 2
        })
        .await;
    }
    let ids: HashMap<String, usize> =
        receiver
            .deliveries()
            .iter()
            .fold(HashMap::new(), |mut ids, d| {
                *ids.entry(d.header("webhook-id")).or_default() += 1;
                ids
            });
    assert_eq!(
        ids.len(),
        4,
        "SUBMITTED, 10%, 20%, 10% again: four events, four ids: {ids:?}"
    );
}

#[tokio::test]
async fn a_callback_token_is_answered_by_every_replica_and_outlives_the_one_that_issued_it() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_task_duration(Duration::from_secs(600));
    let shared = format!(
        "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"0123456789abcdef0123456789abcdef\"\nkey_prefix = \"cb:\"\n",
        redis.url()
    );
    let first_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", first_listener.local_addr().unwrap());
    let text = webhooks(&format!("public_url = \"{public}\"\n{shared}"));
    let first = start_gateway_on(first_listener, config(&sim.url(), &text));
    let second = start_gateway(config(&sim.url(), &text)).await;
    let id = post(&first, "/mj/submit/imagine", &imagine(&receiver.url()))
        .await
        .json()["result"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = sim
        .requests()
        .into_iter()
        .find(|r| r.uri == "/mj/submit/imagine")
        .and_then(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["notifyHook"]
                .as_str()
                .map(str::to_owned)
        })
        .and_then(|url| url.rsplit('/').next().map(str::to_owned))
        .unwrap();
    first.shutdown().await;
    let body = serde_json::json!({"id": id, "status": "SUCCESS", "progress": "100%"}).to_string();
    let answer = send(request(
        Method::POST,
        &second.url(&format!("/_mjgate/callback/{token}")),
        None,
        &body,
    ))
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(fetch(&second, &id, KEY_A).await.json()["status"], "SUCCESS");
    let forged = send(request(
        Method::POST,
        &second.url("/_mjgate/callback/00000000000000000000000000000000"),
        None,
        &body,
    ))
    .await;
    assert_eq!(forged.status, 404);
}

#[tokio::test]
async fn an_answer_whose_status_and_progress_did_not_change_is_no_event() {
    let receiver = Receiver::start(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_task_duration(Duration::from_secs(600));
    let gw = with_callbacks(&sim, "", true).await;
    let (id, callback) = submit_with_callback(&gw, &sim, &receiver.url()).await;
    receiver.wait_for_status("SUBMITTED").await;
    let state = |status: &str, progress: &str, url: &str| {
        serde_json::json!({"id": id, "status": status, "progress": progress, "imageUrl": url})
            .to_string()
    };
    // new-api's `?rand=` on a running task: other bytes, the same status and progress.
    let rand = state(
        "SUBMITTED",
        "0%",
        "https://relay.example/mj/image/1?rand=17",
    );
    assert_eq!(
        send(request(Method::POST, &callback, None, &rand))
            .await
            .status,
        200
    );
    poll_until("the byte-only change is seen and not sent", || async {
        scrape(&gw).await.value(
            "mjgate_webhook_deliveries_total",
            &[("outcome", "unchanged")],
        ) == 1.0
    })
    .await;
    let real = state(
        "IN_PROGRESS",
        "40%",
        "https://relay.example/mj/image/1?rand=18",
    );
    assert_eq!(
        send(request(Method::POST, &callback, None, &real))
            .await
            .status,
        200
    );
    receiver.wait_for_status("IN_PROGRESS").await;
    let statuses: Vec<String> = receiver
        .deliveries()
        .iter()
        .map(|d| d.json()["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["SUBMITTED", "IN_PROGRESS"]);
}
