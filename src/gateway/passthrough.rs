//! Everything the gateway does not serve itself: forwarded untouched (but for hop-by-hop and
//! forwarding headers), streamed both ways. A small body is read whole first (under the body budget),
//! so a client trickling its upload holds no upstream slot meanwhile; a larger one streams, bounded in
//! size and in idle time.

use std::sync::Arc;

use http::Request;
use http_body::Body as _;
use hyper::body::Incoming;

use super::batch::declared_length;
use super::{Gateway, full};
use crate::body::ResponseBody;
use crate::fetch::Served;
use crate::metrics::RouteLabel;
use crate::request::body::{self as request_body, BodyFault, Prefetched};
use crate::upstream::pool::{MemberId, Pool};
use crate::upstream::{ClientInfo, UpstreamBody, UpstreamError};

impl Gateway {
    /// To the pool of the family that claims the request's path prefix, else the default pool.
    pub(super) async fn passthrough(
        &self,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Served {
        let pool = Arc::clone(self.fetcher.pool_for_path(request.uri().path()));
        self.passthrough_as(RouteLabel::Passthrough, &pool, request, client)
            .await
    }

    /// Passthrough to `pool`'s first member, its upstream call counted under `route` (a submit's is
    /// `submit`).
    pub(super) async fn passthrough_as(
        &self,
        route: RouteLabel,
        pool: &Pool,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Served {
        let empty = request.body().is_end_stream();
        if let Err(fault) = request_body::check_framing(request.method(), request.headers(), empty)
        {
            return self.client_fault(fault);
        }
        let max = self.settings().limits.max_request_body;
        let declared = declared_length(request.headers());
        if declared.is_some_and(|len| len > max) {
            return self.client_fault(BodyFault::TooLarge(max));
        }
        // Counted and timed as it streams: a chunked body that grows too large (413), stalls (408) or
        // breaks (400) aborts the upstream call, and is the client's error.
        let idle = self.settings().limits.body_read_timeout;
        let (parts, body) = request.into_parts();
        let body = request_body::bounded(body, max, idle);
        let buffer = self.settings().limits.passthrough_buffer;
        // Only what the budget allows is buffered: past it, bodies stream as they always could.
        let reservation = (buffer > 0 && declared.is_none_or(|len| len <= buffer))
            .then(|| self.bodies.reserve(buffer as usize))
            .flatten();
        let body = match reservation {
            None => body,
            Some(_) => match request_body::prefetch(body, buffer as usize, max).await {
                Ok(Prefetched::Whole(bytes)) => full(bytes),
                Ok(Prefetched::Streaming(body)) => body,
                Err(fault) => return self.client_fault(fault),
            },
        };
        let served = self
            .forward_to(pool, 0, route, Request::from_parts(parts, body), client)
            .await;
        drop(reservation);
        served
    }

    /// A request whose body the client broke: its own 4xx, counted apart from upstream failures.
    pub(super) fn client_fault(&self, fault: BodyFault) -> Served {
        tracing::debug!(error = %fault, "client request body failed");
        self.metrics.client_error(fault.label());
        Served::error(fault)
    }

    /// Forwards the request untouched (but for hop-by-hop and forwarding headers) to member
    /// `member` of `pool`, streaming both ways; the upstream call counted under `route`.
    pub(super) async fn forward_to(
        &self,
        pool: &Pool,
        member: MemberId,
        route: RouteLabel,
        request: Request<UpstreamBody>,
        client: ClientInfo,
    ) -> Served {
        let fingerprint = self.fetcher.fingerprinter().fingerprint(request.headers());
        match pool
            .member(member)
            .upstream
            .forward(route, &fingerprint, request, client)
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                Served::forwarded(response.map(ResponseBody::Upstream), status)
            }
            Err(UpstreamError::ClientBody(fault)) => self.client_fault(fault),
            Err(e) => {
                let e = pool.blame(member, e);
                e.log();
                Served::error(e)
            }
        }
    }
}
