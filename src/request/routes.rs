//! Which kind of request this is: a task fetch, a batch query, a health check, or passthrough.

use http::Method;

use crate::metrics::RouteLabel;
use crate::request::admission::Refused;
use crate::task::{InvalidTaskId, TaskId};

/// The gateway's view of a request, from its method and path alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /healthz`: the process is up.
    Health,
    /// `GET /readyz`: the gateway can serve.
    Ready,
    /// `GET /metrics`: Prometheus exposition.
    Metrics,
    /// `GET [/{mode}]/mj/task/{id}/fetch`, served from the task cache.
    Fetch(TaskId<'a>),
    /// `GET [/{mode}]/mj/task/{id}/fetch?wait=...`: answered at once, or held until the task changes.
    LongPoll(TaskId<'a>),
    /// `GET [/{mode}]/mj/task/{id}/events`: the task's changes as server-sent events (mjgate's own).
    Events(TaskId<'a>),
    /// A fetch or events path with an id that must not reach the upstream.
    BadTaskId(InvalidTaskId),
    /// `POST [/{mode}]/mj/task/list-by-condition`, served from the task cache when it asks by `ids`.
    Batch,
    /// Everything else, forwarded untouched.
    Passthrough,
    /// Refused by [`crate::request::admission`] before routing mattered (set by the gateway, never by
    /// [`classify`]).
    Refused(Refused),
}

impl Route<'_> {
    /// The bounded metric and log label: never an id or a raw path.
    pub fn label(&self) -> RouteLabel {
        match self {
            Route::Health | Route::Ready | Route::Metrics => RouteLabel::Admin,
            Route::Fetch(_) | Route::BadTaskId(_) => RouteLabel::Fetch,
            Route::LongPoll(_) => RouteLabel::LongPoll,
            Route::Events(_) => RouteLabel::Events,
            Route::Batch => RouteLabel::Batch,
            Route::Passthrough | Route::Refused(_) => RouteLabel::Passthrough,
        }
    }

    /// Whether this is an operator's route, served on `admin_listen` when one is set.
    pub fn is_admin(&self) -> bool {
        matches!(self, Route::Health | Route::Ready | Route::Metrics)
    }
}

/// Whether a query string asks to wait (`wait=...`; a bare `wait` is refused later as invalid).
pub fn asks_to_wait(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair == "wait" || pair.starts_with("wait="))
}

/// Classifies a request by its method, path and query (which makes a fetch a long-poll).
pub fn classify<'a>(method: &Method, path: &'a str, query: Option<&str>) -> Route<'a> {
    match (method, path) {
        (&Method::GET, "/healthz") => return Route::Health,
        (&Method::GET, "/readyz") => return Route::Ready,
        (&Method::GET, "/metrics") => return Route::Metrics,
        _ => {}
    }
    let Some(rest) = strip_mode(path) else {
        return Route::Passthrough;
    };
    if *method == Method::POST && rest == "/mj/task/list-by-condition" {
        return Route::Batch;
    }
    if *method != Method::GET {
        return Route::Passthrough;
    }
    let Some(task_path) = rest.strip_prefix("/mj/task/") else {
        return Route::Passthrough;
    };
    let (id, events) = if let Some(id) = task_path.strip_suffix("/fetch") {
        (id, false)
    } else if let Some(id) = task_path.strip_suffix("/events") {
        (id, true)
    } else {
        return Route::Passthrough;
    };
    // `/mj/task/a/b/fetch` is a fetch-shaped path with a bad id, not another endpoint: refuse it here
    // rather than let an id with a slash reach the upstream.
    match TaskId::parse(id) {
        Ok(id) if events => Route::Events(id),
        Ok(id) if query.is_some_and(asks_to_wait) => Route::LongPoll(id),
        Ok(id) => Route::Fetch(id),
        Err(e) => Route::BadTaskId(e),
    }
}

/// The path after an optional single mode segment (`/mj-fast/mj/...` → `/mj/...`), if it is an `/mj/` path.
fn strip_mode(path: &str) -> Option<&str> {
    if path.starts_with("/mj/") {
        return Some(path);
    }
    let after_slash = path.strip_prefix('/')?;
    let end = after_slash.find('/')?;
    let (mode, rest) = after_slash.split_at(end);
    let mode_ok = !mode.is_empty()
        && mode
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (mode_ok && rest.starts_with("/mj/")).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(id: &str) -> Route<'_> {
        Route::Fetch(TaskId::parse(id).unwrap())
    }

    #[test]
    fn fetches_with_and_without_a_mode() {
        assert_eq!(
            classify(&Method::GET, "/mj/task/123/fetch", None),
            fetch("123")
        );
        assert_eq!(
            classify(&Method::GET, "/mj-fast/mj/task/123/fetch", None),
            fetch("123")
        );
        assert_eq!(
            classify(&Method::GET, "/mj-relax/mj/task/123/fetch", None),
            fetch("123")
        );
        assert_eq!(
            classify(&Method::GET, "/a/b/mj/task/123/fetch", None),
            Route::Passthrough
        );
    }

    #[test]
    fn bad_ids_are_caught_before_the_upstream() {
        assert_eq!(
            classify(&Method::GET, "/mj/task//fetch", None),
            Route::BadTaskId(InvalidTaskId::Empty)
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/a%2Fb/fetch", None),
            Route::BadTaskId(InvalidTaskId::BadCharacter)
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/a/b/fetch", None),
            Route::BadTaskId(InvalidTaskId::BadCharacter)
        );
    }

    #[test]
    fn a_fetch_that_asks_to_wait_is_a_long_poll() {
        let id = TaskId::parse("123").unwrap();
        assert_eq!(
            classify(&Method::GET, "/mj/task/123/fetch", Some("wait=30s")),
            Route::LongPoll(id)
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/123/fetch", Some("x=1&wait")),
            Route::LongPoll(id)
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/123/fetch", Some("waiting=1")),
            Route::Fetch(id)
        );
    }

    #[test]
    fn event_streams_are_the_gateways_own() {
        assert_eq!(
            classify(&Method::GET, "/mj-fast/mj/task/123/events", None),
            Route::Events(TaskId::parse("123").unwrap())
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/a/b/events", None),
            Route::BadTaskId(InvalidTaskId::BadCharacter)
        );
        assert_eq!(
            classify(&Method::POST, "/mj/task/123/events", None),
            Route::Passthrough
        );
    }

    #[test]
    fn batches_and_the_rest() {
        assert_eq!(
            classify(&Method::POST, "/mj/task/list-by-condition", None),
            Route::Batch
        );
        assert_eq!(
            classify(&Method::POST, "/mj-turbo/mj/task/list-by-condition", None),
            Route::Batch
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/list-by-condition", None),
            Route::Passthrough
        );
        assert_eq!(
            classify(&Method::POST, "/mj/task/1/fetch", None),
            Route::Passthrough
        );
        assert_eq!(
            classify(&Method::POST, "/mj/submit/imagine", None),
            Route::Passthrough
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/1/image-seed", None),
            Route::Passthrough
        );
        assert_eq!(classify(&Method::GET, "/healthz", None), Route::Health);
        assert_eq!(classify(&Method::GET, "/readyz", None), Route::Ready);
        assert_eq!(classify(&Method::GET, "/metrics", None), Route::Metrics);
        assert_eq!(classify(&Method::GET, "/", None), Route::Passthrough);
    }
}
