//! Purge and inspect: an operator's look at what is cached for a task, here and in Redis, and its
//! removal everywhere, so the next poll goes upstream once.

use http::Method;
use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "admin-token-0123456789";

async fn admin(gw: &Gateway, method: Method, path: &str, token: Option<&str>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    send(request(method, &gw.url(path), bearer.as_deref(), "")).await
}

fn held(inspected: &Reply) -> Vec<Value> {
    inspected.json()["replica"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_operator_inspects_a_task_and_purges_one_credentials_answer_and_the_next_poll_goes_upstream_once()
 {
    let (sim, gw) = start(&format!("[admin]\ntoken = \"{TOKEN}\"\n")).await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    fetch(&gw, "t", KEY_A).await;
    // Another credential asks for it: the upstream says "no such task" to it, cached apart.
    fetch(&gw, "t", KEY_B).await;
    assert_eq!(sim.fetch_calls("t"), 2);

    for token in [None, Some("wrong-token-0123456789")] {
        let refused = admin(&gw, Method::GET, "/admin/tasks/midjourney/t", token).await;
        assert_eq!(refused.status, 401, "{token:?}");
        assert_eq!(refused.json()["type"], "mjgate_error");
    }
    let inspected = admin(&gw, Method::GET, "/admin/tasks/midjourney/t", Some(TOKEN)).await;
    assert_eq!(inspected.status, 200);
    let entries = held(&inspected);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let finished = entries.iter().find(|e| e["class"] == "terminal").unwrap();
    assert!(entries.iter().any(|e| e["class"] == "not_found"));
    assert_eq!(finished["status"], 200);
    assert!(finished["bytes"].as_u64().unwrap() > 0);
    let credential = finished["credential"].as_str().unwrap().to_owned();
    assert_eq!(
        credential.len(),
        8,
        "a fingerprint prefix, never the credential"
    );
    assert!(!String::from_utf8_lossy(&inspected.body).contains("sk-key-a"));
    assert_eq!(inspected.json()["shared"], Value::Null, "no Redis tier");

    let purged = admin(
        &gw,
        Method::DELETE,
        &format!("/admin/tasks/midjourney/t?credential={credential}"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(purged.status, 200);
    assert_eq!(purged.json()["purged"]["replica"], 1);
    let left = held(&admin(&gw, Method::GET, "/admin/tasks/midjourney/t", Some(TOKEN)).await);
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0]["class"], "not_found",
        "the other credential's answer stays"
    );

    // Ten polls after the purge: one upstream call, then the cache again.
    futures_util::future::join_all((0..10).map(|_| fetch(&gw, "t", KEY_A))).await;
    assert_eq!(sim.fetch_calls("t"), 3);

    // A family, then everything.
    let family = admin(&gw, Method::DELETE, "/admin/tasks/midjourney", Some(TOKEN)).await;
    assert_eq!(family.json()["purged"]["replica"], 2);
    fetch(&gw, "t", KEY_A).await;
    let all = admin(&gw, Method::DELETE, "/admin/tasks", Some(TOKEN)).await;
    assert_eq!(all.json()["purged"]["replica"], 1);

    for (method, path, status) in [
        (Method::DELETE, "/admin/tasks/nosuchfamily", 400),
        (
            Method::DELETE,
            "/admin/tasks/midjourney/t?credential=xyz",
            400,
        ),
        (Method::GET, "/admin/tasks/midjourney", 400),
        (Method::POST, "/admin/tasks/midjourney/t", 405),
    ] {
        let answer = admin(&gw, method.clone(), path, Some(TOKEN)).await;
        assert_eq!(answer.status, status, "{method} {path}");
        assert_eq!(answer.json()["type"], "mjgate_error", "{method} {path}");
    }
}

#[tokio::test]
async fn without_an_admin_token_the_task_routes_are_off() {
    let (_sim, gw) = start("").await;
    let off = admin(&gw, Method::DELETE, "/admin/tasks", Some(TOKEN)).await;
    assert_eq!(off.status, 403);
    assert!(
        off.json()["description"]
            .as_str()
            .unwrap()
            .contains("admin.token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_replica_clears_redis_and_every_other_replica() {
    let redis = RedisServer::start();
    let text = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"0123456789abcdef0123456789abcdef\"\n",
        redis.url()
    );
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    let a = start_gateway(config(&sim.url(), &text)).await;
    let b = start_gateway(config(&sim.url(), &text)).await;
    fetch(&a, "t", KEY_A).await;
    assert_eq!(
        fetch(&b, "t", KEY_A).await.cache_status(),
        "mjgate; hit; detail=shared"
    );
    assert_eq!(sim.fetch_calls("t"), 1);
    let inspected = admin(&a, Method::GET, "/admin/tasks/midjourney/t", Some(TOKEN)).await;
    let shared = inspected.json()["shared"].as_array().unwrap().clone();
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert_eq!(shared[0]["class"], "terminal");

    let purged = admin(&a, Method::DELETE, "/admin/tasks/midjourney/t", Some(TOKEN)).await;
    assert_eq!(
        purged.json()["purged"],
        serde_json::json!({"replica": 1, "shared": 1})
    );
    // The other replica hears of it.
    poll_until("replica b dropped its copy", || async {
        held(&admin(&b, Method::GET, "/admin/tasks/midjourney/t", Some(TOKEN)).await).is_empty()
    })
    .await;
    let after = admin(&b, Method::GET, "/admin/tasks/midjourney/t", Some(TOKEN)).await;
    assert_eq!(after.json()["shared"], serde_json::json!([]));
    fetch(&b, "t", KEY_A).await;
    assert_eq!(sim.fetch_calls("t"), 2, "the next poll went upstream once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mjgate_inspect_and_mjgate_purge_call_a_running_gateway_from_the_shell() {
    let (sim, gw) = start(&format!("[admin]\ntoken = \"{TOKEN}\"\n")).await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    fetch(&gw, "t", KEY_A).await;
    let file = crate::config_cli::write_config(&format!(
        "[upstream]\nurl = \"{}\"\n[admin]\ntoken = \"{TOKEN}\"\n",
        sim.url()
    ));
    let base = gw.url("");
    // `mjgate --config F <args> --url <gateway>`, from a shell.
    let run = |args: &[&str]| {
        let path = file.0.clone();
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["--url".to_owned(), base.clone()]);
        tokio::task::spawn_blocking(move || {
            crate::config_cli::mjgate()
                .arg("--config")
                .arg(path)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let inspected = run(&["inspect", "midjourney", "t"]).await.unwrap();
    assert!(inspected.status.success(), "{inspected:?}");
    let shown: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(shown["replica"].as_array().unwrap().len(), 1);
    let purged = run(&["purge", "midjourney", "t"]).await.unwrap();
    assert!(purged.status.success(), "{purged:?}");
    let said: Value = serde_json::from_slice(&purged.stdout).unwrap();
    assert_eq!(said["purged"]["replica"], 1);
    // A family that does not exist: the gateway's 400, exit 1.
    let refused = run(&["purge", "nosuch"]).await.unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    // A script's unset `$ID` must not purge the whole family: refused before anything is sent.
    fetch(&gw, "t", KEY_A).await;
    for args in [
        &["purge", "midjourney", ""][..],
        &["purge", "", ""],
        &["purge", "midjourney", "t", "--credential", ""],
        &["inspect", "midjourney", ""],
    ] {
        let refused = run(args).await.unwrap();
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {refused:?}");
    }
    let inspected = run(&["inspect", "midjourney", "t"]).await.unwrap();
    let shown: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        shown["replica"].as_array().unwrap().len(),
        1,
        "still cached"
    );
}

#[tokio::test]
async fn an_admin_request_that_could_widen_or_change_its_scope_is_refused() {
    let (sim, gw) = start(&format!("[admin]\ntoken = \"{TOKEN}\"\n")).await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    fetch(&gw, "t", KEY_A).await;
    for path in [
        "/admin/tasks/midjourney/",
        "/admin/tasks//",
        "/admin/tasks/midjourney/t?credentail=91",
        "/admin/tasks/midjourney/t?credential=aa&credential=bb",
    ] {
        let refused = admin(&gw, Method::DELETE, path, Some(TOKEN)).await;
        assert_eq!(refused.status, 400, "{path}: {:?}", refused.body);
        assert_eq!(refused.json()["type"], "mjgate_error");
    }
    let mut with_body = request(
        Method::DELETE,
        &gw.url("/admin/tasks/midjourney/t"),
        Some(&format!("Bearer {TOKEN}")),
        "{\"id\": \"other\"}",
    );
    with_body
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    assert_eq!(send(with_body).await.status, 400);
    let inspected = admin(&gw, Method::GET, "/admin/tasks/midjourney/t", Some(TOKEN)).await;
    assert_eq!(held(&inspected).len(), 1, "nothing was purged");
}

#[tokio::test]
async fn the_admin_token_sent_to_the_main_listener_is_answered_there_never_forwarded() {
    let sim = Simulator::start().await.unwrap();
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main_addr = main.local_addr().unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let config = config(
        &sim.url(),
        &format!("admin_listen = \"{admin_addr}\"\n[admin]\ntoken = \"{TOKEN}\"\n"),
    );
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mjgate::run(
        mjgate::server::Listeners {
            main,
            admin: Some(admin_listener),
        },
        config,
        async {
            let _ = stopped.await;
        },
    ));
    let on_main = |path: &str, token: Option<&str>| {
        let bearer = token.map(|t| format!("Bearer {t}"));
        send(request(
            Method::DELETE,
            &format!("http://{main_addr}{path}"),
            bearer.as_deref(),
            "",
        ))
    };
    let misdirected = on_main("/admin/tasks", Some(TOKEN)).await;
    assert_eq!(misdirected.status, 421, "{:?}", misdirected.body);
    assert!(
        sim.requests().iter().all(|r| !r.uri.starts_with("/admin")),
        "the admin token reached the upstream"
    );
    // Without the token, the upstream's own /admin routes are still its own.
    on_main("/admin/anything", None).await;
    assert!(sim.requests().iter().any(|r| r.uri == "/admin/anything"));
}

#[tokio::test]
async fn a_long_poll_held_on_a_purged_task_is_answered_with_the_upstreams_fresh_state() {
    // Entries stay fresh for an hour: only the purge can make the held poll see the change.
    let (sim, gw) = start(&format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[cache]\nin_progress_ttl = \"1h\"\n"
    ))
    .await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    sim.set_progress("t", "10%");
    let first = fetch(&gw, "t", KEY_A).await;
    assert_eq!(first.json()["progress"], "10%");
    let tag = first.header("etag").to_owned();
    let held = tokio::spawn({
        let url = gw.url("/mj/task/t/fetch?wait=20s");
        async move {
            let mut poll = request(Method::GET, &url, Some(KEY_A), "");
            poll.headers_mut()
                .insert("if-none-match", tag.parse().unwrap());
            send(poll).await
        }
    });
    wait_for_metric(&gw, "mjgate_open_long_polls", 1.0).await;
    sim.set_progress("t", "50%");
    let purged = admin(
        &gw,
        Method::DELETE,
        "/admin/tasks/midjourney/t",
        Some(TOKEN),
    )
    .await;
    assert_eq!(purged.status, 200);
    let answered = held.await.unwrap();
    assert_eq!(answered.status, 200, "refreshed, not ended: {answered:?}");
    assert_eq!(answered.json()["progress"], "50%");
    assert_eq!(sim.fetch_calls("t"), 2, "the purge cost one upstream call");
}
