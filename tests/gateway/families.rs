//! Every task API of the relay, cached like Midjourney: each built-in family against the simulator,
//! which speaks each in its own shape (routes, envelopes, native statuses, not-found answers).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use mjgate::tools::simulator::{Api, Fault, Phase};

use crate::support::*;

/// Every API but Midjourney (whose own tests cover it already).
fn apis() -> impl Iterator<Item = Api> {
    Api::ALL.into_iter().filter(|api| *api != Api::Midjourney)
}

async fn poll(gw: &Gateway, api: Api, id: &str, credential: &str) -> Reply {
    get(gw, &api.status_path(id), credential).await
}

/// The status an answer of `api` carries, wherever that API keeps it.
fn status_of(api: Api, reply: &Reply) -> String {
    let json = reply.json();
    let at = match api {
        Api::Suno | Api::Kling | Api::VideoGenerations => &json["data"]["status"],
        Api::Luma => &json["state"],
        _ => &json["status"],
    };
    at.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn finished_tasks_of_every_family_are_served_with_no_further_upstream_call() {
    let (sim, gw) = start("").await;
    for api in apis() {
        sim.create_task_in(api, KEY_A, "done", api.status(Phase::Succeeded));
        let first = poll(&gw, api, "done", KEY_A).await;
        assert_eq!(first.status, 200, "{api:?}");
        assert_eq!(
            status_of(api, &first),
            api.status(Phase::Succeeded),
            "{api:?}"
        );
        for _ in 0..3 {
            let again = poll(&gw, api, "done", KEY_A).await;
            assert_eq!(again.body, first.body, "{api:?}: the upstream's own bytes");
            assert!(again.cache_status().starts_with("mjgate; hit"), "{api:?}");
        }
        assert_eq!(sim.fetch_calls_in(api, "done"), 1, "{api:?}");
    }
    let metrics = scrape(&gw).await;
    for api in apis() {
        let hits = metrics.value(
            "mjgate_task_lookups_total",
            &[("family", api.name()), ("cache", "hit")],
        );
        assert_eq!(hits, 3.0, "{api:?}: lookups are labelled by family");
    }
}

#[tokio::test]
async fn every_family_says_where_its_finished_answers_name_their_result_files() {
    let (sim, gw) = start("").await;
    sim.set_link_ttl(Some(Duration::from_secs(24 * 3600)));
    let families = mjgate::family::Families::builtin();
    for api in Api::ALL {
        sim.create_task_in(api, KEY_A, "done", api.status(Phase::Succeeded));
        let answer = poll(&gw, api, "done", KEY_A).await;
        let family = families
            .by_name(api.name())
            .expect("a built-in family per API");
        let urls: Vec<String> = family
            .result_urls(&answer.body)
            .into_iter()
            .map(|r| r.url)
            .collect();
        let origin = sim.url();
        match api {
            // Its file is the download route (`/v1/videos/{id}/content`), not a URL in the answer.
            Api::OpenAiVideos => assert!(urls.is_empty(), "{urls:?}"),
            // Discord's CDN shape: hex expiry, issue time and signature.
            Api::Midjourney => {
                assert_eq!(urls.len(), 1, "{urls:?}");
                let link = format!("{origin}/attachments/done/done.png?ex=");
                assert!(urls[0].starts_with(&link), "{urls:?}");
                assert!(urls[0].contains("&is=") && urls[0].contains("&hm="));
            }
            // No signature seen on theirs.
            Api::Suno | Api::Luma => {
                assert_eq!(urls, [format!("{origin}/files/{}/done.mp4", api.name())]);
            }
            _ => {
                assert_eq!(
                    urls.len(),
                    1,
                    "{api:?}: {}",
                    String::from_utf8_lossy(&answer.body)
                );
                let link = format!("{origin}/files/{}/done.mp4?Expires=", api.name());
                assert!(urls[0].starts_with(&link), "{api:?}: {urls:?}");
            }
        }
    }
}

#[tokio::test]
async fn result_links_serve_their_file_until_they_expire_and_the_answer_is_not_served_past_them() {
    let (sim, gw) = start("").await;
    sim.set_link_ttl(Some(Duration::from_secs(2)));
    sim.create_task(KEY_A, "img", "SUCCESS");
    let answer = fetch(&gw, "img", KEY_A).await;
    let link = answer.json()["imageUrl"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(fetch(&gw, "img", KEY_A).await.body, answer.body);
    }
    assert_eq!(sim.fetch_calls("img"), 1, "cached while its link lives");
    let file = send(request(Method::GET, &link, None, "")).await;
    assert_eq!(file.status, 200);
    assert_eq!(file.header("content-type"), "image/png");
    assert_eq!(file.body.len(), 256 << 10);
    assert_eq!(sim.downloads("/attachments/img/img.png"), 1);
    // A forged signature is refused like an expired link.
    let forged = link.replace("&hm=", "&hm=0");
    assert_eq!(
        send(request(Method::GET, &forged, None, "")).await.status,
        403
    );
    // Past `ex`: the link answers 403, and the gateway asks the upstream again rather than hand out
    // a dead link.
    poll_until("the link expires", || async {
        send(request(Method::GET, &link, None, "")).await.status == 403
    })
    .await;
    poll_until("the answer is refetched", || async {
        fetch(&gw, "img", KEY_A).await;
        sim.fetch_calls("img") >= 2
    })
    .await;
}

#[tokio::test]
async fn running_tasks_of_every_family_are_refetched_once_per_ttl() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"300ms\"\n").await;
    for api in apis() {
        sim.create_task_in(api, KEY_A, "busy", api.status(Phase::Running));
        for _ in 0..3 {
            assert_eq!(poll(&gw, api, "busy", KEY_A).await.status, 200);
        }
        assert_eq!(sim.fetch_calls_in(api, "busy"), 1, "{api:?}");
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    for api in apis() {
        sim.set_status_in(api, "busy", api.status(Phase::Succeeded));
        let done = poll(&gw, api, "busy", KEY_A).await;
        assert_eq!(
            status_of(api, &done),
            api.status(Phase::Succeeded),
            "{api:?}"
        );
        assert_eq!(sim.fetch_calls_in(api, "busy"), 2, "{api:?}");
    }
}

