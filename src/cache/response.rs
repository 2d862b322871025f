//! A stored task as an HTTP answer: the upstream's bytes and content type, `ETag`, `Cache-Control:
//! private`, `Cache-Status` and `Age`.

use std::sync::Arc;

use http::Response;
use http::StatusCode;
use http::header::{AGE, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue};

use crate::body::ResponseBody;
use crate::cache::status::{CACHE_STATUS, CacheStatus};
use crate::cache::{CachedTask, encoding};

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// On every answer from the credential-partitioned cache. A shared cache between mjgate and its clients
/// must not store it: RFC 9111 already keeps such caches off answers to requests with `Authorization`,
/// but not off those to `mj-api-secret` ones, which it would then serve to every other secret.
pub static PRIVATE: HeaderValue = HeaderValue::from_static("private");

/// A stored task as a response: the upstream's bytes and content type, plus `Cache-Status` (and `Age`
/// when it comes from the cache).
/// Its body is picked later, by the envelope, for the request's `Accept-Encoding`.
pub fn task_response(
    task: &Arc<CachedTask>,
    status: CacheStatus,
    with_age: bool,
) -> Response<ResponseBody> {
    task_head(
        task,
        status,
        with_age,
        ResponseBody::Task(Some(Arc::clone(task) as _)),
    )
}

/// The same, its body picked here: the hit path knows the client's encoding already.
pub fn task_response_for(
    task: &CachedTask,
    status: CacheStatus,
    with_age: bool,
    gzip: bool,
) -> Response<ResponseBody> {
    let mut response = task_head(task, status, with_age, ResponseBody::empty());
    encoding::represent_task(&mut response, task, gzip);
    response
}

fn task_head(
    task: &CachedTask,
    status: CacheStatus,
    with_age: bool,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = task.status();
    let headers = response.headers_mut();
    // Room for every header the answer will carry (`Vary` and `X-Request-Id` included) in one
    // allocation: seven would otherwise outgrow the default table and rehash it on every hit.
    headers.reserve(8);
    if task.status() != StatusCode::NO_CONTENT {
        headers.insert(
            CONTENT_TYPE,
            task.content_type
                .clone()
                .unwrap_or_else(|| APPLICATION_JSON.clone()),
        );
    }
    if task.is_task() {
        headers.insert(ETAG, task.etag.clone());
    }
    headers.insert(CACHE_CONTROL, PRIVATE.clone());
    headers.insert(CACHE_STATUS.clone(), status.header_value());
    if with_age {
        headers.insert(AGE, crate::cache::status::age_header(task.age()));
    }
    response
}

/// A header value that owns its bytes (the common JSON types are shared statics), for cache entries.
pub fn compact_header(value: &HeaderValue) -> HeaderValue {
    const SHARED: [&str; 3] = [
        "application/json",
        "application/json;charset=UTF-8",
        "application/json; charset=utf-8",
    ];
    match SHARED.iter().find(|s| s.as_bytes() == value.as_bytes()) {
        Some(shared) => HeaderValue::from_static(shared),
        None => {
            HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| APPLICATION_JSON.clone())
        }
    }
}
