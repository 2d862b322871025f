//! A webhook receiver on loopback, as a client's own hook endpoint would be: it records every
//! delivery and answers with scripted statuses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mjgate::webhook::sign::SigningSecret;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;

use super::poll_until;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One delivery as the receiver got it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Delivery {
    pub fn header(&self, name: &str) -> String {
        self.headers[name].to_str().unwrap().to_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Whether the Standard Webhooks signature is the one `SECRET` gives.
    pub fn signed(&self) -> bool {
        self.signed_with(SECRET)
    }

    /// Whether the Standard Webhooks signature is the one `secret` gives.
    pub fn signed_with(&self, secret: &str) -> bool {
        let secret = SigningSecret::parse(secret).unwrap();
        let timestamp: u64 = self.header("webhook-timestamp").parse().unwrap();
        self.header("webhook-signature")
            == secret.sign(&self.header("webhook-id"), timestamp, &self.body)
    }
}

/// A hook receiver on loopback: records every delivery, answers with the scripted statuses, then 200.
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(script: &[u16]) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), script)
    }

    pub fn start_on(listener: TcpListener, script: &[u16]) -> Self {
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(
            script.iter().copied().collect::<VecDeque<u16>>(),
        ));
        let task = tokio::spawn({
            let got = Arc::clone(&got);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (got, script) = (Arc::clone(&got), Arc::clone(&script));
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let (got, script) = (Arc::clone(&got), Arc::clone(&script));
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                got.lock().push(Delivery {
                                    headers: parts.headers,
                                    body,
                                });
                                let status = script.lock().pop_front().unwrap_or(200);
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Receiver { addr, got, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/mj", self.addr)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().clone()
    }

    /// Waits until a delivery says the task is `status` (bounded).
    pub async fn wait_for_status(&self, status: &str) -> Vec<Delivery> {
        poll_until(&format!("a delivery of {status}"), || async {
            self.deliveries()
                .iter()
                .any(|d| d.json()["status"] == status)
        })
        .await;
        self.deliveries()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