#[tokio::test]
async fn sixty_concurrent_polls_of_a_family_task_cost_one_upstream_call() {
    let (sim, gw) = start("").await;
    let gw = Arc::new(gw);
    for api in apis() {
        sim.create_task_in(api, KEY_A, "hot", api.status(Phase::Running));
        let before = sim.total_calls();
        let hold = sim.hold();
        let polls: Vec<_> = (0..60)
            .map(|_| {
                let gw = Arc::clone(&gw);
                tokio::spawn(async move { poll(&gw, api, "hot", KEY_A).await })
            })
            .collect();
        sim.wait_for_calls(before + 1).await;
        poll_until("59 waiters on the one call", || async {
            scrape(&gw).await.value("mjgate_collapse_waiters", &[]) >= 59.0
        })
        .await;
        drop(hold);
        for poll in polls {
            assert_eq!(poll.await.unwrap().status, 200, "{api:?}");
        }
        assert_eq!(sim.fetch_calls_in(api, "hot"), 1, "{api:?}");
    }
}

#[tokio::test]
async fn another_credential_never_sees_a_family_task() {
    let (sim, gw) = start("").await;
    for api in apis() {
        sim.create_task_in(api, KEY_A, "mine", api.status(Phase::Succeeded));
        assert_eq!(poll(&gw, api, "mine", KEY_A).await.status, 200);
        let theirs = poll(&gw, api, "mine", KEY_B).await;
        let (status, _) = api.not_found();
        assert_eq!(
            theirs.status.as_u16(),
            status,
            "{api:?}: the API's own not-found"
        );
        let theirs = String::from_utf8_lossy(&theirs.body);
        assert!(!theirs.contains("/files/") && !theirs.contains("/attachments/"));
        assert_eq!(
            sim.fetch_calls_in(api, "mine"),
            2,
            "{api:?}: key B asked upstream itself"
        );
    }
}

