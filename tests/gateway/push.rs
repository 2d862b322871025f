//! Beyond polling: long-polls (`fetch?wait=`) and server-sent events (`/events`) see every change of a
//! task, while the upstream is polled at most once per task per TTL window however many clients watch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::conditional::fetch_if_none_match;
use crate::support::*;

const TTL: &str = "[cache]\nin_progress_ttl = \"300ms\"\n";

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    name: String,
    id: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// An open event stream, read event by event.
struct EventStream {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Incoming,
    buffer: BytesMut,
}

impl EventStream {
    async fn open(
        client: &Client<HttpConnector, Full<Bytes>>,
        gateway: &Gateway,
        id: &str,
        credential: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let mut request = request(
            Method::GET,
            &gateway.url(&format!("/mj/task/{id}/events")),
            Some(credential),
            "",
        );
        if let Some(last) = last_event_id {
            request
                .headers_mut()
                .insert("last-event-id", last.parse().unwrap());
        }
        let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
            .await
            .expect("stream head in time")
            .expect("stream opens");
        let (parts, body) = response.into_parts();
        EventStream {
            status: parts.status,
            headers: parts.headers,
            body,
            buffer: BytesMut::new(),
        }
    }

    /// The next event (heartbeat comments skipped); `None` once the stream has closed.
    async fn next(&mut self) -> Option<Event> {
        loop {
            let text = self.next_block().await?;
            let mut event = Event {
                name: String::new(),
                id: None,
                data: String::new(),
            };
            let mut data = Vec::new();
            for line in text.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event.name = name.to_owned();
                } else if let Some(id) = line.strip_prefix("id: ") {
                    event.id = Some(id.to_owned());
                } else if let Some(line) = line.strip_prefix("data: ") {
                    data.push(line);
                }
            }
            if event.name.is_empty() {
                continue; // a comment (heartbeat)
            }
            event.data = data.join("\n");
            return Some(event);
        }
    }

    /// The next block up to a blank line, as sent: an event or a comment.
    async fn next_block(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block = self.buffer.split_to(end + 2);
                return Some(String::from_utf8(block.to_vec()).unwrap());
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("an event in time");
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                _ => return None,
            }
        }
    }
}

fn h1() -> Client<HttpConnector, Full<Bytes>> {
    client()
}

async fn long_poll(gateway: &Gateway, id: &str, credential: &str, tag: &str, wait: &str) -> Reply {
    let url = gateway.url(&format!("/mj/task/{id}/fetch?wait={wait}"));
    let mut request = request(Method::GET, &url, Some(credential), "");
    request
        .headers_mut()
        .insert("if-none-match", tag.parse().unwrap());
    send(request).await
}

#[tokio::test]
async fn a_long_poll_answers_at_once_without_a_tag_with_an_old_tag_or_for_a_finished_task() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    sim.create_task(KEY_A, "done", "SUCCESS");
    let plain = get(&gw, "/mj/task/busy/fetch?wait=30s", KEY_A).await;
    assert_eq!(
        plain.status, 200,
        "no If-None-Match: the current state, now"
    );
    assert_eq!(plain.json()["id"], "busy");

    let old = long_poll(&gw, "busy", KEY_A, "\"an-older-state\"", "30s").await;
    assert_eq!(old.status, 200);
    assert_eq!(old.header("etag"), plain.header("etag"));

    let tag = fetch(&gw, "done", KEY_A).await.header("etag").to_owned();
    let finished = long_poll(&gw, "done", KEY_A, &tag, "30s").await;
    assert_eq!(finished.status, 304, "terminal: nothing to wait for");
    assert_eq!(
        scrape(&gw).await.value("mjgate_watchers", &[]),
        0.0,
        "no poller was started for any of them"
    );
}

