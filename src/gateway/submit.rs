//! `POST` on a family's submit route (`[/{mode}]/mj/submit/*`, `/suno/submit/*`, `/v1/videos`, ...):
//! a request that starts a paid task.
//!
//! Without `[webhooks]` (or for a family that takes no callback URL) a submit is forwarded as any
//! passthrough request is. With them, this handler owns the whole path: read the body once (under the
//! body budget), take the hook over (strictly: a body a lenient upstream could read otherwise is
//! refused), check where the hook points, forward, and learn the task id from the upstream's answer.
//! Once the body is read that work runs on its own, tracked by the drain: a client that hangs up
//! during a slow submit does not cancel it, so the task it started still gets its hook delivered and
//! no callback token is left behind.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{Gateway, full};
use crate::body::ResponseBody;
use crate::error::RequestError;
use crate::family::SubmitMatch;
use crate::fetch::Served;
use crate::metrics::{ClientError, RouteLabel};
use crate::push::hooks::{HookTask, credential_only};
use crate::request::body::HeldBody;
use crate::task::TaskId;
use crate::upstream::ClientInfo;
use crate::webhook::guard::{HookError, HookUrl};
use crate::webhook::{Hooks, Slot, submit};
use crate::work::WorkKind;

/// A submit whose hook was taken over, ready to go upstream.
struct HookedSubmit {
    route: SubmitMatch,
    request: Request<Bytes>,
    task: HookTask,
    slot: Slot,
    /// The client's body, charged against the body budget until it is forwarded.
    held: HeldBody,
}

impl Gateway {
    pub(super) async fn submit(
        self: Arc<Self>,
        request: Request<Incoming>,
        route: SubmitMatch,
        client: ClientInfo,
    ) -> Served {
        let families = self.fetcher.families();
        let field = families
            .get(route.family)
            .submit()
            .and_then(|submit| submit.callback_field.clone());
        let (Some(hooks), Some(field)) = (self.hooks.clone(), field) else {
            return self
                .passthrough_as(RouteLabel::Submit, request, client)
                .await;
        };
        let (mut parts, body) = request.into_parts();
        // A content-coded body could hide a hook the gateway cannot read: refused (415), as a batch is.
        let held = match self
            .read_whole(&parts.headers, body, self.limits.max_request_body)
            .await
        {
            Ok(held) => held,
            Err(e) => return self.read_failed(e),
        };
        let taken = match submit::take_over(&held.bytes, &field, None) {
            Ok(taken) => taken,
            Err(error) => {
                self.metrics.client_error(ClientError::SubmitBody);
                return Served::error(RequestError::BadSubmitBody { error });
            }
        };
        parts.headers.remove(CONTENT_LENGTH);
        let Some(hook) = taken.hook else {
            let request = Request::from_parts(parts, full(taken.body));
            return self.forward_as(RouteLabel::Submit, request, client).await;
        };
        // Checked before anything else, whatever happens next: a hook the gateway would refuse is
        // the client's error, never forwarded.
        let bad_hook = |error: HookError| {
            self.metrics.client_error(ClientError::SubmitHook);
            Served::error(RequestError::BadHook {
                field: field.clone(),
                error,
            })
        };
        let hook = match HookUrl::parse(&hook) {
            Ok(hook) => hook,
            Err(e) => return bad_hook(e),
        };
        if let Err(e @ HookError::Internal(_)) = hook.resolve(hooks.allow_private()).await {
            return bad_hook(e);
        }
        let task = HookTask {
            family: route.family,
            id: String::new(),
            path: String::new(),
            headers: credential_only(&parts.headers),
            client,
            hook,
            callback: None,
        };
        let fingerprint = self.fetcher.fingerprinter().fingerprint(&parts.headers);
        let Some(slot) = hooks.reserve(fingerprint, task.record_bytes()) else {
            // `webhooks.max_pending`, its per-credential share or `webhooks.max_memory` reached: the
            // submit goes on as it came (its hook checked), the upstream's own callback (if any) in
            // place of the gateway's delivery.
            let request = Request::from_parts(parts, full(held.bytes.clone()));
            return self.forward_as(RouteLabel::Submit, request, client).await;
        };
        let mut task = task;
        // With `public_url`, the upstream gets the gateway's own callback URL instead of nothing.
        let body = match hooks
            .issue_callback(fingerprint, route.family, families)
            .await
        {
            Some((url, token)) => {
                task.callback = Some(token);
                submit::take_over(&held.bytes, &field, Some(&url))
                    .map_or(taken.body, |replaced| replaced.body)
            }
            None => taken.body,
        };
        let submit = HookedSubmit {
            route,
            request: Request::from_parts(parts, body),
            task,
            slot,
            held,
        };
        // From here the work is the gateway's, not the client's: it runs to its end on its own.
        let (answer, answered) = tokio::sync::oneshot::channel();
        let gateway = Arc::clone(&self);
        self.fetcher.work().spawn(WorkKind::Submit, async move {
            let served = gateway.forward_hooked(&hooks, submit).await;
            let _ = answer.send(served);
        });
        answered.await.unwrap_or_else(|_| {
            Served::error(RequestError::Internal(
                "the submit's work ended without an answer",
            ))
        })
    }

    /// Forwards a submit whose hook was taken over; once the upstream's answer names the task, its
    /// changes are delivered to the hook. The client gets the answer unchanged.
    async fn forward_hooked(&self, hooks: &Arc<Hooks>, submit: HookedSubmit) -> Served {
        let HookedSubmit {
            route,
            request,
            mut task,
            slot,
            held,
        } = submit;
        let served = self
            .forward_as(RouteLabel::Submit, request.map(full), task.client)
            .await;
        drop(held);
        let status = served.response.status();
        let (head, answer) = served.response.into_parts();
        let max = self.fetcher.upstream().max_body();
        let answer = match Limited::new(answer, usize::try_from(max).unwrap_or(usize::MAX))
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                if let Some(token) = &task.callback {
                    hooks.forget_callback(token).await;
                }
                return Served::error(RequestError::SubmitAnswerUnreadable);
            }
        };
        let families = self.fetcher.families();
        let id = families
            .get(route.family)
            .submit()
            .and_then(|submit| submit.task_id_in(&answer));
        let path = id.as_deref().and_then(|id| {
            let id = TaskId::parse(id).ok()?;
            families.status_path(route.family, &route.mode, id)
        });
        match (id, path) {
            (Some(id), Some(path)) if status.is_success() => {
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
        Served {
            response: Response::from_parts(head, ResponseBody::full(answer)),
            ..served
        }
    }
}
