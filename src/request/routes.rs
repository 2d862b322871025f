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

/// Classifies a request. `path` is the URI path without the query.
pub fn classify<'a>(method: &Method, path: &'a str) -> Route<'a> {
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
        assert_eq!(classify(&Method::GET, "/mj/task/123/fetch"), fetch("123"));
        assert_eq!(
            classify(&Method::GET, "/mj-fast/mj/task/123/fetch"),
            fetch("123")
        );
        assert_eq!(
            classify(&Method::GET, "/mj-relax/mj/task/123/fetch"),
            fetch("123")
        );
        assert_eq!(
            classify(&Method::GET, "/a/b/mj/task/123/fetch"),
            Route::Passthrough
        );
    }

    #[test]
    fn bad_ids_are_caught_before_the_upstream() {
        assert_eq!(
            classify(&Method::GET, "/mj/task//fetch"),
            Route::BadTaskId(InvalidTaskId::Empty)
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/a%2Fb/fetch"),
            Route::BadTaskId(InvalidTaskId::BadCharacter)
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/a/b/fetch"),
            Route::BadTaskId(InvalidTaskId::BadCharacter)
        );
    }

    #[test]
    fn event_streams_are_the_gateways_own() {
        assert_eq!(
            classify(&Method::GET, "/mj-fast/mj/task/123/events"),
            Route::Events(TaskId::parse("123").unwrap())
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/a/b/events"),
            Route::BadTaskId(InvalidTaskId::BadCharacter)
        );
        assert_eq!(
            classify(&Method::POST, "/mj/task/123/events"),
            Route::Passthrough
        );
    }

    #[test]
    fn batches_and_the_rest() {
        assert_eq!(
            classify(&Method::POST, "/mj/task/list-by-condition"),
            Route::Batch
        );
        assert_eq!(
            classify(&Method::POST, "/mj-turbo/mj/task/list-by-condition"),
            Route::Batch
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/list-by-condition"),
            Route::Passthrough
        );
        assert_eq!(
            classify(&Method::POST, "/mj/task/1/fetch"),
            Route::Passthrough
        );
        assert_eq!(
            classify(&Method::POST, "/mj/submit/imagine"),
            Route::Passthrough
        );
        assert_eq!(
            classify(&Method::GET, "/mj/task/1/image-seed"),
            Route::Passthrough
        );
        assert_eq!(classify(&Method::GET, "/healthz"), Route::Health);
        assert_eq!(classify(&Method::GET, "/readyz"), Route::Ready);
        assert_eq!(classify(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(classify(&Method::GET, "/"), Route::Passthrough);
    }
}
