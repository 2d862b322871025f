//! The operator's routes: `/healthz` (the process is up), `/readyz` (this instance can serve: 503
//! while starting or draining, whatever the upstream's state), `/upstreamz` (the upstream's state:
//! 503 while the circuit breaker is open) and `/metrics`.
//!
//! Readiness deliberately ignores a lone upstream: during its outage the cache still answers finished
//! tasks and stale running ones, so pulling every replica out of its load balancer would turn a
//! partial outage into a total one. Alert on `/upstreamz` or `mjgate_upstream_circuit_open`. With a
//! pool (`[[upstream.members]]`), readiness fails only when no member can take a submit (every
//! breaker open): one member down is the pool's normal life, and its tasks are served stale.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::Gateway;
use crate::body::ResponseBody;
use crate::error::RequestError;
use crate::request::routes::Route;
use crate::upstream::pool::Pool;

impl Gateway {
    /// `/healthz`, `/readyz`, `/upstreamz` and `/metrics`.
    pub(super) fn admin(&self, route: &Route<'_>) -> Response<ResponseBody> {
        match route {
            Route::Ready if self.draining.load(Ordering::Relaxed) => {
                RequestError::Draining.into_response()
            }
            Route::Ready if self.fetcher.pools().is_many() && self.fetcher.pools().all_down() => {
                RequestError::PoolDown("every member's circuit is open".to_owned()).into_response()
            }
            Route::Ready => plain(StatusCode::OK, "ready"),
            Route::Upstream => self.upstream_state(),
            Route::Metrics => self.metrics_response(),
            _ => plain(StatusCode::OK, "ok"),
        }
    }

    /// The upstream as the gateway sees it: `200` with `{"circuit":"closed"}`, or `503` while every
    /// member's breaker fails calls fast; each member's circuit and running tasks under `members`
    /// (and with named pools, each pool's under `pools`).
    fn upstream_state(&self) -> Response<ResponseBody> {
        let pools = self.fetcher.pools();
        let members_of = |pool: &Pool| -> Vec<serde_json::Value> {
            pool.members()
                .iter()
                .enumerate()
                .map(|(id, member)| {
                    serde_json::json!({
                        "name": member.name,
                        "upstream": member.upstream.authority(),
                        "circuit": member.upstream.protection().breaker().label(),
                        "running": pool.running(id),
                        "max_running": member.max_running(),
                    })
                })
                .collect()
        };
        let circuit = |open: bool| if open { "open" } else { "closed" };
        let open = pools.all_down();
        let status = if open {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut body = serde_json::json!({
            "upstream": self.fetcher.upstream().authority(),
            "circuit": circuit(open),
            "members": members_of(pools.default_pool()),
        });
        if pools.all().count() > 1 {
            body["pools"] = pools
                .all()
                .map(|(name, pool)| {
                    serde_json::json!({
                        "name": name,
                        "circuit": circuit(pool.all_down()),
                        "members": members_of(pool),
                    })
                })
                .collect();
        }
        let mut response = Response::new(ResponseBody::full(body.to_string()));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    fn metrics_response(&self) -> Response<ResponseBody> {
        // Apply pending evictions first, so the cache gauges are exact at scrape time.
        self.fetcher.cache().sync();
        self.fetcher.pools().export();
        let mut response = Response::new(ResponseBody::full(self.metrics.render()));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
}

/// A short plain-text answer (`ok`, `ready`).
pub(super) fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
