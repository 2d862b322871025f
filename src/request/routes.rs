//! Which kind of request this is: a task's status (fetch, long-poll, event stream) or a batch of one
//! of the task families, a health check, or passthrough.

use http::Method;

use crate::family::{At, Families, FamilyId, Matched, RouteKind, SubmitMatch, TaskRef};
use crate::metrics::RouteLabel;
use crate::request::admission::Refused;
use crate::task::InvalidTaskId;

/// The gateway's view of a request, from its method, path, query and `Accept`.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /healthz`: the process is up.
    Health,
    /// `GET /readyz`: the gateway can serve (whatever the upstream's state).
    Ready,
    /// `GET /upstreamz`: the upstream's state as the gateway sees it (the circuit breaker).
    Upstream,
    /// `GET /metrics`: Prometheus exposition.
    Metrics,
    /// `GET` on a family's status route (`[/{mode}]/mj/task/{id}/fetch`, `/suno/fetch/{id}`, ...),
    /// served from the task cache.
    Fetch(TaskRoute<'a>),
    /// A status route with `?wait=...`: answered at once, or held until the task changes.
    LongPoll(TaskRoute<'a>),
    /// The task's changes as server-sent events: a status route asked for `text/event-stream`, or
    /// an events route (`[/{mode}]/mj/task/{id}/events`).
    Events(TaskRoute<'a>),
    /// A task route with an id that must not reach the upstream.
    BadTaskId(InvalidTaskId),
    /// `POST` on a family's batch route (`list-by-condition`, `/suno/fetch`), served from the task
    /// cache when it asks by `ids`.
    Batch(FamilyId),
    /// `POST` on a family's submit route (`[/{mode}]/mj/submit/*`, `/v1/videos`, ...): a request that
    /// starts a task.
    Submit(SubmitMatch),
    /// `/_mjgate/callback/{token}`: an upstream calling back with a task (webhooks' callbacks in).
    Callback(&'a str),
    /// `/_mjgate/files/{token}`: a kept result file (durable results).
    File(&'a str),
    /// `/admin/tasks[/{family}[/{id}]]`: an operator inspecting or purging cached answers (what
    /// follows `/admin/tasks`).
    AdminTasks(&'a str),
    /// `/admin/config` (the running config) or `/admin/reload` (read the file again).
    AdminConfig(AdminConfigRoute),
    /// `GET` on a family's download route (`/v1/videos/{id}/content`): a task's file, kept.
    Download(TaskRoute<'a>),
    /// Everything else, forwarded untouched.
    Passthrough,
    /// Refused by [`crate::request::admission`] before routing mattered (set by the gateway, never by
    /// [`classify`]).
    Refused(Refused),
}

/// A task's route: which task, and what its upstream path is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRoute<'a> {
    pub task: TaskRef<'a>,
    pub at: At<'a>,
}

impl TaskRoute<'_> {
    /// The path (and query) the task's status is asked of the upstream with.
    pub fn upstream_path(&self, families: &Families) -> String {
        families.upstream_path(self.at, self.task.id)
    }
}

impl Route<'_> {
    /// The bounded metric and log label: never an id or a raw path.
    pub fn label(&self) -> RouteLabel {
        match self {
            Route::Health
            | Route::Ready
            | Route::Upstream
            | Route::Metrics
            | Route::AdminTasks(_)
            | Route::AdminConfig(_) => RouteLabel::Admin,
            Route::Fetch(_) | Route::BadTaskId(_) => RouteLabel::Fetch,
            Route::LongPoll(_) => RouteLabel::LongPoll,
            Route::Events(_) => RouteLabel::Events,
            Route::Batch(_) => RouteLabel::Batch,
            Route::Callback(_) => RouteLabel::Callback,
            Route::File(_) => RouteLabel::File,
            Route::Download(_) => RouteLabel::Download,
            Route::Submit(_) => RouteLabel::Submit,
            Route::Passthrough | Route::Refused(_) => RouteLabel::Passthrough,
        }
    }

    /// Whether this route is answered from the task cache (or watches it).
    pub fn is_cached(&self) -> bool {
        matches!(
            self,
            Route::Fetch(_) | Route::LongPoll(_) | Route::Events(_) | Route::Batch(_)
        )
    }

    /// Whether this is an operator's route, served on `admin_listen` when one is set.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Route::Health
                | Route::Ready
                | Route::Upstream
                | Route::Metrics
                | Route::AdminTasks(_)
                | Route::AdminConfig(_)
        )
    }
}

/// Which of the operator's config routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminConfigRoute {
    Show,
    Reload,
}

