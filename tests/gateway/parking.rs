//! Idle keep-alive connections park: after `server.park_idle_after` with nothing in flight, hyper's
//! connection (and its buffers) is dropped and the socket waits alone; the client notices nothing.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const FETCH: &str =
    "GET /mj/task/t/fetch HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-key-a\r\n\r\n";

/// Reads one response (head and `Content-Length` body) off a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut received = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the connection closed mid-response");
            received.extend_from_slice(&buf[..n]);
            let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&received[..end]).into_owned();
            let no_body = head.starts_with("HTTP/1.1 304");
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .or(no_body.then_some(0))
                .expect("content-length");
            if received.len() >= end + 4 + length {
                let body = received[end + 4..end + 4 + length].to_vec();
                return (head, body);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

async fn parked(gw: &Gateway) -> f64 {
    scrape(gw)
        .await
        .value("mjgate_client_connections_parked", &[])
}

async fn wait_parked(gw: &Gateway, n: f64) {
    poll_until(&format!("{n} parked connections"), || async {
        parked(gw).await == n
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_parks_and_serves_its_next_request_on_the_same_socket() {
    let (sim, gw) = start("[server]\npark_idle_after = \"100ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    for round in 0..3 {
        stream.write_all(FETCH.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let task: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(task["id"], "t");
        wait_parked(&gw, 1.0).await;
    }
    assert_eq!(
        sim.fetch_calls("t"),
        1,
        "parking changes nothing about the cache"
    );
}

#[tokio::test]
async fn a_request_head_half_sent_when_the_connection_parks_is_still_served() {
    let (sim, gw) = start("[server]\npark_idle_after = \"100ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(FETCH.as_bytes()).await.unwrap();
    read_response(&mut stream).await;
    wait_parked(&gw, 1.0).await;
    // A whole request wakes the parked socket, and half of the next follows it: the connection goes
    // quiet with hyper holding the half in its buffer, and parking must hand it back, not drop it.
    let (first, second) = FETCH.split_at(20);
    stream
        .write_all(format!("{FETCH}{first}").as_bytes())
        .await
        .unwrap();
    read_response(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(second.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"id\":\"t\""));
}

#[tokio::test]
async fn a_large_answer_the_client_reads_slowly_arrives_whole_before_the_connection_parks() {
    let (sim, gw) = start("[server]\npark_idle_after = \"100ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    // A 4 MB answer: far more than the socket buffers hold, so hyper is still writing when the
    // park check looks, and must not be taken apart with bytes unsent.
    sim.set_progress("t", &"p".repeat(4 << 20));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(FETCH.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let task: serde_json::Value = serde_json::from_slice(&body).expect("the whole JSON");
    assert_eq!(task["progress"].as_str().unwrap().len(), 4 << 20);
    wait_parked(&gw, 1.0).await;
    stream.write_all(FETCH.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_parked_connection_is_closed_after_the_head_timeout() {
    let (sim, gw) = start(
        "[server]\npark_idle_after = \"100ms\"\nheader_read_timeout = \"1s\"\nidle_timeout = \"1h\"\n",
    )
    .await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(FETCH.as_bytes()).await.unwrap();
    read_response(&mut stream).await;
    wait_parked(&gw, 1.0).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("closed well before the idle timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    wait_parked(&gw, 0.0).await;
}

#[tokio::test]
async fn the_drain_closes_parked_connections_at_once() {
    let (sim, gw) = start(
        "[server]\npark_idle_after = \"100ms\"\nheader_read_timeout = \"1h\"\nidle_timeout = \"1h\"\nshutdown_grace = \"5s\"\n",
    )
    .await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(FETCH.as_bytes()).await.unwrap();
        read_response(&mut stream).await;
        streams.push(stream);
    }
    wait_parked(&gw, 3.0).await;
    assert_eq!(gw.shutdown().await, mjgate::server::Drain::Complete);
    for mut stream in streams {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("closed by the drain");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

#[tokio::test]
async fn a_connection_with_a_request_in_flight_does_not_park() {
    let (sim, gw) = start("[server]\npark_idle_after = \"100ms\"\n").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // A long-poll held for 1 s, ten park intervals, with no other request on the connection.
    let long_poll = "GET /mj/task/t/fetch?wait=1s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-key-a\r\n\r\n";
    stream.write_all(FETCH.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    let etag = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .expect("an ETag")
        .to_owned();
    let long_poll = long_poll.replace("\r\n\r\n", &format!("\r\nIf-None-Match: {etag}\r\n\r\n"));
    stream.write_all(long_poll.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(parked(&gw).await, 0.0, "held, not parked");
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 304"), "{head}");
    wait_parked(&gw, 1.0).await;
}

#[tokio::test]
async fn parking_can_be_turned_off() {
    let (sim, gw) = start("[server]\npark_idle_after = \"0s\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(FETCH.as_bytes()).await.unwrap();
    read_response(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(parked(&gw).await, 0.0);
    stream.write_all(FETCH.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_batch_poller_parks_between_batches() {
    let (sim, gw) = start("[server]\npark_idle_after = \"100ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let body = r#"{"ids":["t"]}"#;
    let batch = format!(
        "POST /mj/task/list-by-condition HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-key-a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        stream.write_all(batch.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("\"id\":\"t\""));
        wait_parked(&gw, 1.0).await;
    }
}

#[tokio::test]
async fn a_request_refused_with_its_body_unread_does_not_leave_the_body_to_be_read_as_a_request() {
    let (sim, gw) =
        start("[server]\npark_idle_after = \"100ms\"\n[batch]\nmax_body = \"64B\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    // A body the batch route refuses unread (413), sent in two parts with a pause between.
    let body = format!(r#"{{"ids":["{}"]}}"#, "t".repeat(200));
    let head = format!(
        "POST /mj/task/list-by-condition HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-key-a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(format!("{head}{}", &body[..10]).as_bytes())
        .await
        .unwrap();
    let (answer, _) = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The rest of the body is not a request: whatever the connection does, it never answers it.
    let _ = stream.write_all(&body.as_bytes()[10..]).await;
    let _ = stream.write_all(FETCH.as_bytes()).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("400"),
        "the body's tail was parsed as a request: {rest}"
    );
}

#[tokio::test]
async fn the_drain_does_not_wait_for_a_head_that_is_still_arriving() {
    let (sim, gw) = start(
        "[server]\npark_idle_after = \"100ms\"\nheader_read_timeout = \"1h\"\nidle_timeout = \"1h\"\nshutdown_grace = \"5s\"\n",
    )
    .await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    // Woken from its park by half a head.
    let mut woken = TcpStream::connect(gw.addr).await.unwrap();
    woken.write_all(FETCH.as_bytes()).await.unwrap();
    read_response(&mut woken).await;
    wait_parked(&gw, 1.0).await;
    woken.write_all(&FETCH.as_bytes()[..12]).await.unwrap();
    // Connected, said nothing; and half a first head.
    let _silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(&FETCH.as_bytes()[..12]).await.unwrap();
    wait_parked(&gw, 0.0).await;
    assert_eq!(gw.shutdown().await, mjgate::server::Drain::Complete);
}