#[tokio::test]
async fn a_not_found_answer_is_kept_no_longer_than_the_negative_ttl() {
    let (sim, gw) = start("[cache]\nnot_found_ttl = \"300ms\"\n").await;
    for api in apis() {
        let (status, body) = api.not_found();
        let first = poll(&gw, api, "nope", KEY_A).await;
        assert_eq!(first.status.as_u16(), status, "{api:?}");
        assert_eq!(
            first.json(),
            body,
            "{api:?}: passed on as the upstream said it"
        );
        let again = poll(&gw, api, "nope", KEY_A).await;
        assert_eq!(again.status.as_u16(), status);
        assert_eq!(sim.fetch_calls_in(api, "nope"), 1, "{api:?}: kept briefly");
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    for api in apis() {
        // Submitted meanwhile: found as soon as the negative entry is gone.
        sim.create_task_in(api, KEY_A, "nope", api.status(Phase::Running));
        assert_eq!(poll(&gw, api, "nope", KEY_A).await.status, 200, "{api:?}");
        assert_eq!(sim.fetch_calls_in(api, "nope"), 2, "{api:?}");
    }
}

#[tokio::test]
async fn an_unknown_status_is_running_and_refetched() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"200ms\"\n").await;
    for api in apis() {
        for (id, status) in [
            ("u1", "unknown"),
            ("u2", "UNKNOWN"),
            ("u3", "never-seen-before"),
        ] {
            sim.create_task_in(api, KEY_A, id, status);
            assert_eq!(poll(&gw, api, id, KEY_A).await.status, 200);
        }
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    for api in apis() {
        for id in ["u1", "u2", "u3"] {
            poll(&gw, api, id, KEY_A).await;
            assert_eq!(
                sim.fetch_calls_in(api, id),
                2,
                "{api:?} {id}: never cached as finished"
            );
        }
    }
}

#[tokio::test]
async fn statuses_are_compared_without_case() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"100ms\"\n").await;
    sim.create_task_in(Api::Luma, KEY_A, "l", "COMPLETED");
    sim.create_task_in(Api::Runway, KEY_A, "r", "succeeded");
    poll(&gw, Api::Luma, "l", KEY_A).await;
    poll(&gw, Api::Runway, "r", KEY_A).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    poll(&gw, Api::Luma, "l", KEY_A).await;
    poll(&gw, Api::Runway, "r", KEY_A).await;
    assert_eq!(sim.fetch_calls_in(Api::Luma, "l"), 1);
    assert_eq!(sim.fetch_calls_in(Api::Runway, "r"), 1);
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_finished_answer_is_never_served_past_its_expires_at() {
    let (sim, gw) = start("").await;
    let api = Api::OpenAiVideos;
    sim.create_task_in(api, KEY_A, "gone", "completed");
    sim.set_expires_at(api, "gone", Some(unix_now() - 1));
    sim.create_task_in(api, KEY_A, "soon", "completed");
    sim.set_expires_at(api, "soon", Some(unix_now() + 2));
    sim.create_task_in(api, KEY_A, "later", "completed");
    sim.set_expires_at(api, "later", Some(unix_now() + 3600));
    for _ in 0..3 {
        for id in ["gone", "soon", "later"] {
            assert_eq!(poll(&gw, api, id, KEY_A).await.status, 200);
        }
    }
    assert_eq!(
        sim.fetch_calls_in(api, "gone"),
        3,
        "expired: every poll asks again"
    );
    assert_eq!(sim.fetch_calls_in(api, "soon"), 1);
    assert_eq!(sim.fetch_calls_in(api, "later"), 1);
    // Past `soon`'s expiry: one collapsed refetch, then its fresh answer (still expiring) again.
    sim.set_expires_at(api, "soon", Some(unix_now() + 3600));
    poll_until("the expired answer is refetched", || async {
        poll(&gw, api, "soon", KEY_A).await;
        sim.fetch_calls_in(api, "soon") == 2
    })
    .await;
    poll(&gw, api, "soon", KEY_A).await;
    assert_eq!(sim.fetch_calls_in(api, "soon"), 2);
}