/// The operator's task routes.
pub const ADMIN_TASKS: &str = "/admin/tasks";
const ADMIN_TASKS_SLASH: &str = "/admin/tasks/";

/// Where upstreams call the gateway back (`webhooks.public_url` + this + a token).
pub const CALLBACK_PREFIX: &str = "/_mjgate/callback/";

/// Whether a query string asks to wait (`wait=...`; a bare `wait` is refused later as invalid).
pub fn asks_to_wait(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair == "wait" || pair.starts_with("wait="))
}

/// Classifies a request by its method, path, query (which makes a fetch a long-poll) and whether it
/// accepts `text/event-stream` (which makes a status route an event stream; admission reads that on
/// its pass over the headers).
#[inline]
pub fn classify<'a>(
    families: &Families,
    method: &Method,
    path: &'a str,
    query: Option<&'a str>,
    accepts_events: bool,
) -> Route<'a> {
    match (method, path) {
        (&Method::GET, "/healthz") => return Route::Health,
        (&Method::GET, "/readyz") => return Route::Ready,
        (&Method::GET, "/upstreamz") => return Route::Upstream,
        (&Method::GET, "/metrics") => return Route::Metrics,
        (_, "/admin/config") => return Route::AdminConfig(AdminConfigRoute::Show),
        (_, "/admin/reload") => return Route::AdminConfig(AdminConfigRoute::Reload),
        (_, path) if path == ADMIN_TASKS || path.starts_with(ADMIN_TASKS_SLASH) => {
            return Route::AdminTasks(&path[ADMIN_TASKS.len()..]);
        }
        (_, path) if path.starts_with(CALLBACK_PREFIX) => {
            return Route::Callback(&path[CALLBACK_PREFIX.len()..]);
        }
        (_, path) if path.starts_with(crate::artifacts::token::FILES_PREFIX) => {
            return Route::File(&path[crate::artifacts::token::FILES_PREFIX.len()..]);
        }
        _ => {}
    }
    match families.route(method, path, query) {
        None if method == Method::POST => match families.submit_route(path) {
            Some(submit) => Route::Submit(submit),
            None => Route::Passthrough,
        },
        None => Route::Passthrough,
        Some(Matched::Batch(family)) => Route::Batch(family),
        Some(Matched::Task { id: Err(e), .. }) => Route::BadTaskId(e),
        Some(Matched::Task {
            family,
            kind,
            id: Ok(id),
            at,
            events_by_accept,
        }) => {
            let route = TaskRoute {
                task: TaskRef { family, id },
                at,
            };
            if kind == RouteKind::Download {
                Route::Download(route)
            } else if method == Method::HEAD {
                Route::Passthrough
            } else if kind == RouteKind::Events || (events_by_accept && accepts_events) {
                Route::Events(route)
            } else if query.is_some_and(asks_to_wait) {
                Route::LongPoll(route)
            } else {
                Route::Fetch(route)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route as text: `fetch midjourney 123`, `batch suno`, `bad BadCharacter`, `passthrough`...
    fn route(method: Method, path: &str, query: Option<&str>) -> String {
        route_with(method, path, query, false)
    }

    fn route_with(method: Method, path: &str, query: Option<&str>, events: bool) -> String {
        let families = Families::builtin();
        let task = |kind: &str, t: TaskRoute<'_>| {
            let family = families.get(t.task.family).name().to_owned();
            format!("{kind} {family} {}", t.task.id.as_str())
        };
        match classify(&families, &method, path, query, events) {
            Route::Fetch(t) => task("fetch", t),
            Route::LongPoll(t) => task("long-poll", t),
            Route::Events(t) => task("events", t),
            Route::Batch(f) => format!("batch {}", families.get(f).name()),
            Route::BadTaskId(e) => format!("bad {e:?}"),
            Route::Health => "health".into(),
            Route::Ready => "ready".into(),
            Route::Upstream => "upstream".into(),
            Route::Submit(s) => format!("submit {}{}", families.get(s.family).name(), s.mode),
            Route::Metrics => "metrics".into(),
            Route::Passthrough => "passthrough".into(),
            Route::Callback(token) => format!("callback {token}"),
            Route::File(token) => format!("file {token}"),
            Route::AdminTasks(rest) => format!("admin-tasks {rest}"),
            Route::AdminConfig(route) => format!("admin-config {route:?}"),
            Route::Download(t) => task("download", t),
            Route::Refused(r) => format!("refused {r:?}"),
        }
    }

    #[test]
    fn fetches_with_and_without_a_mode() {
        assert_eq!(
            route(Method::GET, "/mj/task/123/fetch", None),
            "fetch midjourney 123"
        );
        assert_eq!(
            route(Method::GET, "/mj-fast/mj/task/123/fetch", None),
            "fetch midjourney 123"
        );
        assert_eq!(
            route(Method::GET, "/mj-relax/mj/task/123/fetch", None),
            "fetch midjourney 123"
        );
        assert_eq!(
            route(Method::GET, "/a/b/mj/task/123/fetch", None),
            "passthrough"
        );
    }

    #[test]
    fn bad_ids_are_caught_before_the_upstream() {
        assert_eq!(route(Method::GET, "/mj/task//fetch", None), "bad Empty");
        assert_eq!(
            route(Method::GET, "/mj/task/a%2Fb/fetch", None),
            "bad BadCharacter"
        );
        assert_eq!(
            route(Method::GET, "/mj/task/a/b/fetch", None),
            "bad BadCharacter"
        );
    }

    #[test]
    fn a_fetch_that_asks_to_wait_is_a_long_poll() {
        assert_eq!(
            route(Method::GET, "/mj/task/123/fetch", Some("wait=30s")),
            "long-poll midjourney 123"
        );
        assert_eq!(
            route(Method::GET, "/mj/task/123/fetch", Some("x=1&wait")),
            "long-poll midjourney 123"
        );
        assert_eq!(
            route(Method::GET, "/mj/task/123/fetch", Some("waiting=1")),
            "fetch midjourney 123"
        );
        assert_eq!(
            route(Method::GET, "/suno/fetch/s1", Some("wait=5s")),
            "long-poll suno s1"
        );
    }

    #[test]
    fn event_streams_are_asked_for_by_route_or_accept() {
        assert_eq!(
            route(Method::GET, "/mj-fast/mj/task/123/events", None),
            "events midjourney 123"
        );
        assert_eq!(
            route(Method::GET, "/mj/task/a/b/events", None),
            "bad BadCharacter"
        );
        assert_eq!(
            route(Method::POST, "/mj/task/123/events", None),
            "passthrough"
        );
        assert_eq!(
            route_with(Method::GET, "/v1/videos/v1", None, true),
            "events openai-videos v1"
        );
        assert_eq!(
            route_with(Method::GET, "/mj/task/1/fetch", None, true),
            "fetch midjourney 1",
            "midjourney keeps its own events route"
        );
        assert_eq!(
            route_with(Method::GET, "/v1/videos/v1", None, false),
            "fetch openai-videos v1"
        );
    }

    #[test]
    fn batches_and_the_rest() {
        assert_eq!(
            route(Method::POST, "/mj/task/list-by-condition", None),
            "batch midjourney"
        );
        assert_eq!(
            route(Method::POST, "/mj-turbo/mj/task/list-by-condition", None),
            "batch midjourney"
        );
        assert_eq!(route(Method::POST, "/suno/fetch", None), "batch suno");
        assert_eq!(
            route(Method::GET, "/mj/task/list-by-condition", None),
            "passthrough"
        );
        assert_eq!(route(Method::POST, "/mj/task/1/fetch", None), "passthrough");
        assert_eq!(
            route(Method::POST, "/mj/submit/imagine", None),
            "submit midjourney"
        );
        assert_eq!(
            route(Method::GET, "/mj/submit/imagine", None),
            "passthrough",
            "a submit is a POST"
        );
        assert_eq!(
            route(Method::GET, "/mj/task/1/image-seed", None),
            "passthrough"
        );
        assert_eq!(
            route(Method::GET, "/v1/videos/v1/content", None),
            "download openai-videos v1"
        );
        assert_eq!(
            route(Method::POST, "/v1/videos/v1/content", None),
            "passthrough"
        );
        assert_eq!(
            route(Method::HEAD, "/v1/videos/v1/content", None),
            "download openai-videos v1"
        );
        assert_eq!(route(Method::HEAD, "/mj/task/1/fetch", None), "passthrough");
        assert_eq!(route(Method::GET, "/healthz", None), "health");
        assert_eq!(route(Method::GET, "/readyz", None), "ready");
        assert_eq!(route(Method::GET, "/metrics", None), "metrics");
        assert_eq!(route(Method::GET, "/", None), "passthrough");
        assert_eq!(
            route(Method::POST, "/_mjgate/callback/0a1b", None),
            "callback 0a1b"
        );
        assert_eq!(
            route(Method::GET, "/_mjgate/callback/0a1b", None),
            "callback 0a1b",
            "the gateway's own, whatever the method (it answers 405)"
        );
        assert_eq!(
            route(Method::GET, "/_mjgate/files/AbC-_", None),
            "file AbC-_"
        );
    }
}