#[tokio::test]
async fn a_long_poll_returns_the_new_state_when_the_task_changes() {
    let (sim, gw) = start(TTL).await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    sim.set_progress("t", "10%");
    let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();

    let started = Instant::now();
    let gw = Arc::new(gw);
    let held = {
        let gw = Arc::clone(&gw);
        let tag = tag.clone();
        tokio::spawn(async move { long_poll(&gw, "t", KEY_A, &tag, "30s").await })
    };
    wait_for_metric(&gw, "mjgate_open_long_polls", 1.0).await;
    sim.set_progress("t", "60%");
    let reply = held.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["progress"], "60%");
    assert_ne!(
        reply.header("etag"),
        tag,
        "the change, not the wait's end (a 304)"
    );
    // The initial fetch, then one poll per TTL until the change was seen.
    let windows = started.elapsed().as_millis() / 300 + 2;
    assert!(u128::from(sim.fetch_calls("t")) <= windows);
    wait_for_metric(&gw, "mjgate_open_long_polls", 0.0).await;
}

#[tokio::test]
async fn a_long_poll_times_out_with_304_when_nothing_changes() {
    let (sim, gw) = start(TTL).await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();
    let reply = long_poll(&gw, "t", KEY_A, &tag, "1s").await;
    assert_eq!(reply.status, 304);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("etag"), tag);
    assert_eq!(
        scrape(&gw)
            .await
            .value("mjgate_not_modified_total", &[("route", "long_poll")]),
        1.0
    );
}

#[tokio::test]
async fn a_bad_wait_is_refused_and_the_maximum_bounds_a_long_one() {
    let (sim, gw) = start("[watch]\nmax_wait = \"500ms\"\n").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let bad = get(&gw, "/mj/task/t/fetch?wait=soon", KEY_A).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["description"].as_str().unwrap().contains("wait"));

    let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();
    let reply = long_poll(&gw, "t", KEY_A, &tag, "1h").await;
    assert_eq!(reply.status, 304, "held for watch.max_wait, not an hour");
}

#[tokio::test]
async fn an_event_stream_sends_every_change_in_order_and_closes_at_the_end() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"200ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUBMITTED");
    let client = h1();
    let mut stream = EventStream::open(&client, &gw, "t", KEY_A, None).await;
    assert_eq!(stream.status, 200);
    assert!(
        stream.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    let first = stream.next().await.unwrap();
    assert_eq!(first.name, "status");
    assert_eq!(first.json()["status"], "SUBMITTED");
    assert!(first.id.is_some());

    let mut seen = vec![first.clone()];
    for (change, expected) in [
        ("IN_PROGRESS", ("status", "IN_PROGRESS", None)),
        ("75%", ("progress", "IN_PROGRESS", Some("75%"))),
        ("SUCCESS", ("status", "SUCCESS", None)),
    ] {
        if change.ends_with('%') {
            sim.set_progress("t", change);
        } else {
            sim.set_status("t", change);
        }
        let event = stream.next().await.expect("one event per change");
        assert_eq!(event.name, expected.0, "{event:?}");
        assert_eq!(event.json()["status"], expected.1);
        if let Some(progress) = expected.2 {
            assert_eq!(event.json()["progress"], progress);
        }
        assert_ne!(event.id, seen.last().unwrap().id, "a new ETag per change");
        seen.push(event);
    }
    let end = stream.next().await.unwrap();
    assert_eq!(end.name, "end");
    assert_eq!(end.json()["status"], "SUCCESS");
    assert!(
        stream.next().await.is_none(),
        "the stream closes at the end"
    );

    // The event ids are the ETags a fetch gives.
    assert_eq!(
        Some(fetch(&gw, "t", KEY_A).await.header("etag").to_owned()),
        seen.last().unwrap().id
    );
    wait_for_metric(&gw, "mjgate_watchers", 0.0).await;
    let metrics = scrape(&gw).await;
    assert_eq!(
        metrics.value("mjgate_events_sent_total", &[("event", "status")]),
        3.0
    );
    assert_eq!(
        metrics.value("mjgate_events_sent_total", &[("event", "progress")]),
        1.0
    );
}

