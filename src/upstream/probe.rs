//! The active health check (`[upstream.probe]`): every member of a pool that has one is asked for
//! the probe path each interval, without a credential (the gateway holds none of its own), so any
//! HTTP answer, a `401` included, means the member is up. A member that does not answer within the
//! probe's timeout is counted toward its breaker like a failed connection: a dead member leaves the
//! submit rotation before a client's submit finds it, and a recovered one is back as soon as it
//! answers, with no client request spent as the trial.

use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;

use super::pool::Pools;
use super::{Upstream, UpstreamBody};
use crate::config::ProbeConfig;

/// Starts one check loop per member of every pool with a probe; each ends when the pools are gone
/// (or its handle is aborted).
pub fn start(pools: &Arc<Pools>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut loops = Vec::new();
    for (_, pool) in pools.all() {
        let Some(probe) = pool.probe().cloned() else {
            continue;
        };
        for member in 0..pool.members().len() {
            let pools = Arc::downgrade(pools);
            let name = pool.member(member).name.clone();
            let probe = probe.clone();
            loops.push(tokio::spawn(check_member(pools, name, probe)));
        }
    }
    loops
}

async fn check_member(pools: Weak<Pools>, name: String, probe: ProbeConfig) {
    let mut tick = tokio::time::interval(probe.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(upstream) = pools
            .upgrade()
            .and_then(|pools| pools.upstream_named(&name))
        else {
            return;
        };
        let up = upstream.answers(&probe).await;
        upstream.protection().breaker().probed(up, Instant::now());
        upstream
            .metrics
            .members
            .probes
            .with_label_values(&[name.as_str(), if up { "up" } else { "down" }])
            .inc();
    }
}

impl Upstream {
    /// Whether the member answers `GET probe.path` at all within `probe.timeout` (the body is read,
    /// so the connection goes back to the pool, but not kept).
    async fn answers(&self, probe: &ProbeConfig) -> bool {
        let Ok(uri) = self.url.join(&probe.path) else {
            return false;
        };
        let body: UpstreamBody = http_body_util::Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        let Ok(request) = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(
                http::header::USER_AGENT,
                concat!("mjgate/", env!("CARGO_PKG_VERSION"), " health check"),
            )
            .body(body)
        else {
            return false;
        };
        let check = async {
            let response = self.client.request(request).await.ok()?;
            // Bounded: a probe answer is read (to reuse the connection) but never more than 64 KiB.
            let body = http_body_util::Limited::new(response.into_body(), 64 * 1024);
            let _ = body.collect().await;
            Some(())
        };
        matches!(
            tokio::time::timeout(probe.timeout, check).await,
            Ok(Some(()))
        )
    }
}