#[tokio::test]
async fn a_family_can_cap_how_long_finished_tasks_are_kept() {
    let (sim, gw) = start("[families.luma]\nfinished_ttl = \"300ms\"\n").await;
    sim.create_task_in(Api::Luma, KEY_A, "l", "completed");
    poll(&gw, Api::Luma, "l", KEY_A).await;
    poll(&gw, Api::Luma, "l", KEY_A).await;
    assert_eq!(sim.fetch_calls_in(Api::Luma, "l"), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    poll(&gw, Api::Luma, "l", KEY_A).await;
    assert_eq!(sim.fetch_calls_in(Api::Luma, "l"), 2);
}

#[tokio::test]
async fn without_kept_files_the_openai_video_download_is_passed_through() {
    let (sim, gw) = start("").await;
    sim.create_task_in(Api::OpenAiVideos, KEY_A, "v", "completed");
    let status = poll(&gw, Api::OpenAiVideos, "v", KEY_A).await;
    assert_eq!(status.status, 200);
    for _ in 0..2 {
        let content = get(&gw, "/v1/videos/v/content", KEY_A).await;
        assert_eq!(content.status, 200);
        assert_eq!(content.header("content-type"), "video/mp4");
        assert_eq!(content.body.len(), 256 * 1024);
        assert!(
            content.headers.get("cache-status").is_none(),
            "not a cached route"
        );
    }
    let downloads = sim
        .requests()
        .iter()
        .filter(|r| r.uri == "/v1/videos/v/content")
        .count();
    assert_eq!(downloads, 2);
}

#[tokio::test]
async fn the_same_id_under_two_families_is_two_tasks() {
    let (sim, gw) = start("").await;
    sim.create_task_in(Api::Suno, KEY_A, "same", "SUCCESS");
    sim.create_task_in(Api::Luma, KEY_A, "same", "dreaming");
    let suno = poll(&gw, Api::Suno, "same", KEY_A).await;
    let luma = poll(&gw, Api::Luma, "same", KEY_A).await;
    assert_eq!(status_of(Api::Suno, &suno), "SUCCESS");
    assert_eq!(status_of(Api::Luma, &luma), "dreaming");
    assert_eq!(sim.fetch_calls_in(Api::Suno, "same"), 1);
    assert_eq!(sim.fetch_calls_in(Api::Luma, "same"), 1);
}

async fn suno_batch(gw: &Gateway, credential: &str, ids: &[&str]) -> Reply {
    batch_at(gw, "/suno/fetch", credential, ids).await
}

#[tokio::test]
async fn a_suno_batch_asks_the_upstream_only_for_the_ids_nobody_has() {
    let (sim, gw) = start("").await;
    for id in ["s1", "s2", "s3"] {
        sim.create_task_in(Api::Suno, KEY_A, id, "SUCCESS");
    }
    poll(&gw, Api::Suno, "s1", KEY_A).await;
    let first = suno_batch(&gw, KEY_A, &["s3", "s1", "s2", "missing"]).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        sim.batch_calls_in(Api::Suno),
        vec![vec!["s3", "s2", "missing"]]
    );
    let json = first.json();
    assert_eq!(json["code"], "success", "Suno's envelope");
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["s3", "s1", "s2"],
        "request order; the unknown id left out"
    );
    assert_eq!(first.cache_status(), "mjgate; fwd=partial; stored");

    // Every id is now a single fetch's hit too, and the batch a hit as a whole.
    let single = poll(&gw, Api::Suno, "s2", KEY_A).await;
    assert_eq!(single.json()["data"]["task_id"], "s2");
    assert_eq!(single.cache_status(), "mjgate; hit");
    assert_eq!(sim.fetch_calls_in(Api::Suno, "s2"), 0);
    let again = suno_batch(&gw, KEY_A, &["s1", "s2", "s3"]).await;
    assert_eq!(again.cache_status(), "mjgate; hit");
    assert_eq!(sim.batch_calls_in(Api::Suno).len(), 1);

    let none = suno_batch(&gw, KEY_B, &["s1"]).await;
    assert_eq!(
        none.json()["data"],
        serde_json::Value::Null,
        "none of key B's"
    );
}

