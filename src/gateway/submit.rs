//! `POST` on a family's submit route (`[/{mode}]/mj/submit/*`, `/suno/submit/*`, `/v1/videos`, ...):
//! a request that starts a paid task.
//!
//! A submit with neither an `Idempotency-Key` nor a hook for the gateway to take over is forwarded as
//! any passthrough request is, streamed. Otherwise this handler owns the whole path: read the body once
//! (under the body budget); with `[webhooks]`, take the hook over (strictly: a body a lenient upstream
//! could read otherwise is refused) and check where it points; with a key, claim it (a retry is
//! answered from the first request's answer, `409` while that is in flight, `422` for another body);
//! then forward, and learn the task id from the upstream's answer. Once the body is read that work runs
//! on its own, tracked by the drain: a client that hangs up during a slow submit does not cancel it, so
//! the task it started still gets its hook delivered, its key still gets its answer for the retry, and
//! no callback token is left behind.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{Gateway, full};
use crate::body::ResponseBody;
use crate::error::RequestError;
use crate::family::SubmitMatch;
use crate::family::submit::normalize;
use crate::fetch::Served;
use crate::idempotency::{self, IDEMPOTENT_REPLAYED, Refusal, StoredAnswer, Ticket};
use crate::metrics::{ClientError, RouteLabel};
use crate::push::hooks::{HookTask, credential_only};
use crate::request::body::HeldBody;
use crate::task::TaskId;
use crate::upstream::pool::{MemberId, NoMember, Pool};
use crate::upstream::{ClientInfo, UpstreamError};
use crate::webhook::guard::{HookError, HookUrl};
use crate::webhook::{Hooks, Slot, submit};
use crate::work::WorkKind;

/// A submit read and checked, ready to go upstream on its own.
struct SubmitWork {
    route: SubmitMatch,
    request: Request<Bytes>,
    /// The hook the gateway delivers to, and its place among the watched hooks.
    hook: Option<(Arc<Hooks>, HookTask, Slot)>,
    /// The claimed `Idempotency-Key`, settled with the answer.
    ticket: Option<Ticket>,
    /// The client's body, charged against the body budget until it is forwarded.
    held: HeldBody,
    /// How long the upstream may take to answer.
    timeout: Duration,
    client: ClientInfo,
}

