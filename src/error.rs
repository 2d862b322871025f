//! Errors at the crate's boundary ([`Error`]) and the per-request failures the gateway answers itself
//! ([`RequestError`]), each mapped once to an HTTP status and a JSON body in the upstream's own style.

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::config::ConfigError;
use crate::fetch::collapse::Abandoned;
use crate::request::admission::Refused;
use crate::request::body::BodyFault;
use crate::task::InvalidTaskId;
use crate::upstream::UpstreamError;
use crate::webhook::guard::HookError;
use crate::webhook::submit::SubmitBodyError;

/// Why the gateway could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("shared cache: {0}")]
    SharedCache(#[from] redis::RedisError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The artifact store could not be opened (a directory it cannot create, a bucket URL it
    /// cannot use).
    #[error("artifacts: {0}")]
    Artifacts(String),
}

/// `Retry-After` when every member is at its running limit: a task takes 30 s to minutes, and the
/// upstreams ask for a poll every 3 to 5 s.
pub const POOL_BUSY_RETRY: u64 = 5;

/// A request the gateway answers itself, without (or instead of) an upstream answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid task id: {0}")]
    BadTaskId(#[from] InvalidTaskId),
    #[error("invalid batch query: {0}")]
    BadBatch(String),
    #[error(transparent)]
    ClientBody(#[from] BodyFault),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
    #[error("the gateway is shutting down")]
    Draining,
    #[error("too many open long-polls and streams ({0}); retry later or poll")]
    TooManyWatches(&'static str),
    /// Over `server.per_client_rps`: retry after this many seconds.
    #[error("too many requests from this address; retry in {0}s")]
    ClientRateLimited(u64),
    #[error("invalid wait: {0}")]
    BadWait(String),
    #[error("the admin listener serves /metrics, /healthz, /readyz and /admin/tasks only")]
    AdminOnly,
    /// The task admin routes without `admin.token` set.
    #[error("the task admin routes are off: set admin.token (or MJGATE_ADMIN_TOKEN)")]
    AdminOff,
    /// A task admin request without the admin token.
    #[error("the admin token is missing or wrong (Authorization: Bearer <admin.token>)")]
    AdminUnauthorized,
    #[error("{0}")]
    BadAdminRequest(String),
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    #[error("no such callback")]
    UnknownCallback,
    /// A file token that opens to nothing kept (never issued, altered, or its file evicted).
    #[error("no such file")]
    UnknownFile,
    /// A lazily kept file whose download failed (its origin refused, or its link died first).
    #[error("the file could not be fetched from its origin ({0})")]
    FileUnavailable(&'static str),
    /// A `Range` that starts past the end of a kept file of this many bytes.
    #[error("the range asked for is not in the file ({0} bytes)")]
    RangeNotSatisfiable(u64),
    #[error("the callback names no task")]
    CallbackNamesNoTask,
    #[error("the callback is not that task's answer")]
    CallbackNotThatTask,
    /// A submit's hook the gateway will not deliver to.
    #[error("{field}: {error}")]
    BadHook { field: String, error: HookError },
    /// A submit body that could be read otherwise by a lenient upstream, while the gateway delivers
    /// hooks.
    #[error("the submit body cannot be read strictly (webhooks are on): {error}")]
    BadSubmitBody { error: SubmitBodyError },
    #[error("the upstream's answer to the submit could not be read")]
    SubmitAnswerUnreadable,
    /// Every byte the gateway may hold for request bodies being read is taken: try again shortly.
    #[error("too many request bodies are being read at once ({0}); retry shortly")]
    BodyBudget(&'static str),
    /// Every member of the upstream pool is at its running-task limit (`max_running`).
    #[error("every upstream member is at its running-task limit; retry in {POOL_BUSY_RETRY}s")]
    PoolBusy,
    /// No member of the upstream pool can take a submit: each is down (its breaker open) or could not
    /// be reached. Nothing was sent.
    #[error("no upstream member can take a submit now: {0}")]
    PoolDown(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A submit's `Idempotency-Key` answered without going upstream (problem+json, RFC 9457).
    #[error(transparent)]
    Idempotency(#[from] crate::idempotency::Refusal),
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::BadTaskId(_)
            | RequestError::BadBatch(_)
            | RequestError::BadWait(_)
            | RequestError::CallbackNamesNoTask
            | RequestError::CallbackNotThatTask
            | RequestError::BadHook { .. }
            | RequestError::BadSubmitBody { .. } => StatusCode::BAD_REQUEST,
            RequestError::AdminOff => StatusCode::FORBIDDEN,
            RequestError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            RequestError::BadAdminRequest(_) => StatusCode::BAD_REQUEST,
            RequestError::AdminOnly | RequestError::UnknownCallback | RequestError::UnknownFile => {
                StatusCode::NOT_FOUND
            }
            RequestError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            RequestError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::SubmitAnswerUnreadable | RequestError::FileUnavailable(_) => {
                StatusCode::BAD_GATEWAY
            }
            RequestError::BodyBudget(_) | RequestError::PoolDown(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RequestError::PoolBusy => StatusCode::TOO_MANY_REQUESTS,
            RequestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RequestError::Idempotency(refusal) => {
                use crate::idempotency::Refusal;
                match refusal {
                    Refusal::BadKey(_) | Refusal::Required => StatusCode::BAD_REQUEST,
                    Refusal::InFlight => StatusCode::CONFLICT,
                    Refusal::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
                    Refusal::CredentialFull => StatusCode::TOO_MANY_REQUESTS,
                    Refusal::Full => StatusCode::SERVICE_UNAVAILABLE,
                }
            }
            RequestError::TooManyWatches(_) | RequestError::ClientRateLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            RequestError::ClientBody(fault) => fault.status(),
            RequestError::Refused(refused) => refused.status(),
            RequestError::Upstream(e) => e.status(),
            RequestError::Abandoned(Abandoned::Dangling) => StatusCode::BAD_GATEWAY,
            RequestError::Abandoned(Abandoned::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            RequestError::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON answer: `{"code": <status>, "description": "...", "type": "mjgate_error"}`; for an
    /// idempotency refusal, RFC 9457 problem details, as the Idempotency-Key draft has them.
    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let retry_after = match &self {
            RequestError::Draining | RequestError::BodyBudget(_) | RequestError::PoolDown(_) => {
                Some(1)
            }
            RequestError::PoolBusy => Some(POOL_BUSY_RETRY),
            RequestError::Idempotency(crate::idempotency::Refusal::InFlight) => Some(1),
            RequestError::Idempotency(crate::idempotency::Refusal::CredentialFull) => Some(60),
            RequestError::Idempotency(crate::idempotency::Refusal::Full) => Some(5),
            RequestError::TooManyWatches(_) => Some(5),
            RequestError::ClientRateLimited(seconds) => Some(*seconds),
            RequestError::Upstream(e) => e.retry_after().map(crate::upstream::protect::seconds),
            _ => None,
        };
        let mut response = match &self {
            RequestError::Idempotency(_) => problem(status, &self.to_string()),
            _ => json_error(status, &self.to_string()),
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let RequestError::RangeNotSatisfiable(len) = &self
            && let Ok(range) = HeaderValue::from_str(&format!("bytes */{len}"))
        {
            // RFC 9110 §15.5.17: the file's length, so the client can ask again within it.
            response
                .headers_mut()
                .insert(http::header::CONTENT_RANGE, range);
        }
        response
    }
}

/// RFC 9457 problem details (`application/problem+json`).
fn problem(status: StatusCode, detail: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(ResponseBody::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// A JSON error answer in the shape routers use (`code`, `description`), tagged as the gateway's own.
/// Only [`RequestError::into_response`] builds one: every answer the gateway makes up is a typed error.
fn json_error(status: StatusCode, description: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "code": status.as_u16(),
        "description": description,
        "type": "mjgate_error",
    });
    let mut response = Response::new(ResponseBody::full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