#[tokio::test]
async fn watches_past_watch_max_memory_hold_no_answer_of_their_own_and_still_see_every_change() {
    for (config, holds) in [
        ("[cache]\nin_progress_ttl = \"200ms\"\n", true),
        (
            "[cache]\nin_progress_ttl = \"200ms\"\n[watch]\nmax_memory = \"0\"\n",
            false,
        ),
    ] {
        let (sim, gw) = start(config).await;
        sim.create_task(KEY_A, "t", "IN_PROGRESS");
        let client = h1();
        let mut stream = EventStream::open(&client, &gw, "t", KEY_A, None).await;
        assert_eq!(stream.next().await.unwrap().json()["status"], "IN_PROGRESS");
        wait_for_metric(&gw, "mjgate_watchers", 1.0).await;
        let held = scrape(&gw).await.value("mjgate_watch_held_bytes", &[]);
        assert_eq!(held > 0.0, holds, "{config}: {held} bytes held");
        sim.set_progress("t", "40%");
        let progress = stream.next().await.unwrap();
        assert_eq!(progress.name, "progress");
        assert_eq!(progress.json()["progress"], "40%");
        let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();
        let waiting = {
            let url = gw.url("/mj/task/t/fetch?wait=10s");
            let mut request = request(Method::GET, &url, Some(KEY_A), "");
            request
                .headers_mut()
                .insert("if-none-match", tag.parse().unwrap());
            tokio::spawn(send(request))
        };
        wait_for_metric(&gw, "mjgate_open_long_polls", 1.0).await;
        sim.set_status("t", "SUCCESS");
        let answered = waiting.await.unwrap();
        assert_eq!(answered.status, 200);
        assert_eq!(answered.json()["status"], "SUCCESS");
        assert_eq!(stream.next().await.unwrap().json()["status"], "SUCCESS");
        assert_eq!(stream.next().await.unwrap().name, "end");
        wait_for_metric(&gw, "mjgate_watchers", 0.0).await;
        wait_for_metric(&gw, "mjgate_watch_held_bytes", 0.0).await;
    }
}