impl Gateway {
    pub(super) async fn submit(
        self: Arc<Self>,
        request: Request<Incoming>,
        route: SubmitMatch,
        client: ClientInfo,
    ) -> Served {
        let families = &*self.fetcher.live_families().load_full();
        let field = families
            .get(route.family)
            .submit()
            .and_then(|submit| submit.callback_field.clone())
            .filter(|_| self.hooks.is_some());
        let key = match &self.idempotency {
            Some(_) => match idempotency::key::of(request.headers()) {
                Ok(key) => key,
                Err(e) => return self.idempotency_refused(Refusal::BadKey(e)),
            },
            None => None,
        };
        if key.is_none() {
            if let Some(idempotency) = &self.idempotency {
                if idempotency.required() {
                    return self.idempotency_refused(Refusal::Required);
                }
                idempotency.bypassed();
            }
            // With a pool, the gateway places every submit (and learns the task's owner from its
            // answer), so it is read whole like the others.
            let pool = self.fetcher.pool_of(route.family);
            if field.is_none() && !pool.places_submits() {
                return self
                    .passthrough_as(RouteLabel::Submit, pool, request, client)
                    .await;
            }
        }
        let (mut parts, body) = request.into_parts();
        // A content-coded body could hide a hook the gateway cannot read: refused (415), as a batch is.
        let held = match self
            .read_whole(
                &parts.headers,
                body,
                self.settings().limits.max_request_body,
            )
            .await
        {
            Ok(held) => held,
            Err(e) => return self.read_failed(e),
        };
        let fingerprint = self.fetcher.fingerprinter().fingerprint(&parts.headers);
        // The hook first: a body or a hook the gateway refuses is the client's error, never claimed,
        // never forwarded.
        let mut body = held.bytes.clone();
        let mut hook_task = None;
        if let Some(field) = &field {
            let taken = match submit::take_over(&held.bytes, field, None) {
                Ok(taken) => taken,
                Err(error) => {
                    self.metrics.client_error(ClientError::SubmitBody);
                    return Served::error(RequestError::BadSubmitBody { error });
                }
            };
            if let Some(hook) = taken.hook {
                let hook = match self.checked_hook(field, &hook).await {
                    Ok(hook) => hook,
                    Err(served) => return served,
                };
                hook_task = Some(HookTask {
                    family: route.family,
                    id: String::new(),
                    path: String::new(),
                    headers: credential_only(&parts.headers),
                    client,
                    hook,
                    callback: None,
                });
                body = taken.body;
            }
        }
        let path = normalize(parts.uri.path());
        let ticket = match (&self.idempotency, key) {
            (Some(idempotency), Some(key)) => {
                // A key names one request of the credential's, as Stripe scopes it: the family, not
                // the route. The route (as a lenient upstream reads it, any spelling alike) is part
                // of what the request is, so the key reused on another route gets 422, not a second
                // task.
                let family = families.get(route.family).name();
                let id = idempotency.key_id(&fingerprint, family, &key);
                let route = format!("{family}:{}", path.to_ascii_lowercase());
                let digest =
                    idempotency.digest(&route, parts.headers.get(CONTENT_TYPE), &held.bytes);
                match idempotency.claim(id, digest, fingerprint).await {
                    idempotency::Claim::Fresh(ticket) => Some(ticket),
                    idempotency::Claim::Replay(answer) => return replayed(&answer),
                    idempotency::Claim::Refused(refusal) => return Served::error(refusal),
                }
            }
            _ => None,
        };
        let hook = match (hook_task, self.hooks.clone()) {
            (Some(mut task), Some(hooks)) => {
                match hooks.reserve(fingerprint, task.record_bytes()) {
                    Some(slot) => {
                        // With `public_url`, the upstream gets the gateway's own callback URL instead of
                        // nothing.
                        if let (Some((url, token)), Some(field)) = (
                            hooks
                                .issue_callback(fingerprint, route.family, families)
                                .await,
                            &field,
                        ) {
                            task.callback = Some(token);
                            body = submit::take_over(&held.bytes, field, Some(&url))
                                .map_or(body, |replaced| replaced.body);
                        }
                        Some((hooks, task, slot))
                    }
                    // `webhooks.max_pending`, its per-credential share or `webhooks.max_memory` reached:
                    // the submit goes on as it came (its hook checked), the upstream's own callback (if
                    // any) in place of the gateway's delivery.
                    None => {
                        body = held.bytes.clone();
                        None
                    }
                }
            }
            _ => None,
        };
        parts.headers.remove(CONTENT_LENGTH);
        parts.headers.remove(&idempotency::IDEMPOTENCY_KEY);
        let timeout = if ticket.is_some() {
            self.submit_timeout
        } else {
            self.request_timeout
        };
        let work = SubmitWork {
            route,
            request: Request::from_parts(parts, body),
            hook,
            ticket,
            held,
            timeout,
            client,
        };
        // From here the work is the gateway's, not the client's: it runs to its end on its own.
        let (answer, answered) = tokio::sync::oneshot::channel();
        let gateway = Arc::clone(&self);
        self.fetcher.work().spawn(WorkKind::Submit, async move {
            let served = gateway.forward_submit(work).await;
            let _ = answer.send(served);
        });
        answered.await.unwrap_or_else(|_| {
            Served::error(RequestError::Internal(
                "the submit's work ended without an answer",
            ))
        })
    }

    /// The hook a submit names, if the gateway will deliver to it; the client's `400` otherwise.
    async fn checked_hook(&self, field: &str, hook: &str) -> Result<HookUrl, Served> {
        let refuse = |error: HookError| {
            self.metrics.client_error(ClientError::SubmitHook);
            Served::error(RequestError::BadHook {
                field: field.to_owned(),
                error,
            })
        };
        let hook = HookUrl::parse(hook).map_err(refuse)?;
        let allow_private = self
            .hooks
            .as_ref()
            .is_some_and(|hooks| hooks.allow_private());
        if let Err(e @ HookError::Internal(_)) = hook.resolve(allow_private).await {
            return Err(refuse(e));
        }
        Ok(hook)
    }

    fn idempotency_refused(&self, refusal: Refusal) -> Served {
        if let Some(idempotency) = &self.idempotency {
            idempotency.refused(&refusal);
        }
        Served::error(refusal)
    }