#[tokio::test]
async fn a_suno_batch_with_new_apis_action_field_is_still_served_from_the_cache() {
    let (sim, gw) = start("").await;
    sim.create_task_in(Api::Suno, KEY_A, "s1", "SUCCESS");
    let body = r#"{"ids":["s1"],"action":"MUSIC"}"#;
    for _ in 0..2 {
        let reply = send(request(
            Method::POST,
            &gw.url("/suno/fetch"),
            Some(KEY_A),
            body,
        ))
        .await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(sim.batch_calls_in(Api::Suno).len(), 1);
}

#[tokio::test]
async fn a_long_poll_on_a_family_route_is_held_and_answers_304_or_the_change() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"100ms\"\n").await;
    sim.create_task_in(Api::VideoQuery, KEY_A, "q", "processing");
    let first = poll(&gw, Api::VideoQuery, "q", KEY_A).await;
    let tag = first.header("etag").to_owned();
    let long_poll = |wait: &'static str| {
        let mut request = request(
            Method::GET,
            &gw.url(&format!("/v1/video/query?id=q&wait={wait}")),
            Some(KEY_A),
            "",
        );
        request
            .headers_mut()
            .insert("if-none-match", tag.parse().unwrap());
        send(request)
    };
    let unchanged = long_poll("300ms").await;
    assert_eq!(unchanged.status, 304, "held for the wait, then nothing new");
    let (changed, ()) = tokio::join!(long_poll("10s"), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        sim.set_status_in(Api::VideoQuery, "q", "completed");
    });
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["status"], "completed");
    let upstream: Vec<String> = sim
        .requests()
        .iter()
        .map(|r| r.uri.clone())
        .filter(|uri| uri.starts_with("/v1/video/query"))
        .collect();
    assert!(
        upstream.iter().all(|uri| uri == "/v1/video/query?id=q"),
        "the upstream never sees wait=: {upstream:?}"
    );
}

#[tokio::test]
async fn a_family_status_route_streams_events_to_clients_that_ask() {
    let (sim, gw) = start("").await;
    sim.create_task_in(Api::Runway, KEY_A, "r", "RUNNING");
    let mut request = request(
        Method::GET,
        &gw.url("/runwayml/v1/tasks/r"),
        Some(KEY_A),
        "",
    );
    request
        .headers_mut()
        .insert("accept", "text/event-stream".parse().unwrap());
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.into_body();
    sim.set_status_in(Api::Runway, "r", "SUCCEEDED");
    let mut text = String::new();
    // An event may arrive in several chunks: read until the end event is whole.
    while !(text.contains("event: end") && text.ends_with("\n\n")) {
        let frame = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::BodyExt::frame(&mut body),
        )
        .await
        .expect("the stream ends")
        .unwrap()
        .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains("\"RUNNING\""), "{text}");
    assert!(text.contains(r#"data: {"status":"SUCCEEDED"}"#), "{text}");
}

#[tokio::test]
async fn stale_answers_and_backoff_cover_every_family() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"100ms\"\n").await;
    sim.create_task_in(Api::Kling, KEY_A, "k", "processing");
    assert_eq!(poll(&gw, Api::Kling, "k", KEY_A).await.status, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    sim.set_fault(Some(Fault::Status(503)));
    let stale = poll(&gw, Api::Kling, "k", KEY_A).await;
    assert_eq!(stale.status, 200);
    assert!(
        stale.cache_status().contains("fwd=stale"),
        "{}",
        stale.cache_status()
    );
    sim.set_fault(Some(Fault::RateLimited {
        retry_after: Some(30),
    }));
    sim.create_task_in(Api::Kling, KEY_A, "k2", "processing");
    let limited = poll(&gw, Api::Kling, "k2", KEY_A).await;
    assert_eq!(limited.status, 429);
    let calls = sim.total_calls();
    let backed_off = poll(&gw, Api::Kling, "k2", KEY_A).await;
    assert_eq!(backed_off.status, 429);
    assert_eq!(sim.total_calls(), calls, "backing off: not asked again");
}