#[tokio::test]
async fn last_event_id_skips_what_the_client_has_and_after_the_end_gets_204() {
    let (sim, gw) = start(TTL).await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let client = h1();
    let mut stream = EventStream::open(&client, &gw, "t", KEY_A, None).await;
    let first = stream.next().await.unwrap();
    drop(stream);

    // Reconnecting with the last id: no repeat of the state already held, the next change comes.
    let mut resumed = EventStream::open(&client, &gw, "t", KEY_A, first.id.as_deref()).await;
    sim.set_status("t", "SUCCESS");
    let next = resumed.next().await.unwrap();
    assert_eq!(next.name, "status");
    assert_eq!(next.json()["status"], "SUCCESS");
    assert_eq!(resumed.next().await.unwrap().name, "end");
    assert!(resumed.next().await.is_none());

    // After the end, a reconnect with the final id is told to stop (EventSource stops on 204).
    let after = EventStream::open(&client, &gw, "t", KEY_A, next.id.as_deref()).await;
    assert_eq!(after.status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_long_polls_and_streams_on_one_task_cost_one_upstream_call_per_ttl_window() {
    let (sim, gw) =
        start("[cache]\nin_progress_ttl = \"500ms\"\n[watch]\nmax_open_per_credential = 2000\n")
            .await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();
    let started = Instant::now();
    let gw = Arc::new(gw);
    // HTTP/2: ten connections carry the thousand requests.
    let clients: Vec<_> = (0..10).map(|_| h2_client()).collect();
    let polls: Vec<_> = (0..500)
        .map(|i| {
            let gw = Arc::clone(&gw);
            let tag = tag.clone();
            let client = clients[i % 10].clone();
            tokio::spawn(async move {
                let url = gw.url("/mj/task/t/fetch?wait=4s");
                let mut request = request(Method::GET, &url, Some(KEY_A), "");
                request
                    .headers_mut()
                    .insert("if-none-match", tag.parse().unwrap());
                let response = client.request(request).await.unwrap();
                response.status()
            })
        })
        .collect();
    let streams: Vec<_> = (0..500)
        .map(|i| {
            let gw = Arc::clone(&gw);
            let client = clients[i % 10].clone();
            tokio::spawn(async move {
                let mut stream = EventStream::open(&client, &gw, "t", KEY_A, None).await;
                let first = stream.next().await.unwrap();
                let second = stream.next().await.unwrap();
                (first, second)
            })
        })
        .collect();
    wait_for_metric(&gw, "mjgate_open_streams", 500.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sim.set_status("t", "SUCCESS");
    for status in join_all(polls).await {
        assert_eq!(
            status.unwrap(),
            StatusCode::OK,
            "every long-poll saw the change"
        );
    }
    for pair in join_all(streams).await {
        let (first, second) = pair.unwrap();
        assert_eq!(first.json()["status"], "IN_PROGRESS");
        assert_eq!(second.json()["status"], "SUCCESS");
    }
    let windows = started.elapsed().as_millis() / 500 + 2;
    let calls = u128::from(sim.fetch_calls("t"));
    assert!(
        calls <= windows,
        "{calls} upstream calls in {windows} TTL windows"
    );
    assert_eq!(sim.fetch_calls("t") as usize, sim.requests().len());
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_watcher() {
    let (sim, gw) = start(TTL).await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let client = h1();
    let mut stream = EventStream::open(&client, &gw, "t", KEY_A, None).await;
    stream.next().await.unwrap();
    wait_for_metric(&gw, "mjgate_watchers", 1.0).await;
    assert_eq!(scrape(&gw).await.value("mjgate_open_streams", &[]), 1.0);
    drop(stream);
    drop(client);
    wait_for_metric(&gw, "mjgate_open_streams", 0.0).await;
    wait_for_metric(&gw, "mjgate_watchers", 0.0).await;
    // And the upstream is no longer polled for it.
    let calls = sim.fetch_calls("t");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(sim.fetch_calls("t"), calls);
}

#[tokio::test]
async fn key_b_cannot_watch_key_as_task() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "mine", "IN_PROGRESS");
    let tag = fetch(&gw, "mine", KEY_A).await.header("etag").to_owned();
    let client = h1();
    let stream = EventStream::open(&client, &gw, "mine", KEY_B, None).await;
    assert_eq!(stream.status, 404, "no stream for another key's task");
    let poll = long_poll(&gw, "mine", KEY_B, &tag, "5s").await;
    assert_eq!(poll.status, 404);
    assert_eq!(scrape(&gw).await.value("mjgate_watchers", &[]), 0.0);
}

#[tokio::test]
async fn watches_past_the_bound_get_429_with_retry_after() {
    let (sim, gw) = start("[watch]\nmax_open_per_credential = 2\n").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    sim.create_task(KEY_B, "u", "IN_PROGRESS");
    let client = h1();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = EventStream::open(&client, &gw, "t", KEY_A, None).await;
        assert_eq!(stream.status, 200);
        stream.next().await.unwrap();
        open.push(stream);
    }
    let refused = EventStream::open(&client, &gw, "t", KEY_A, None).await;
    assert_eq!(refused.status, 429);
    assert!(refused.headers.contains_key("retry-after"));
    let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();
    assert_eq!(long_poll(&gw, "t", KEY_A, &tag, "5s").await.status, 429);
    let other = EventStream::open(&client, &gw, "u", KEY_B, None).await;
    assert_eq!(
        other.status, 200,
        "another credential has its own allowance"
    );
    assert_eq!(
        fetch_if_none_match(&gw, "t", KEY_A, "\"x\"").await.status,
        200,
        "plain polls are not bounded by it"
    );
    assert_eq!(
        scrape(&gw).await.value("mjgate_watch_refused_total", &[]),
        2.0
    );
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_final_event_and_answers_held_long_polls() {
    let (sim, mut gw) = start("").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();
    let client = h1();
    let mut stream = EventStream::open(&client, &gw, "t", KEY_A, None).await;
    stream.next().await.unwrap();
    let url = gw.url("/mj/task/t/fetch?wait=60s");
    let held = tokio::spawn({
        let tag = tag.clone();
        async move {
            let mut request = request(Method::GET, &url, Some(KEY_A), "");
            request
                .headers_mut()
                .insert("if-none-match", tag.parse().unwrap());
            send(request).await
        }
    });
    wait_for_metric(&gw, "mjgate_open_long_polls", 1.0).await;

    gw.begin_shutdown();
    let last = stream.next().await.unwrap();
    assert_eq!(last.name, "shutdown");
    assert!(stream.next().await.is_none());
    let reply = held.await.unwrap();
    assert_eq!(
        reply.status, 304,
        "answered with the current state, unchanged"
    );
    assert_eq!(gw.join().await, mjgate::Drain::Complete);
}

#[tokio::test]
async fn a_long_poller_that_hangs_up_frees_its_place_and_its_watcher() {
    let (sim, gw) = start(TTL).await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let tag = fetch(&gw, "t", KEY_A).await.header("etag").to_owned();
    let held = long_poll(&gw, "t", KEY_A, &tag, "30s");
    // The client gives up after a moment and closes its connection.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), held)
            .await
            .is_err()
    );
    wait_for_metric(&gw, "mjgate_open_long_polls", 0.0).await;
    wait_for_metric(&gw, "mjgate_watchers", 0.0).await;
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeat_comments() {
    let (sim, gw) = start("[watch]\nheartbeat = \"100ms\"\n").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let client = h1();
    let mut stream = EventStream::open(&client, &gw, "t", KEY_A, None).await;
    assert!(
        stream
            .next_block()
            .await
            .unwrap()
            .starts_with("event: status")
    );
    // Nothing changes (in_progress_ttl is 3 s): the next blocks are comments, which EventSource ignores.
    for _ in 0..2 {
        assert_eq!(stream.next_block().await.unwrap(), ": keep-alive\n\n");
    }
}

#[tokio::test]
async fn streams_and_long_polls_outlive_their_connections_idle_timeout() {
    // The connection sees no new request while the stream runs: it is closed gracefully (GOAWAY),
    // which must not cut the stream that is open on it, over HTTP/2 or HTTP/1.
    let config = "[cache]\nin_progress_ttl = \"100ms\"\n[server]\nidle_timeout = \"200ms\"\n";
    let (sim, gw) = start(config).await;
    for (client, id) in [(h2_client(), "over-h2"), (h1(), "over-h1")] {
        sim.create_task(KEY_A, id, "IN_PROGRESS");
        let mut stream = EventStream::open(&client, &gw, id, KEY_A, None).await;
        assert_eq!(stream.next().await.unwrap().json()["status"], "IN_PROGRESS");
        tokio::time::sleep(Duration::from_millis(1000)).await; // five idle timeouts
        sim.set_status(id, "SUCCESS");
        let change = stream.next().await.expect("the stream is still open");
        assert_eq!(change.json()["status"], "SUCCESS");
        assert_eq!(stream.next().await.unwrap().name, "end");
    }

    // A long-poll held for five idle timeouts is answered, not cut off.
    sim.create_task(KEY_A, "held", "IN_PROGRESS");
    let tag = fetch(&gw, "held", KEY_A).await.header("etag").to_owned();
    let changer = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        sim.set_status("held", "SUCCESS");
    };
    let (reply, ()) = tokio::join!(long_poll(&gw, "held", KEY_A, &tag, "10s"), changer);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "SUCCESS");
}