    /// Forwards a submit, settles its key and starts its hook's deliveries. The client (if it is still
    /// there) gets the upstream's answer: exactly what a retry with its key will be replayed.
    async fn forward_submit(&self, work: SubmitWork) -> Served {
        let SubmitWork {
            route,
            request,
            hook,
            ticket,
            held,
            timeout,
            client,
        } = work;
        let fingerprint = self.fetcher.fingerprinter().fingerprint(request.headers());
        let pool = self.fetcher.pool_of(route.family);
        let (parts, body) = request.into_parts();
        // An action or a modal acts on a task that exists only on its owner.
        let parent = pool
            .is_pool()
            .then(|| {
                let families = self.fetcher.live_families().load();
                families
                    .get(route.family)
                    .submit()
                    .and_then(|submit| submit.parent_in(&body))
            })
            .flatten();
        let only = match &parent {
            Some(parent) => {
                self.fetcher
                    .member_for(route.family, &route.mode, parent, &parts.headers, client)
                    .await
            }
            None => None,
        };
        let mut tried = Vec::new();
        // A member that could not be reached never saw the submit: the next one is tried. One that
        // may have seen it (its answer lost, timed out) is not: that could start a second paid task.
        let (answer, place) = loop {
            let place = if pool.places_submits() {
                match pool.place(&tried, only).await {
                    Ok(place) => Some(place),
                    Err(no_member) => {
                        drop(held);
                        return self.no_member(pool, no_member, &tried, hook, ticket).await;
                    }
                }
            } else {
                None
            };
            let upstream = place
                .as_ref()
                .map_or(pool.default_member(), |p| p.upstream());
            let mut request = Request::new(full(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            let forwarded = upstream
                .forward_within(RouteLabel::Submit, &fingerprint, request, client, timeout)
                .await;
            let answer = match forwarded {
                Ok(response) => self.read_answer(response).await,
                Err(e) => Err(e),
            };
            let answer = match &place {
                Some(place) => answer.map_err(|e| pool.blame(place.member(), e)),
                None => answer,
            };
            if let Some(place) = &place {
                let outcome = match &answer {
                    Err(e) if e.never_sent() && !matches!(e, UpstreamError::ClientBody(_)) => {
                        "skipped"
                    }
                    _ => "sent",
                };
                self.metrics
                    .members
                    .submits
                    .with_label_values(&[place.name(), outcome])
                    .inc();
                if outcome == "skipped" {
                    tracing::warn!(member = place.name(), error = %answer.as_ref().err().map(ToString::to_string).unwrap_or_default(), "submit not sent: trying the next member");
                    tried.push(place.member());
                    continue;
                }
            }
            break (answer, place);
        };
        drop(held);
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                e.log();
                if let Some((hooks, task, _)) = &hook
                    && let Some(token) = &task.callback
                {
                    hooks.forget_callback(token).await;
                }
                return self.settle_failed(ticket, e).await;
            }
        };
        if let Some(place) = place
            && StatusCode::from_u16(answer.status).is_ok_and(|s| s.is_success())
            && let Some(id) = self
                .fetcher
                .live_families()
                .load()
                .get(route.family)
                .submit()
                .and_then(|submit| submit.task_id_in(&answer.body))
        {
            self.fetcher
                .owned(route.family, &id, place, fingerprint)
                .await;
        }
        if let Some((hooks, task, slot)) = hook {
            self.follow(&hooks, &route, task, slot, &answer).await;
        }
        if let Some(ticket) = ticket {
            // Refused without starting anything: a retry is a fresh attempt.
            if answer.status == StatusCode::TOO_MANY_REQUESTS.as_u16() {
                ticket.release().await;
            } else {
                ticket.complete(answer.clone()).await;
            }
        }
        Served::forwarded(answer_response(&answer, false), answer.status)
    }