#[tokio::test]
async fn a_provider_never_heard_of_is_a_few_lines_of_toml() {
    // Luma's route, described by an operator as their own provider.
    let extra = r#"
[families.luma]
enabled = false

[families.acme-video]
status_routes = ["/luma/generations/{id}"]
status_at = ["/state"]
id_at = ["/id"]
success = ["completed"]
not_found = [{ status = 404 }]
"#;
    let (sim, gw) = start(extra).await;
    sim.create_task_in(Api::Luma, KEY_A, "a", "completed");
    for _ in 0..3 {
        assert_eq!(poll(&gw, Api::Luma, "a", KEY_A).await.status, 200);
    }
    assert_eq!(sim.fetch_calls_in(Api::Luma, "a"), 1);
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value(
            "mjgate_task_lookups_total",
            &[("family", "acme-video"), ("cache", "hit")]
        ),
        2.0
    );
    assert!(!metrics.text.contains("family=\"luma\""), "turned off");
}

#[tokio::test]
async fn a_bad_family_description_is_refused_at_start_up_naming_the_key() {
    let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[families.acme]\nstatus_routes = [\"/acme/{id}\"]\nstatus_at = [\"state\"]\n";
    let error = mjgate::Config::from_toml(text, &Default::default()).unwrap_err();
    assert!(
        error.to_string().contains("`families.acme.status_at`"),
        "{error}"
    );
    let typo = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[families.suno]\nstatus_at_ = [\"/s\"]\n";
    let error = mjgate::Config::from_toml(typo, &Default::default()).unwrap_err();
    assert!(error.to_string().contains("families.suno"), "{error}");
}

#[tokio::test]
async fn replicas_share_family_answers_through_redis() {
    let redis = RedisServer::start();
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    let shared = format!(
        "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"0123456789abcdef0123456789abcdef\"\nkey_prefix = \"fam:\"\n",
        redis.url()
    );
    let one = start_gateway(config(&sim.url(), &shared)).await;
    let two = start_gateway(config(&sim.url(), &shared)).await;
    sim.create_task_in(Api::Suno, KEY_A, "s", "SUCCESS");
    sim.create_task_in(Api::Luma, KEY_A, "s", "completed");
    assert_eq!(poll(&one, Api::Suno, "s", KEY_A).await.status, 200);
    let from_redis = poll(&two, Api::Suno, "s", KEY_A).await;
    assert_eq!(from_redis.cache_status(), "mjgate; hit; detail=shared");
    assert_eq!(sim.fetch_calls_in(Api::Suno, "s"), 1);
    // Another family's task of the same id is not that answer.
    let luma = poll(&two, Api::Luma, "s", KEY_A).await;
    assert_eq!(luma.json()["state"], "completed");
    assert_eq!(sim.fetch_calls_in(Api::Luma, "s"), 1);
}

#[tokio::test]
async fn a_batch_answer_that_is_not_a_task_list_is_an_error_never_none_found() {
    let (sim, gw) = start("").await;
    sim.create_task_in(Api::Suno, KEY_A, "s1", "SUCCESS");
    sim.set_fault(Some(Fault::Html));
    let batch = suno_batch(&gw, KEY_A, &["s1"]).await;
    assert_eq!(batch.status, 502, "not `data: null`: {:?}", batch.body);
    let mj = crate::support::batch(&gw, KEY_A, &["t1"]).await;
    assert_eq!(mj.status, 502, "not `[]`");
    let single = poll(&gw, Api::Suno, "s1", KEY_A).await;
    assert_eq!(single.status, 200);
    assert_eq!(
        single.header("content-type"),
        "text/html",
        "passed on as it came"
    );
    sim.set_fault(None);
    let answer = poll(&gw, Api::Suno, "s1", KEY_A).await;
    assert_eq!(
        status_of(Api::Suno, &answer),
        "SUCCESS",
        "nothing was stored meanwhile"
    );
}

#[tokio::test]
async fn a_credential_the_gateway_cannot_see_is_never_served_from_the_cache() {
    let (sim, gw) = start("").await;
    for header in ["x-api-key", "api-key", "cookie", "proxy-authorization"] {
        let before = sim.total_calls();
        for key in ["k1", "k2"] {
            let mut request = request(Method::GET, &gw.url("/v1/videos/v"), None, "");
            request.headers_mut().insert(header, key.parse().unwrap());
            let reply = send(request).await;
            assert!(
                reply.headers.get("cache-status").is_none(),
                "{header}: passed through"
            );
        }
        assert_eq!(
            sim.total_calls(),
            before + 2,
            "{header}: each went upstream"
        );
    }
}