/// Opens `/mj/task/{id}/events` on a raw socket with a tiny receive buffer, and never reads it.
async fn stalled_stream(gateway: &Gateway, id: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut stream = socket.connect(gateway.addr).await.unwrap();
    let head =
        format!("GET /mj/task/{id}/events HTTP/1.1\r\nHost: gw\r\nAuthorization: {KEY_A}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_takes_the_last_events_of_a_finished_task_loses_its_connection() {
    let (sim, gw) = start(
        "[server]\nsend_timeout = \"400ms\"\n[cache]\nin_progress_ttl = \"50ms\"\n[watch]\nheartbeat = \"200ms\"\nstream_buffer = \"64MiB\"\n",
    )
    .await;
    sim.create_task(KEY_A, "big", "IN_PROGRESS");
    // About 3 MiB an answer: more than the kernel and hyper buffer for a connection together.
    sim.set_prompt("big", &"x".repeat(1 << 20));
    let stalled: Vec<_> =
        futures_util::future::join_all((0..3).map(|_| stalled_stream(&gw, "big"))).await;
    wait_for_metric(&gw, "mjgate_open_streams", 3.0).await;
    // The task finishes: each stream's writer hands over its last events and has nothing more to
    // do, while the readers still take nothing. Neither the events left waiting nor what the
    // connection buffered is pinned by an idle connection for ever.
    sim.set_status("big", "SUCCESS");
    wait_for_metric(&gw, "mjgate_open_streams", 0.0).await;
    poll_until("every stalled connection is gone", || async {
        scrape(&gw).await.value("mjgate_client_connections", &[]) == 1.0
    })
    .await;
    let m = scrape(&gw).await;
    assert_eq!(m.value("mjgate_stream_buffered_bytes", &[]), 0.0);
    assert_eq!(
        m.value("mjgate_streams_cut_total", &[])
            + m.value("mjgate_client_send_timeouts_total", &[]),
        3.0,
        "each was cut off, by the stream (events untaken) or the connection (bytes untaken)"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stop_reading_are_cut_off_and_what_they_pinned_goes_with_them() {
    let (sim, gw) = start(
        "[cache]\nin_progress_ttl = \"50ms\"\n[watch]\nheartbeat = \"200ms\"\nstream_buffer = \"2MiB\"\n",
    )
    .await;
    sim.create_task(KEY_A, "big", "IN_PROGRESS");
    // An answer of about 300 KiB that changes on every poll.
    sim.set_prompt("big", &"x".repeat(100 << 10));
    let stalled: Vec<_> =
        futures_util::future::join_all((0..20).map(|_| stalled_stream(&gw, "big"))).await;
    wait_for_metric(&gw, "mjgate_open_streams", 20.0).await;
    let sim = Arc::new(sim);
    let changes = {
        let sim_progress = Arc::clone(&sim);
        tokio::spawn(async move {
            for i in 0..400 {
                sim_progress.set_progress("big", &format!("{}%", i % 100));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    poll_until("every stalled reader is cut off", || async {
        scrape(&gw).await.value("mjgate_streams_cut_total", &[]) == 20.0
    })
    .await;
    wait_for_metric(&gw, "mjgate_open_streams", 0.0).await;
    wait_for_metric(&gw, "mjgate_stream_buffered_bytes", 0.0).await;
    let m = scrape(&gw).await;
    assert_eq!(
        m.value("mjgate_client_connections", &[]),
        1.0,
        "their connections closed: only the scrape's own is open"
    );
    // A reader that keeps reading is not touched.
    let client = h1();
    let mut stream = EventStream::open(&client, &gw, "big", KEY_A, None).await;
    for _ in 0..3 {
        assert!(stream.next().await.is_some());
    }
    assert_eq!(
        scrape(&gw).await.value("mjgate_streams_cut_total", &[]),
        20.0
    );
    changes.abort();
    drop(stalled);
}