    /// A submit no member could take: `429` when all are at their running limit, `503` when none
    /// could be reached. Nothing was sent, so its key (if any) is given back and its hook forgotten.
    async fn no_member(
        &self,
        pool: &Pool,
        no_member: NoMember,
        tried: &[MemberId],
        hook: Option<(Arc<Hooks>, HookTask, Slot)>,
        ticket: Option<Ticket>,
    ) -> Served {
        if let Some((hooks, task, _)) = &hook
            && let Some(token) = &task.callback
        {
            hooks.forget_callback(token).await;
        }
        if let Some(ticket) = ticket {
            ticket.release().await;
        }
        let (reason, error) = match no_member {
            NoMember::AllBusy => ("busy", RequestError::PoolBusy),
            NoMember::AllDown => {
                let names: Vec<&str> = pool.members().iter().map(|m| m.name.as_str()).collect();
                let unreachable: Vec<&str> = tried.iter().map(|&m| names[m]).collect();
                let detail = if unreachable.is_empty() {
                    format!("every member's circuit is open ({})", names.join(", "))
                } else {
                    format!(
                        "could not connect to {}; the others are down or full",
                        unreachable.join(", ")
                    )
                };
                ("down", RequestError::PoolDown(detail))
            }
        };
        self.metrics
            .members
            .submits_refused
            .with_label_values(&[reason])
            .inc();
        Served::error(error)
    }

    /// The upstream's answer to a submit, read whole (at most `upstream.max_body`).
    async fn read_answer(
        &self,
        response: Response<Incoming>,
    ) -> Result<StoredAnswer, UpstreamError> {
        let (head, body) = response.into_parts();
        let max = self.fetcher.upstream().max_body();
        let body = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
            .collect()
            .await
            .map_err(|e| UpstreamError::unreachable("the upstream's answer could not be read", e))?
            .to_bytes();
        Ok(StoredAnswer {
            status: head.status.as_u16(),
            headers: idempotency::kept_headers(&head.headers),
            body,
        })
    }

    /// A submit that got no answer: its key given back when the request never left (a retry is a
    /// fresh attempt), kept as this very error when the upstream may have acted on it (a retry must
    /// not start a second task).
    async fn settle_failed(&self, ticket: Option<Ticket>, error: UpstreamError) -> Served {
        if let UpstreamError::ClientBody(fault) = &error {
            if let Some(ticket) = ticket {
                ticket.release().await;
            }
            return self.client_fault(*fault);
        }
        let served = Served::error(error.clone());
        let Some(ticket) = ticket else {
            return served;
        };
        if error.never_sent() {
            ticket.release().await;
            return served;
        }
        let detail = format!(
            "{error}; the upstream may have started the task: look it up before submitting again"
        );
        let status = error.status();
        let answer = StoredAnswer {
            status: status.as_u16(),
            headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body: Bytes::from(
                serde_json::json!({
                    "code": status.as_u16(),
                    "description": detail,
                    "type": "mjgate_error",
                })
                .to_string(),
            ),
        };
        ticket.complete(answer.clone()).await;
        Served::forwarded(answer_response(&answer, false), answer.status)
    }

    /// Once the upstream's answer names the task, its changes are delivered to the hook; otherwise
    /// the hook's place and callback token are given back.
    async fn follow(
        &self,
        hooks: &Arc<Hooks>,
        route: &SubmitMatch,
        mut task: HookTask,
        slot: Slot,
        answer: &StoredAnswer,
    ) {
        let families = &*self.fetcher.live_families().load_full();
        let id = families
            .get(route.family)
            .submit()
            .and_then(|submit| submit.task_id_in(&answer.body));
        let path = id.as_deref().and_then(|id| {
            let id = TaskId::parse(id).ok()?;
            families.status_path(route.family, &route.mode, id)
        });
        let accepted = StatusCode::from_u16(answer.status).is_ok_and(|s| s.is_success());
        match (id, path) {
            (Some(id), Some(path)) if accepted => {
                if let Some(token) = &task.callback {
                    hooks.bind_callback(token, &id, families).await;
                }
                task.path = path;
                task.id = id;
                self.push.deliver_hook(hooks, slot, task);
            }
            _ => {
                if let Some(token) = &task.callback {
                    hooks.forget_callback(token).await;
                }
            }
        }
    }
}

/// A kept answer as a response: its status, headers and body; `replay` marks it
/// `Idempotent-Replayed: true`.
fn answer_response(answer: &StoredAnswer, replay: bool) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(answer.body.clone()));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        headers.append(name.clone(), value.clone());
    }
    if replay {
        headers.insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// A retry answered with its key's kept answer, byte for byte.
fn replayed(answer: &StoredAnswer) -> Served {
    Served::forwarded(answer_response(answer, true), answer.status)
}
