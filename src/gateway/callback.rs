//! `POST /_mjgate/callback/{token}`: an upstream calling back with a task, at the URL the gateway gave
//! it in place of the client's hook (`webhooks.public_url`). Stored only if the token was issued for
//! that task, and only under the credential it was issued to; then the task's long-polls, streams and
//! hook see it at once. Without `[webhooks]` the path is passed through like any other.

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::Gateway;
use crate::error::RequestError;
use crate::family::TaskRef;
use crate::fetch::{CalledBack, Served};
use crate::task::TaskId;
use crate::upstream::{BufferedReply, ClientInfo};

impl Gateway {
    pub(super) async fn callback(
        &self,
        token: &str,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Served {
        let Some(hooks) = &self.hooks else {
            return self.passthrough(request, client).await;
        };
        if request.method() != Method::POST {
            return Served::error(RequestError::MethodNotAllowed("callbacks are POSTed"));
        }
        let families = &*self.fetcher.live_families().load_full();
        let (parts, body) = request.into_parts();
        let held = match self
            .read_whole(&parts.headers, body, self.settings().limits.batch_max_body)
            .await
        {
            Ok(held) => held,
            Err(e) => return self.read_failed(e),
        };
        let Some(family) = hooks.callback_family(token, families).await else {
            return Served::error(RequestError::UnknownCallback);
        };
        let Some(id) = families.get(family).task_id_in(&held.bytes) else {
            return Served::error(RequestError::CallbackNamesNoTask);
        };
        let (Ok(task_id), Some(callback)) = (
            TaskId::parse(&id),
            hooks.callback(token, &id, families).await,
        ) else {
            return Served::error(RequestError::UnknownCallback);
        };
        if callback.finished {
            self.metrics.webhooks.callback("ignored");
            return Served::bypass(acknowledged());
        }
        let task = TaskRef {
            family,
            id: task_id,
        };
        let answer = BufferedReply {
            status: StatusCode::OK,
            headers: parts.headers,
            body: held.bytes.clone(),
        };
        match self
            .fetcher
            .store_called_back(&callback.fingerprint, task, &answer)
            .await
        {
            CalledBack::Stored(key, stored) => {
                self.metrics.webhooks.callback("stored");
                self.push.announce(&key, &stored);
                Served::bypass(acknowledged())
            }
            CalledBack::AlreadyFinished => {
                self.metrics.webhooks.callback("ignored");
                tracing::debug!(task = %id, "callback for a finished task ignored");
                Served::bypass(acknowledged())
            }
            CalledBack::NotThatTask => Served::error(RequestError::CallbackNotThatTask),
        }
    }
}

/// A callback taken (or acknowledged and ignored): JSON like every other answer of the gateway's, in
/// the shape the relays' own callback endpoints answer.
fn acknowledged() -> http::Response<crate::body::ResponseBody> {
    let mut response = http::Response::new(crate::body::ResponseBody::full(
        bytes::Bytes::from_static(br#"{"code":"success"}"#),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
