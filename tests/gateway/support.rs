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

pub use mjgate::simulator::{Fault, NotFound, Simulator};

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
        format!("{url}{extra}")
    };
    Config::from_toml(&text, &Default::default()).expect("test config")
}

pub async fn start_gateway(config: Config) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    let response = tokio::time::timeout(Duration::from_secs(20), client().request(request))
        .await
        .expect("gateway answered in time")
        .expect("gateway answered");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
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
