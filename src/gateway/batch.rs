//! `POST` on a family's batch route (`[/{mode}]/mj/task/list-by-condition`, `/suno/fetch`): the query
//! read whole (under the body budget), its ids answered one by one from the task cache by the fetch
//! core; a query that is not a list of ids is forwarded as it came.

use http::header::{CONTENT_LENGTH, HeaderMap};
use http::{Method, Request};
use hyper::body::Incoming;

use super::{Gateway, full};
use crate::error::RequestError;
use crate::family::FamilyId;
use crate::fetch::Served;
use crate::fetch::batch::BatchQuery;
use crate::metrics::RouteLabel;
use crate::request::body::{self as request_body, BodyFault, HeldBody, ReadError};
use crate::task::TaskId;
use crate::upstream::ClientInfo;

impl Gateway {
    pub(super) async fn batch(
        &self,
        request: Request<Incoming>,
        family: FamilyId,
        client: ClientInfo,
    ) -> Served {
        let (parts, body) = request.into_parts();
        let held = match self
            .read_whole(&parts.headers, body, self.settings().limits.batch_max_body)
            .await
        {
            Ok(held) => held,
            Err(e) => return self.read_failed(e),
        };
        let body = &held.bytes;
        let families = self.fetcher.live_families().load_full();
        let ignored = families
            .get(family)
            .batch()
            .map_or(&[][..], |batch| &batch.ignore_fields[..]);
        let query = BatchQuery::parse(body, self.settings().limits.batch_max_ids, ignored);
        let ids: Vec<TaskId<'_>> = match &query {
            // Validated by the parser; parsing again only turns them into `TaskId`s.
            Ok(BatchQuery::Ids(ids)) => {
                ids.iter().filter_map(|id| TaskId::parse(id).ok()).collect()
            }
            Ok(BatchQuery::Other) => {
                let request = Request::from_parts(parts, full(body.clone()));
                let pool = self.fetcher.pool_of(family);
                return self
                    .forward_to(pool, 0, RouteLabel::Passthrough, request, client)
                    .await;
            }
            Err(e) => return Served::error(RequestError::BadBatch(e.to_string())),
        };
        self.fetcher
            .batch(parts.uri.path(), &parts.headers, family, &ids, client)
            .await
    }

    /// Reads a client body of at most `max` bytes whole, under the body budget: 413 beyond `max`,
    /// checked against `Content-Length` first; 408 when it stalls for `server.body_read_timeout`; 400
    /// when it is malformed or cut short; 503 when the budget is taken.
    pub(super) async fn read_whole(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        max: u64,
    ) -> Result<HeldBody, ReadError> {
        request_body::check_framing(&Method::POST, headers, false)?;
        request_body::check_identity(headers)?;
        let declared = declared_length(headers);
        if declared.is_some_and(|len| len > max) {
            return Err(BodyFault::TooLarge(max).into());
        }
        let body = request_body::bounded(body, max, self.settings().limits.body_read_timeout);
        self.bodies.read(body, max, declared).await
    }

    /// The answer to a body that could not be read whole: the client's fault, counted as such, or
    /// the budget's.
    pub(super) fn read_failed(&self, error: ReadError) -> Served {
        match error {
            ReadError::Fault(fault) => self.client_fault(fault),
            ReadError::OverBudget => {
                self.metrics.body_over_budget();
                Served::error(RequestError::BodyBudget("server.body_buffer_total"))
            }
        }
    }
}

/// The body's `Content-Length`, if it declares one.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
