//! `mjgate bench --hold N`: opens and holds N client connections to a gateway (idle keep-alive after
//! one cached fetch, held long-polls, or open event streams), each from its own loopback source
//! address (127.0.0.0/8) so the ephemeral port range is no limit, then reports the gateway's resident
//! memory per connection (from its `process_resident_memory_bytes`) and the upstream calls made.
//!
//! Connections are raw sockets with a hand-written HTTP/1.1 request: the holder itself must stay cheap
//! per connection to hold tens of thousands.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What each held connection does before it idles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldKind {
    /// One cached fetch, then an idle keep-alive connection.
    Idle,
    /// A long-poll (`?wait=`) with the task's current `ETag`, held until it answers.
    LongPoll,
    /// An event stream (`/events`) on a task that is still running.
    Events,
}

/// One hold run.
#[derive(Debug, Clone)]
pub struct HoldSpec {
    /// The gateway, `host:port`.
    pub target: SocketAddr,
    pub connections: usize,
    pub kind: HoldKind,
    /// `Authorization` value.
    pub credential: String,
    /// Task ids polled, in turn (`task-0` .. as the simulator seeds them).
    pub tasks: usize,
    pub id_prefix: String,
    /// How long the connections are held once all are open.
    pub hold: Duration,
}

/// What a hold run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    pub kind: HoldKind,
    pub requested: usize,
    /// Connections open (and, for long-polls and streams, held) at the measurement.
    pub held: usize,
    pub failed: usize,
    pub rss_before: u64,
    pub rss_held: u64,
    /// `(rss_held - rss_before) / held`.
    pub bytes_per_connection: f64,
    pub open_secs: f64,
}

/// Opens the connections, holds them, measures, and closes them.
pub async fn run(spec: &HoldSpec) -> std::io::Result<HoldReport> {
    let metrics = format!("http://{}/metrics", spec.target);
    let rss_before = resident_bytes(&metrics).await.unwrap_or(0);
    let started = Instant::now();
    let mut held = Vec::with_capacity(spec.connections);
    let mut failed = 0;
    for i in 0..spec.connections {
        match open(spec, i).await {
            Ok(stream) => held.push(stream),
            Err(_) => failed += 1,
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // Let the gateway settle (allocator, pollers) before measuring.
    tokio::time::sleep(spec.hold.min(Duration::from_secs(2))).await;
    if spec.kind == HoldKind::LongPoll {
        // A held long-poll has answered nothing; one that did (a 429 past the watch bounds, say)
        // is not held, and does not count.
        let before = held.len();
        held.retain(|stream| {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        failed += before - held.len();
    }
    let rss_held = resident_bytes(&metrics).await.unwrap_or(0);
    tokio::time::sleep(spec.hold.saturating_sub(Duration::from_secs(2))).await;
    let count = held.len();
    drop(held);
    Ok(HoldReport {
        kind: spec.kind,
        requested: spec.connections,
        held: count,
        failed,
        rss_before,
        rss_held,
        bytes_per_connection: rss_held.saturating_sub(rss_before) as f64 / count.max(1) as f64,
        open_secs,
    })
}

/// The source address of connection `i`: 127.0.0.2 upwards, a few thousand ports each at most.
fn source(i: usize) -> SocketAddr {
    let n = u32::try_from(i / 2000).unwrap_or(0) + 2;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n.min(0x00ff_fffe));
    SocketAddr::from((ip, 0))
}

/// Connection `i`: connected from its own source address, its request sent and its answer's head
/// read (all of it, for an idle one).
async fn open(spec: &HoldSpec, i: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source(i))?;
    let mut stream = socket.connect(spec.target).await?;
    let id = format!("{}{}", spec.id_prefix, i % spec.tasks.max(1));
    let host = spec.target;
    let auth = &spec.credential;
    let request = match spec.kind {
        HoldKind::Idle => format!(
            "GET /mj/task/{id}/fetch HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n"
        ),
        HoldKind::LongPoll => {
            let etag = current_etag(spec, &id, i).await?;
            format!(
                "GET /mj/task/{id}/fetch?wait=3600s HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nIf-None-Match: {etag}\r\n\r\n"
            )
        }
        HoldKind::Events => format!(
            "GET /mj/task/{id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nAccept: text/event-stream\r\n\r\n"
        ),
    };
    stream.write_all(request.as_bytes()).await?;
    match spec.kind {
        HoldKind::Idle => read_answer(&mut stream).await?,
        // A held long-poll answers nothing yet; a stream sends its head and first event.
        HoldKind::LongPoll => {}
        HoldKind::Events => {
            let mut buffer = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
                .await
                .map_err(|_| std::io::Error::other("no stream head"))??;
            if !buffer[..n].starts_with(b"HTTP/1.1 200") {
                return Err(std::io::Error::other("the stream was refused"));
            }
        }
    }
    Ok(stream)
}

/// The task's current `ETag`, from a fetch on a short-lived connection.
async fn current_etag(spec: &HoldSpec, id: &str, i: usize) -> std::io::Result<String> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source(i))?;
    let mut stream = socket.connect(spec.target).await?;
    let request = format!(
        "GET /mj/task/{id}/fetch HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        spec.target, spec.credential
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("etag")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| std::io::Error::other("no ETag"))
}

/// Reads one whole answer (head and `Content-Length` body) off a kept-alive connection.
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut answer = Vec::with_capacity(2048);
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buffer))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        answer.extend_from_slice(&buffer[..n]);
        let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&answer[..end]);
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0);
        if answer.len() >= end + 4 + length {
            return if head.starts_with("HTTP/1.1 200") {
                Ok(())
            } else {
                Err(std::io::Error::other("not a 200"))
            };
        }
    }
}

/// The gateway's `process_resident_memory_bytes`, from its `/metrics`.
async fn resident_bytes(metrics_url: &str) -> Option<u64> {
    let uri: http::Uri = metrics_url.parse().ok()?;
    let authority = uri.authority()?.to_string();
    let mut stream = TcpStream::connect(authority.as_str()).await.ok()?;
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut text))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&text);
    let line = text
        .lines()
        .find(|line| line.starts_with("process_resident_memory_bytes "))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_over_loopback_sources() {
        assert_eq!(source(0), "127.0.0.2:0".parse().unwrap());
        assert_eq!(source(1999), "127.0.0.2:0".parse().unwrap());
        assert_eq!(source(2000), "127.0.0.3:0".parse().unwrap());
        assert_eq!(source(100_000), "127.0.0.52:0".parse().unwrap());
    }
}
