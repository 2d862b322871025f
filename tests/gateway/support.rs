//! Starting a gateway against a simulator, and a small HTTP client for the tests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mjgate::{Config, Drain};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use mjgate::tools::simulator::{Fault, NotFound, Simulator};
pub use pki::{Leaf, Pki, toml_path};
pub use receiver::{Delivery, Receiver, SECRET};
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::{MASTER_NAME, RedisSentinel};
pub use redis_server::{RedisOptions, RedisServer, RedisTlsFiles, free_port};
pub use s3_server::S3Server;

mod pki;
mod receiver;
mod redis_cluster;
mod redis_sentinel;
mod redis_server;
mod s3_server;

pub const KEY_A: &str = "Bearer sk-key-a";
pub const KEY_B: &str = "Bearer sk-key-b";

/// A gateway running in this process.
pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<Drain, mjgate::Error>>>,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends the shutdown signal and waits for the drain to end.
    pub async fn shutdown(mut self) -> Drain {
        self.begin_shutdown();
        self.join().await
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn join(mut self) -> Drain {
        let task = self.task.take().expect("joined once");
        task.await.expect("server task").expect("server result")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// A config for `upstream` as a file would give it, plus `extra` TOML (which may open `[upstream]` too).
pub fn config(upstream: &str, extra: &str) -> Config {
    let url = format!("[upstream]\nurl = \"{upstream}\"\n");
    let text = if extra.contains("[upstream]") {
        extra.replacen("[upstream]\n", &url, 1)
    } else {
        // After `extra`, so its top-level keys stay top-level.
        format!("{extra}\n{url}")
    };
    // Kept files are on by default, in `./artifacts`: a test that is not about them keeps the
    // upstream's links (and writes nothing to the working directory).
    let text = if extra.contains("[artifacts") {
        text
    } else {
        format!("{text}\n[artifacts]\nenabled = false\n")
    };
    Config::from_toml(&text, &Default::default()).expect("test config")
}

pub async fn start_gateway(config: Config) -> Gateway {
    start_gateway_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), config)
}

/// The gateway on a listener bound beforehand (for a config that names its own address).
pub fn start_gateway_on(listener: TcpListener, config: Config) -> Gateway {
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(mjgate::run(listener, config, async {
        let _ = stopped.await;
    }));
    Gateway {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A simulator and a gateway in front of it, configured with `extra` TOML (e.g. a `[cache]` table).
pub async fn start(extra: &str) -> (Simulator, Gateway) {
    let sim = Simulator::start().await.unwrap();
    let gateway = start_gateway(config(&sim.url(), extra)).await;
    (sim, gateway)
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A client that speaks HTTP/2 only (prior knowledge, cleartext).
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Waits until `condition` holds, checking every 20 ms; fails the test naming `what` after 10 s.
pub async fn poll_until<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the gauge (or counter) `name`, summed over its labels, reads `value` (5 s at most): how a
/// test orders a race by what the gateway exposes, never by a sleep.
pub async fn wait_for_metric(gateway: &Gateway, name: &str, value: f64) {
    for _ in 0..200 {
        if scrape(gateway).await.value(name, &[]) == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{name} stayed at {}, not {value}",
        scrape(gateway).await.value(name, &[])
    );
}

/// `POST /mj/task/list-by-condition` with `{"ids": ids}`.
pub async fn batch(gw: &Gateway, credential: &str, ids: &[&str]) -> Reply {
    batch_at(gw, "/mj/task/list-by-condition", credential, ids).await
}

/// A batch at `path` (a mode prefix, say).
pub async fn batch_at(gw: &Gateway, path: &str, credential: &str, ids: &[&str]) -> Reply {
    let body = serde_json::json!({ "ids": ids }).to_string();
    send(request(
        Method::POST,
        &gw.url(path),
        Some(credential),
        &body,
    ))
    .await
}

pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    try_send(request).await.expect("gateway answered in time")
}

/// `send`, with a failure to connect or answer reported instead of failing the test.
pub async fn try_send(request: Request<Full<Bytes>>) -> Result<Reply, String> {
    let response = tokio::time::timeout(Duration::from_secs(20), client().request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.map_err(|e| e.to_string())?.to_bytes(),
    })
}

pub fn request(
    method: Method,
    url: &str,
    credential: Option<&str>,
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(credential) = credential {
        builder = builder.header("authorization", credential);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// `GET {path}` with `Authorization: {credential}`.
pub async fn get(gateway: &Gateway, path: &str, credential: &str) -> Reply {
    send(request(
        Method::GET,
        &gateway.url(path),
        Some(credential),
        "",
    ))
    .await
}

/// Fetches task `id` through the gateway.
pub async fn fetch(gateway: &Gateway, id: &str, credential: &str) -> Reply {
    get(gateway, &format!("/mj/task/{id}/fetch"), credential).await
}

/// Scrapes `/metrics` from `gateway`, checks it is valid exposition text, and returns its samples.
pub async fn scrape(gateway: &Gateway) -> Scrape {
    scrape_url(&gateway.url("/metrics")).await
}

pub async fn scrape_url(url: &str) -> Scrape {
    let reply = send(request(Method::GET, url, None, "")).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(reply.body.to_vec()).expect("metrics are UTF-8");
    Scrape::parse(text)
}

/// A parsed `/metrics` page.
pub struct Scrape {
    pub text: String,
    pub samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    /// Parses exposition text, failing the test on anything malformed.
    pub fn parse(text: String) -> Self {
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split(' ');
                let name = words.next().unwrap().to_owned();
                let kind = words.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad TYPE line: {line}"
                );
                typed.insert(name);
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("bad line: {line}"));
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in: {line}"));
                let name = series.split('{').next().unwrap();
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                    "bad metric name: {line}"
                );
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(
                    typed.contains(family),
                    "sample before its TYPE line: {line}"
                );
                if let Some(labels) = series.strip_prefix(name) {
                    assert!(
                        labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                        "bad labels: {line}"
                    );
                }
            }
        }
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("valid exposition format");
        Scrape {
            text,
            samples: parsed.samples,
        }
    }

    /// The value of the sample `name` whose labels include every pair in `labels`; 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    pub fn has_family(&self, name: &str) -> bool {
        self.text.contains(&format!("# TYPE {name} "))
    }
}

/// Sends `request` as raw bytes on a new connection and returns the answer: up to the end of its body
/// by `Content-Length`, or what came before the gateway closed the connection (10 s at most).
pub async fn raw(gateway: &Gateway, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if complete(&answer) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether `answer` holds a whole response head and as much body as its `Content-Length` says.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|length| body.len() >= length)
}

/// Polls `/metrics` until `mjgate_shared_cache_up` is `up` (bounded).
pub async fn wait_for_shared_state(gateway: &Gateway, up: bool) {
    for _ in 0..400 {
        if (scrape(gateway).await.value("mjgate_shared_cache_up", &[]) == 1.0) == up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mjgate_shared_cache_up never became {}", u8::from(up));
}
