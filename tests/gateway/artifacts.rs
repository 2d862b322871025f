//! Durable results: the store of kept files on a real S3 API server (moto), as replicas share it.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use mjgate::artifacts::store::{BlobId, BlobStore, MediaKind, S3Bucket};

use crate::support::*;

fn bucket(server: &S3Server, name: &str) -> S3Bucket {
    S3Bucket {
        endpoint: Some(server.endpoint()),
        bucket: name.to_owned(),
        region: "us-east-1".to_owned(),
        prefix: Some("mjgate".to_owned()),
        path_style: true,
        // moto takes any key; production reads AWS_ACCESS_KEY_ID and the rest from the environment.
        access_key: Some(("test".to_owned(), "test".to_owned())),
    }
}

fn body(
    data: &[u8],
    part: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin {
    let parts: Vec<Result<Bytes, String>> = data
        .chunks(part)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    futures_util::stream::iter(parts)
}

async fn read(blobs: &BlobStore, id: &BlobId, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut stream = blobs.read(id, range).await.expect("kept");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_bucket_keep_a_file_once_and_each_serves_it_whole_or_by_range() {
    let server = S3Server::start();
    server.create_bucket("results");
    let a = BlobStore::s3(&bucket(&server, "results"), 64 << 20).unwrap();
    let b = BlobStore::s3(&bucket(&server, "results"), 64 << 20).unwrap();
    // 12 MiB: more than two upload parts, streamed.
    let video: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let (id, len) = a.put(body(&video, 1 << 20), MediaKind::Mp4).await.unwrap();
    assert_eq!(len, video.len() as u64);
    assert_eq!(
        id,
        BlobId::new(*blake3::hash(&video).as_bytes(), MediaKind::Mp4)
    );
    // The other replica serves it, whole and by range, without downloading it again.
    assert_eq!(b.len(&id).await, Some(video.len() as u64));
    assert_eq!(read(&b, &id, None).await, video);
    assert_eq!(read(&b, &id, Some(5..1029)).await, &video[5..1029]);
    // The same file kept by the other replica (another credential's task) is the same blob.
    let (again, _) = b.put(body(&video, 3 << 20), MediaKind::Mp4).await.unwrap();
    assert_eq!(again, id);
    // Past the size cap: refused.
    let small = BlobStore::s3(&bucket(&server, "results"), 1 << 20).unwrap();
    assert!(
        small
            .put(body(&video, 1 << 20), MediaKind::Mp4)
            .await
            .is_err()
    );
    let unknown = BlobId::new([7; 32], MediaKind::Png);
    assert!(a.read(&unknown, None).await.is_none());
    assert_eq!(a.len(&unknown).await, None);
}

/// A downloader for tests: loopback allowed or not, short deadlines.
fn downloader(allow_private: bool) -> mjgate::artifacts::download::Downloader {
    let tls = mjgate::tls::client_config(mjgate::tls::Roots::Webpki, None).unwrap();
    mjgate::artifacts::download::Downloader::new(
        tls,
        mjgate::artifacts::download::Terms {
            allow_private,
            timeout: std::time::Duration::from_secs(10),
            idle: std::time::Duration::from_millis(500),
        },
    )
}

fn local_store(max_file: u64) -> (BlobStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "mjgate-artifacts-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    (BlobStore::local(&dir, 64 << 20, max_file).unwrap(), dir)
}

/// An origin that answers by path, as hostile or broken ones do: a page, an SVG, a redirect loop, a
/// body that stalls. Loopback only.
async fn hostile_origin() -> String {
    hostile_origin_counting().await.0
}

/// The same, with a count of the requests it had for `/busy` (always `503`).
async fn hostile_origin_counting() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&busy);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let n = socket.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let answer = match path.as_str() {
                    "/page" => "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 20\r\n\r\n<script>1</script>xx".to_owned(),
                    "/svg" => "HTTP/1.1 200 OK\r\nContent-Type: image/svg+xml\r\nContent-Length: 5\r\n\r\n<svg>".to_owned(),
                    "/loop" => "HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n".to_owned(),
                    "/stall" => "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n0123456789".to_owned(),
                    "/busy" => {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_owned()
                    }
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
                };
                let _ = socket.write_all(answer.as_bytes()).await;
                // Held open (a stalled body) until the downloader gives up.
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            });
        }
    });
    (origin, busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_link_is_downloaded_into_the_store_streamed_and_hashed() {
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.set_link_ttl(Some(std::time::Duration::from_secs(3600)));
    sim.create_task(KEY_A, "img", "SUCCESS");
    let link = image_link(&sim, "img").await;
    let (store, dir) = local_store(1 << 20);
    let (id, len) = downloader(true).fetch(&link, &store).await.unwrap();
    assert_eq!(len, 256 << 10);
    assert_eq!(id.kind(), MediaKind::Png);
    assert_eq!(sim.downloads("/attachments/img/img.png"), 1);
    assert_eq!(read(&store, &id, Some(0..4)).await.len(), 4);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_may_not_be_kept_is_refused_and_nothing_is_stored() {
    use mjgate::artifacts::download::DownloadError;
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.set_link_ttl(Some(std::time::Duration::from_secs(3600)));
    sim.create_task(KEY_A, "img", "SUCCESS");
    let link = image_link(&sim, "img").await;
    let (store, dir) = local_store(1 << 20);
    // An inside address, without allow_private: refused before any connection.
    let inside = downloader(false).fetch(&link, &store).await;
    assert!(
        matches!(inside, Err(DownloadError::Refused(_))),
        "{inside:?}"
    );
    assert_eq!(
        sim.downloads("/attachments/img/img.png"),
        0,
        "never connected"
    );
    // Past the size cap.
    let (small, small_dir) = local_store(1000);
    let large = downloader(true).fetch(&link, &small).await;
    assert!(
        large.as_ref().is_err_and(|e| e.cause() == "too_large"),
        "{large:?}"
    );
    // A link that expired answers 403: not kept, not worth trying again.
    sim.set_link_ttl(Some(std::time::Duration::ZERO));
    sim.create_task(KEY_A, "old", "SUCCESS");
    let expired = downloader(true)
        .fetch(&image_link(&sim, "old").await, &store)
        .await;
    assert!(
        matches!(&expired, Err(e @ DownloadError::Status(s)) if s.as_u16() == 403 && !e.is_transient()),
        "{expired:?}"
    );
    // Pages, SVG, redirect loops and stalled bodies from a hostile origin.
    let origin = hostile_origin().await;
    let get = |path: &str| format!("{origin}{path}");
    let d = downloader(true);
    for (path, cause) in [
        ("/page", "unsafe_type"),
        ("/svg", "unsafe_type"),
        ("/loop", "redirects"),
        ("/stall", "connection"),
        ("/missing", "status"),
    ] {
        let refused = d.fetch(&get(path), &store).await;
        assert!(
            refused.as_ref().is_err_and(|e| e.cause() == cause),
            "{path}: {refused:?}"
        );
    }
    assert_eq!(store.disk_used(), 0, "nothing was kept");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(small_dir);
}

/// The `imageUrl` of a finished task, straight from the simulator.
async fn image_link(sim: &mjgate::tools::simulator::Simulator, id: &str) -> String {
    let url = format!("{}/mj/task/{id}/fetch", sim.url());
    let answer = send(request(http::Method::GET, &url, Some(KEY_A), "")).await;
    answer.json()["imageUrl"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_file_is_served_at_its_token_with_ranges_and_a_bad_token_gets_a_json_404() {
    let redis = RedisServer::start();
    let secret = "0123456789abcdef0123456789abcdef";
    let dir = std::env::temp_dir().join(format!(
        "mjgate-files-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    // A file kept by an earlier run: indexed again when the gateway starts.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let id = {
        let store = BlobStore::local(&dir, 64 << 20, 1 << 20).unwrap();
        store
            .put(body(&data, 4096), MediaKind::Webp)
            .await
            .unwrap()
            .0
    };
    let (_sim, gw) = start(&format!(
        "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"{secret}\"\n[artifacts]\ndir = \"{}\"\n",
        redis.url(),
        dir.display()
    ))
    .await;
    // Its own secret, without a shared tier, keys the tokens as well.
    let (_sim2, own) = start(&format!(
        "[artifacts]\ndir = \"{}\"\nsecret = \"{secret}\"\n",
        dir.display()
    ))
    .await;
    // The gateway will issue such tokens as it rewrites answers; any holder of the secret can.
    let tokens = mjgate::artifacts::token::FileTokens::new(Some(secret.as_bytes()));
    let fingerprint = mjgate::credential::CredentialFingerprint::from_bytes([3; 16]);
    let url = gw.url(&format!(
        "/_mjgate/files/{}",
        tokens.issue(&id, &fingerprint, None)
    ));
    let whole = send(request(http::Method::GET, &url, None, "")).await;
    assert_eq!(whole.status, 200);
    let path = url.trim_start_matches(&gw.url(""));
    let again = send(request(http::Method::GET, &own.url(path), None, "")).await;
    assert_eq!(
        again.status, 200,
        "the same token opens on a gateway with the same secret"
    );
    assert_eq!(again.body, whole.body);
    assert_eq!(whole.body.as_ref(), data.as_slice());
    assert_eq!(whole.header("content-type"), "image/webp");
    assert_eq!(whole.header("x-content-type-options"), "nosniff");
    let mut ranged = request(http::Method::GET, &url, None, "");
    ranged
        .headers_mut()
        .insert("range", "bytes=99990-".parse().unwrap());
    let part = send(ranged).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body.as_ref(), &data[99_990..]);
    let mut past = request(http::Method::GET, &url, None, "");
    past.headers_mut()
        .insert("range", "bytes=100000-".parse().unwrap());
    let past = send(past).await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), "bytes */100000");
    assert_eq!(past.json()["type"], "mjgate_error");
    // A token nobody issued, a forged one, and a path trick (refused before routing).
    for (bad, status) in [
        ("nope", 404),
        (&*"A".repeat(87), 404),
        ("../../etc/passwd", 400),
    ] {
        let answer = send(request(
            http::Method::GET,
            &gw.url(&format!("/_mjgate/files/{bad}")),
            None,
            "",
        ))
        .await;
        assert_eq!(answer.status, status, "{bad}");
        assert_eq!(answer.json()["type"], "mjgate_error", "{bad}");
    }
    let post = send(request(http::Method::POST, &url, None, "")).await;
    assert_eq!(post.status, 405);
    let m = scrape(&gw).await;
    let served = |answer: &str| m.value("mjgate_artifacts_served_total", &[("answer", answer)]);
    assert_eq!(served("whole"), 1.0);
    assert_eq!(served("range"), 1.0);
    assert_eq!(served("unsatisfiable"), 1.0);
    assert_eq!(
        served("not_found"),
        2.0,
        "the path trick never reached the route"
    );
    assert_eq!(
        m.value("mjgate_artifacts_disk_bytes", &[]),
        data.len() as f64
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_first_requests_for_one_file_cause_one_download_and_failures_are_tried_as_they_deserve()
 {
    use mjgate::artifacts::mirror::{ATTEMPTS, Mirror};
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.set_link_ttl(Some(std::time::Duration::from_secs(3600)));
    sim.create_task(KEY_A, "img", "SUCCESS");
    let link = image_link(&sim, "img").await;
    let (store, dir) = local_store(1 << 20);
    let mirror = Arc::new(Mirror::new(
        downloader(true),
        Arc::new(store),
        4,
        1000,
        std::time::Duration::from_millis(10),
    ));
    let all = futures_util::future::join_all((0..50).map(|_| {
        let mirror = Arc::clone(&mirror);
        let link = link.clone();
        tokio::spawn(async move { mirror.keep(&link).await })
    }))
    .await;
    let ids: Vec<BlobId> = all.into_iter().map(|r| r.unwrap().unwrap().0).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one file");
    assert_eq!(
        sim.downloads("/attachments/img/img.png"),
        1,
        "one origin download"
    );
    assert_eq!(mirror.known(&link).map(|k| k.0), Some(ids[0].clone()));
    mirror.keep(&link).await.unwrap();
    assert_eq!(
        sim.downloads("/attachments/img/img.png"),
        1,
        "answered from memory"
    );

    // A transient failure is tried ATTEMPTS times, then again on the next request.
    let (origin, busy) = hostile_origin_counting().await;
    let flaky = format!("{origin}/busy");
    assert!(mirror.keep(&flaky).await.is_err());
    assert_eq!(
        busy.load(std::sync::atomic::Ordering::SeqCst),
        ATTEMPTS as usize
    );
    assert!(mirror.keep(&flaky).await.is_err());
    assert_eq!(
        busy.load(std::sync::atomic::Ordering::SeqCst),
        2 * ATTEMPTS as usize
    );
    // A failure for good (an unsafe type) is tried once and then remembered.
    let page = format!("{origin}/page");
    assert!(mirror.keep(&page).await.is_err());
    let again = mirror.keep(&page).await.unwrap_err();
    assert_eq!(again.cause(), "unsafe_type");
    let _ = std::fs::remove_dir_all(dir);
}

fn temp_dir(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "mjgate-{what}-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_tasks_image_is_served_by_the_gateway_after_the_upstreams_link_expired() {
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    // Links signed as Discord's, dying 2 s after their task was made.
    sim.set_link_ttl(Some(std::time::Duration::from_secs(2)));
    sim.create_task(KEY_A, "ab", "SUCCESS");
    // Asked for only once its link has died.
    sim.create_task(KEY_A, "late", "SUCCESS");
    let dir = temp_dir("kept");
    // Nothing but the upstream and a directory: kept files are on by default, and the simulator's
    // links sit beside the upstream the operator configured (loopback, allowed for that reason).
    let gw = start_gateway(config(
        &sim.url(),
        &format!("[artifacts]\ndir = \"{}\"\n", dir.display()),
    ))
    .await;

    let first = fetch(&gw, "ab", KEY_A).await;
    let upstream_link = first.json()["imageUrl"].as_str().unwrap().to_owned();
    assert!(
        upstream_link.starts_with(&sim.url()),
        "until the file is kept, the answer keeps the upstream's link: {upstream_link}"
    );
    wait_for_metric(&gw, "mjgate_artifacts_rewritten_total", 1.0).await;
    let kept = fetch(&gw, "ab", KEY_A).await;
    assert_eq!(kept.cache_status(), "mjgate; hit");
    let link = kept.json()["imageUrl"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&gw.url("/_mjgate/files/")) && link.ends_with(".png"),
        "{link}"
    );
    let mut expected = first.json();
    expected["imageUrl"] = link.clone().into();
    assert_eq!(kept.json(), expected, "only the link changed");

    let path = upstream_link.split('?').next().unwrap()[sim.url().len()..].to_owned();
    assert_eq!(sim.downloads(&path), 1, "the upstream served the file once");
    // The upstream's link dies (the test's own looks download it until then)...
    poll_until("the upstream's link expired", || async {
        send(request(http::Method::GET, &upstream_link, None, ""))
            .await
            .status
            == 403
    })
    .await;
    let downloads = sim.downloads(&path);
    // ... and the cached answer, its link the gateway's, is still served, its image with it.
    let later = fetch(&gw, "ab", KEY_A).await;
    assert_eq!(later.json()["imageUrl"], link.as_str());
    let image = send(request(http::Method::GET, &link, None, "")).await;
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), "image/png");
    assert_eq!(image.body.len(), 256 * 1024);
    assert_eq!(
        sim.downloads(&path),
        downloads,
        "served from the gateway's store"
    );

    // A link dead before the gateway saw it: not kept, the answer keeps it, the failure is counted.
    let late = fetch(&gw, "late", KEY_A).await;
    assert!(
        late.json()["imageUrl"]
            .as_str()
            .unwrap()
            .starts_with(&sim.url())
    );
    poll_until("the dead link's failure counted", || async {
        scrape(&gw)
            .await
            .value("mjgate_artifacts_failures_total", &[("cause", "status")])
            == 1.0
    })
    .await;

    // Another credential's task whose image has the very same bytes ("ab" and "ba" sum alike):
    // its own token, one file on disk.
    sim.create_task(KEY_B, "ba", "SUCCESS");
    fetch(&gw, "ba", KEY_B).await;
    wait_for_metric(&gw, "mjgate_artifacts_rewritten_total", 2.0).await;
    let other = fetch(&gw, "ba", KEY_B).await.json()["imageUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(other.starts_with(&gw.url("/_mjgate/files/")), "{other}");
    assert_ne!(other, link, "one credential's token never names another's");
    let m = scrape(&gw).await;
    assert_eq!(m.value("mjgate_artifacts_stored_total", &[]), 2.0);
    assert_eq!(
        m.value("mjgate_artifacts_disk_bytes", &[]),
        (256 * 1024) as f64,
        "content-addressed: stored once"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hooks_finished_event_and_a_batch_carry_the_gateways_links_under_its_public_url() {
    let receiver = Receiver::start(&[]).await;
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.set_link_ttl(Some(std::time::Duration::from_secs(3600)));
    sim.set_task_duration(std::time::Duration::from_millis(600));
    let dir = temp_dir("hooked");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Clients reach the gateway by another name than the one this test dials.
    let public = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let gw = start_gateway_on(
        listener,
        config(
            &sim.url(),
            &format!(
                "[cache]\nin_progress_ttl = \"200ms\"\n[webhooks]\nsecret = \"{SECRET}\"\nallow_private = true\n[artifacts]\ndir = \"{}\"\npublic_url = \"{public}/\"\n",
                dir.display()
            ),
        ),
    );
    let body = serde_json::json!({"prompt": "a cat", "notifyHook": receiver.url()}).to_string();
    let submitted = send(request(
        http::Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(KEY_A),
        &body,
    ))
    .await;
    let id = submitted.json()["result"].as_str().unwrap().to_owned();
    let finished = receiver.wait_for_status("SUCCESS").await;
    let hooked = finished.last().unwrap().json()["imageUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        hooked.starts_with(&format!("{public}/_mjgate/files/")),
        "the finished event waited for the kept file: {hooked}"
    );
    let fetched = fetch(&gw, &id, KEY_A).await;
    assert_eq!(fetched.json()["imageUrl"], hooked.as_str());
    let listed = batch(&gw, KEY_A, &[&id]).await;
    assert_eq!(listed.json()[0]["imageUrl"], hooked.as_str());
    let image = send(request(http::Method::GET, &hooked, None, "")).await;
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), "image/png");
    assert_eq!(
        image.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_link_to_an_inside_address_is_never_connected_to_and_the_answer_keeps_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // An inside address that is not the upstream: every connection to it counted.
    let inside = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inside_url = format!("http://{}/secret.png", inside.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while inside.accept().await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    // The upstream's answer names it where the operator's family says results are.
    sim.set_prompt("t", &inside_url);
    let dir = temp_dir("inside");
    let gw = start_gateway(config(
        &sim.url(),
        &format!(
            "[families.midjourney]\nresults = [\"/prompt\"]\n[artifacts]\ndir = \"{}\"\n",
            dir.display()
        ),
    ))
    .await;
    let first = fetch(&gw, "t", KEY_A).await;
    assert_eq!(first.json()["prompt"], inside_url.as_str());
    poll_until("the refusal counted", || async {
        scrape(&gw)
            .await
            .value("mjgate_artifacts_failures_total", &[("cause", "refused")])
            == 1.0
    })
    .await;
    let again = fetch(&gw, "t", KEY_A).await;
    assert_eq!(
        again.json()["prompt"],
        inside_url.as_str(),
        "the answer keeps the upstream's link"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0, "never connected to");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_video_download_is_kept_per_credential_and_variant_and_outlives_expires_at() {
    use mjgate::tools::simulator::Api;
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.create_task_in(Api::OpenAiVideos, KEY_A, "v", "completed");
    let dir = temp_dir("videos");
    let gw = start_gateway(config(
        &sim.url(),
        &format!("[artifacts]\ndir = \"{}\"\n", dir.display()),
    ))
    .await;
    let video = "/v1/videos/v/content?variant=video";
    // Ten at once: one upstream download.
    let first: Vec<Reply> =
        futures_util::future::join_all((0..10).map(|_| get(&gw, "/v1/videos/v/content", KEY_A)))
            .await;
    for answer in &first {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-type"), "video/mp4");
        assert_eq!(answer.body.len(), 256 * 1024);
        assert_eq!(
            answer.header("cache-control"),
            "private, max-age=31536000, immutable"
        );
    }
    assert_eq!(sim.downloads(video), 1);
    // A range, from the store.
    let mut ranged = request(
        http::Method::GET,
        &gw.url("/v1/videos/v/content"),
        Some(KEY_A),
        "",
    );
    ranged
        .headers_mut()
        .insert("range", "bytes=0-99".parse().unwrap());
    let part = send(ranged).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, first[0].body.slice(0..100));
    assert_eq!(sim.downloads(video), 1);
    let head = send(request(
        http::Method::HEAD,
        &gw.url("/v1/videos/v/content"),
        Some(KEY_A),
        "",
    ))
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), (256 * 1024).to_string());
    let mut again = request(
        http::Method::GET,
        &gw.url("/v1/videos/v/content"),
        Some(KEY_A),
        "",
    );
    again
        .headers_mut()
        .insert("if-none-match", first[0].header("etag").parse().unwrap());
    assert_eq!(send(again).await.status, 304);
    // Another variant is another file.
    let thumbnail = get(&gw, "/v1/videos/v/content?variant=thumbnail", KEY_A).await;
    assert_eq!(thumbnail.header("content-type"), "image/webp");
    assert_eq!(sim.downloads("/v1/videos/v/content?variant=thumbnail"), 1);
    // Another credential is not the owner: the upstream's refusal, as it came, nothing kept for it.
    let stranger = get(&gw, "/v1/videos/v/content", KEY_B).await;
    assert_eq!(stranger.status, 404);
    assert_eq!(stranger.json()["error"]["message"], "Video not found.");
    // The upstream's copy expires; the gateway's does not.
    sim.set_expires_at(Api::OpenAiVideos, "v", Some(1));
    let expired = send(request(
        http::Method::GET,
        &format!("{}/v1/videos/v/content", sim.url()),
        Some(KEY_A),
        "",
    ))
    .await;
    assert_eq!(expired.status, 404, "the upstream's copy is gone");
    let later = get(&gw, "/v1/videos/v/content", KEY_A).await;
    assert_eq!(later.status, 200);
    assert_eq!(later.body, first[0].body);
    assert_eq!(
        sim.downloads(video),
        1,
        "the upstream served the video once"
    );
    let m = scrape(&gw).await;
    let served = |answer: &str| m.value("mjgate_artifacts_served_total", &[("answer", answer)]);
    assert_eq!(served("range"), 1.0);
    assert_eq!(served("head"), 1.0);
    assert_eq!(served("not_modified"), 1.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_redis_and_one_bucket_download_a_file_once_and_both_serve_it() {
    let redis = RedisServer::start();
    let server = S3Server::start();
    server.create_bucket("shared-results");
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.set_link_ttl(Some(std::time::Duration::from_secs(3600)));
    sim.create_task(KEY_A, "t", "SUCCESS");
    let text = format!(
        "[shared_cache]\nredis_url = \"{}\"\nfingerprint_secret = \"0123456789abcdef0123456789abcdef\"\n\
         [artifacts.s3]\nbucket = \"shared-results\"\nendpoint = \"{}\"\npath_style = true\nprefix = \"mj\"\n\
         access_key_id = \"test\"\nsecret_access_key = \"test\"\n",
        redis.url(),
        server.endpoint()
    );
    let a = start_gateway(config(&sim.url(), &text)).await;
    let b = start_gateway(config(&sim.url(), &text)).await;
    // Both see the task finished at once (one upstream call between them: the tier's lease), and
    // both keep its image.
    let (first_a, first_b) = tokio::join!(fetch(&a, "t", KEY_A), fetch(&b, "t", KEY_A));
    assert_eq!(first_a.status, 200);
    assert_eq!(first_b.status, 200);
    wait_for_metric(&a, "mjgate_artifacts_rewritten_total", 1.0).await;
    wait_for_metric(&b, "mjgate_artifacts_rewritten_total", 1.0).await;
    assert_eq!(
        sim.downloads("/attachments/t/t.png"),
        1,
        "one replica downloaded the file"
    );
    let stored = scrape(&a).await.value("mjgate_artifacts_stored_total", &[])
        + scrape(&b).await.value("mjgate_artifacts_stored_total", &[]);
    assert_eq!(stored, 1.0);
    for gw in [&a, &b] {
        let link = fetch(gw, "t", KEY_A).await.json()["imageUrl"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(link.starts_with(&gw.url("/_mjgate/files/")), "{link}");
        let image = send(request(http::Method::GET, &link, None, "")).await;
        assert_eq!(image.status, 200);
        assert_eq!(image.body.len(), 256 * 1024);
        // The token opens on the other replica too: one secret, one bucket.
        let path = &link[gw.url("").len()..];
        let other = if std::ptr::eq(gw, &a) { &b } else { &a };
        let there = send(request(http::Method::GET, &other.url(path), None, "")).await;
        assert_eq!(there.status, 200);
        assert_eq!(there.body, image.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_familys_files_are_linked_at_once_and_downloaded_when_first_opened() {
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.set_link_ttl(Some(std::time::Duration::from_secs(2)));
    sim.create_task(KEY_A, "t", "SUCCESS");
    let dir = temp_dir("lazy");
    let gw = start_gateway(config(
        &sim.url(),
        &format!(
            "[families.midjourney]\nartifacts = \"lazy\"\n[artifacts]\ndir = \"{}\"\n",
            dir.display()
        ),
    ))
    .await;
    // The very first answer links already.
    let link = fetch(&gw, "t", KEY_A).await.json()["imageUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        link.starts_with(&gw.url("/_mjgate/files/")) && link.ends_with(".png"),
        "linked at once: {link}"
    );
    assert_eq!(
        fetch(&gw, "t", KEY_A).await.json()["imageUrl"],
        link.as_str()
    );
    assert_eq!(
        sim.downloads("/attachments/t/t.png"),
        0,
        "nothing downloaded yet"
    );
    // Ten clients open it at once: one download.
    let opened: Vec<Reply> = futures_util::future::join_all(
        (0..10).map(|_| send(request(http::Method::GET, &link, None, ""))),
    )
    .await;
    for image in &opened {
        assert_eq!(image.status, 200);
        assert_eq!(image.header("content-type"), "image/png");
        assert_eq!(image.body.len(), 256 * 1024);
    }
    assert_eq!(sim.downloads("/attachments/t/t.png"), 1);

    // A task whose link dies before anyone opens it: a clear 502, never a broken image.
    sim.create_task(KEY_A, "u", "SUCCESS");
    let unopened = batch(&gw, KEY_A, &["u"]).await.json()[0]["imageUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let direct = image_link(&sim, "u").await;
    poll_until("the upstream's link expired", || async {
        send(request(http::Method::GET, &direct, None, ""))
            .await
            .status
            == 403
    })
    .await;
    let late = send(request(http::Method::GET, &unopened, None, "")).await;
    assert_eq!(late.status, 502);
    assert_eq!(late.json()["type"], "mjgate_error");
    let _ = std::fs::remove_dir_all(dir);
}

/// A fetch of `id` as `credential`, the request naming the gateway `host`.
async fn fetch_as_host(gw: &Gateway, id: &str, credential: &str, host: &str) -> Reply {
    let mut asked = request(
        http::Method::GET,
        &gw.url(&format!("/mj/task/{id}/fetch")),
        Some(credential),
        "",
    );
    asked.headers_mut().insert("host", host.parse().unwrap());
    send(asked).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_follow_the_name_each_client_used_and_no_client_picks_anothers() {
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.create_task(KEY_B, "u", "SUCCESS");
    let dir = temp_dir("hosts");
    let gw = start_gateway(config(
        &sim.url(),
        &format!("[artifacts]\ndir = \"{}\"\n", dir.display()),
    ))
    .await;
    let port = gw.addr.port();
    // The first to see it finished names the gateway as it pleases...
    fetch_as_host(&gw, "t", KEY_A, "attacker.example").await;
    wait_for_metric(&gw, "mjgate_artifacts_rewritten_total", 1.0).await;
    let theirs = fetch_as_host(&gw, "t", KEY_A, "attacker.example")
        .await
        .json()["imageUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        theirs.starts_with("http://attacker.example/_mjgate/files/"),
        "{theirs}"
    );
    // ... and every other client gets the link on the name it used itself.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let link = fetch_as_host(&gw, "t", KEY_A, &host).await.json()["imageUrl"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            link,
            theirs.replace("attacker.example", &host),
            "the same token, on {host}"
        );
        let image = send(request(http::Method::GET, &link, None, "")).await;
        assert_eq!(image.status, 200);
    }
    let listed = {
        let mut asked = request(
            http::Method::POST,
            &gw.url("/mj/task/list-by-condition"),
            Some(KEY_A),
            r#"{"ids":["t"]}"#,
        );
        asked
            .headers_mut()
            .insert("host", format!("localhost:{port}").parse().unwrap());
        send(asked).await
    };
    assert!(
        listed.json()[0]["imageUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://localhost:{port}/_mjgate/files/"))
    );

    // A client whose Host is no name to build on: its task keeps the upstream's link (never
    // another client's name), and is kept once a client with a usable one asks.
    let bad = fetch_as_host(&gw, "u", KEY_B, "evil\"><script>").await;
    assert!(
        bad.json()["imageUrl"]
            .as_str()
            .unwrap()
            .starts_with(&sim.url())
    );
    let still = fetch_as_host(&gw, "u", KEY_B, "evil\"><script>").await;
    assert!(
        still.json()["imageUrl"]
            .as_str()
            .unwrap()
            .starts_with(&sim.url()),
        "not on attacker.example, nor on anyone's name: {}",
        still.json()["imageUrl"]
    );
    fetch_as_host(&gw, "u", KEY_B, &format!("127.0.0.1:{port}")).await;
    wait_for_metric(&gw, "mjgate_artifacts_rewritten_total", 2.0).await;
    let kept = fetch_as_host(&gw, "u", KEY_B, &format!("127.0.0.1:{port}")).await;
    assert!(
        kept.json()["imageUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://127.0.0.1:{port}/_mjgate/files/"))
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_files_link_outlives_a_restart_without_a_configured_secret() {
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    let dir = temp_dir("restart");
    let text = format!("[artifacts]\ndir = \"{}\"\n", dir.display());
    let before = start_gateway(config(&sim.url(), &text)).await;
    fetch(&before, "t", KEY_A).await;
    wait_for_metric(&before, "mjgate_artifacts_rewritten_total", 1.0).await;
    let link = fetch(&before, "t", KEY_A).await.json()["imageUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = link[before.url("").len()..].to_owned();
    before.shutdown().await;
    // The key of its tokens was kept beside the files, readable by this user only.
    let key = std::fs::metadata(dir.join("token.key")).unwrap();
    assert_eq!(key.len(), 32);
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o077,
        0
    );
    let after = start_gateway(config(&sim.url(), &text)).await;
    let image = send(request(http::Method::GET, &after.url(&path), None, "")).await;
    assert_eq!(image.status, 200, "the old link opens after the restart");
    assert_eq!(sim.downloads("/attachments/t/t.png"), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_budget_evicts_the_least_recently_used_file_and_its_link_keeps_it_again() {
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.set_link_ttl(Some(std::time::Duration::from_secs(3600)));
    let dir = temp_dir("budget");
    // Room for three 256 KiB images, and a little.
    let gw = start_gateway(config(
        &sim.url(),
        &format!(
            "[artifacts]\ndir = \"{}\"\nmax_disk = \"1MiB\"\nmax_file = \"1MiB\"\n",
            dir.display()
        ),
    ))
    .await;
    let mut links = Vec::new();
    for (n, id) in ["t0", "t1", "t2", "t3", "t4"].into_iter().enumerate() {
        sim.create_task(KEY_A, id, "SUCCESS");
        fetch(&gw, id, KEY_A).await;
        wait_for_metric(&gw, "mjgate_artifacts_rewritten_total", (n + 1) as f64).await;
        links.push(
            fetch(&gw, id, KEY_A).await.json()["imageUrl"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        if n == 0 {
            continue;
        }
        // t0 is opened after every newer one: the most recently used, never the one evicted.
        assert_eq!(
            send(request(http::Method::GET, &links[0], None, ""))
                .await
                .status,
            200
        );
    }
    let m = scrape(&gw).await;
    assert!(m.value("mjgate_artifacts_evictions_total", &[]) >= 1.0);
    assert!(m.value("mjgate_artifacts_disk_bytes", &[]) <= (1 << 20) as f64);
    assert_eq!(sim.downloads("/attachments/t0/t0.png"), 1, "t0 stayed");
    // t1 went first; its link keeps it again from the upstream's (still living) link.
    let evicted = send(request(http::Method::GET, &links[1], None, "")).await;
    assert_eq!(evicted.status, 200);
    assert_eq!(evicted.body.len(), 256 * 1024);
    assert_eq!(sim.downloads("/attachments/t1/t1.png"), 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_keeps_nothing_and_fetches_keep_working() {
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let sim = mjgate::tools::simulator::Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    let gw = start_gateway(config(
        &sim.url(),
        &format!(
            "[artifacts.s3]\nbucket = \"gone\"\nendpoint = \"{endpoint}\"\npath_style = true\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n"
        ),
    ))
    .await;
    let first = fetch(&gw, "t", KEY_A).await;
    assert_eq!(first.status, 200);
    let link = first.json()["imageUrl"].as_str().unwrap().to_owned();
    // Three attempts, each with the store client's own bounded retries: seconds, so not
    // `poll_until`'s 10 s.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let m = scrape(&gw).await;
        if m.value("mjgate_artifacts_failures_total", &[("cause", "store")])
            + m.value(
                "mjgate_artifacts_failures_total",
                &[("cause", "connection")],
            )
            >= 1.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failure was never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = fetch(&gw, "t", KEY_A).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.json()["imageUrl"],
        link.as_str(),
        "the upstream's link stays"
    );
    assert_eq!(
        scrape(&gw)
            .await
            .value("mjgate_artifacts_rewritten_total", &[]),
        0.0
    );
}
