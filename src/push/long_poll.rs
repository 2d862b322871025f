//! Long-poll: `GET [/{mode}]/mj/task/{id}/fetch?wait=30s` answers at once when the task is terminal or
//! differs from the client's `If-None-Match` (or the client sent none), and otherwise holds the request
//! until the task changes or the wait ends. Clients that never send `wait` see a plain fetch.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::header::IF_NONE_MATCH;
use hyper::body::Incoming;

use crate::body::Stored as _;
use crate::cache::KeyBuf;
use crate::cache::conditional::none_match_hits;
use crate::cache::status::CacheStatus;
use crate::error::RequestError;
use crate::family::TaskRef;
use crate::fetch::Served;
use crate::push::Push;
use crate::push::watch::{WatchKind, WatchTarget};
use crate::task::TaskClass;
use crate::upstream::ClientInfo;

/// The `wait` a query asks for: whole seconds (`30`) or a humantime duration (`30s`, `1m`, `1500ms`).
pub fn requested_wait(query: &str) -> Result<Duration, RequestError> {
    let value = query
        .split('&')
        .find_map(|pair| match pair {
            "wait" => Some(""),
            _ => pair.strip_prefix("wait="),
        })
        .unwrap_or("");
    let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(value).ok()
    };
    parsed.ok_or_else(|| {
        RequestError::BadWait(format!(
            "`{}` is not a duration (`30s`, `1500ms`, or whole seconds)",
            value.escape_default()
        ))
    })
}

impl Push {
    /// A fetch with `?wait=`: the ordinary fetch first, then, if the client already holds that answer
    /// and the task is still in progress, a wait on the task's poller.
    pub(crate) async fn long_poll(
        self: &Arc<Self>,
        request: &Request<Incoming>,
        task: TaskRef<'_>,
        path: &str,
        client: ClientInfo,
    ) -> Served {
        let wait = match requested_wait(request.uri().query().unwrap_or("")) {
            Ok(wait) => wait.min(self.watchers.config().max_wait),
            Err(e) => return Served::bypass(e.into_response()),
        };
        let headers = request.headers();
        let served = self.fetcher.fetch(path, headers, task, client).await;
        let fingerprint = self.fetcher.fingerprinter().fingerprint(headers);
        let key = KeyBuf::new(&fingerprint, task);
        let Some((current, _)) = self.fetcher.cache().current(key.as_bytes()) else {
            return served;
        };
        // The client may hold either representation of the answer (identity or gzip).
        let held_by_client = headers.contains_key(IF_NONE_MATCH)
            && (none_match_hits(headers, &current.etag)
                || current
                    .gzipped()
                    .is_some_and(|gzipped| none_match_hits(headers, &gzipped.etag)))
            && served.response.headers().get(http::header::ETAG) == Some(&current.etag);
        if current.class() != TaskClass::InProgress || !held_by_client {
            return served;
        }
        // Not sent: a held long-poll keeps nothing it does not need while it waits.
        drop(served);
        let _permit = match self
            .watchers
            .admit(fingerprint, WatchKind::LongPoll, &self.metrics)
        {
            Ok(permit) => permit,
            Err(e) => return Served::bypass(e.into_response()),
        };
        let target = WatchTarget {
            key: key.to_key(),
            path: path.to_owned(),
            headers: headers.clone(),
            task: (task.family, task.id.as_str().to_owned()),
            client,
        };
        // Only its tag is kept while the poll is held: the body is the watch's to hold, in its budget.
        let current_tag = current.etag.clone();
        let mut changes = self.watch(target.clone(), current);
        let mut draining = self.watchers.draining();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        while changes.borrow_and_update().etag == current_tag && !*draining.borrow() {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = &mut deadline => break,
                _ = draining.changed() => {}
            }
        }
        let watched = changes.borrow().clone();
        let latest = match watched.task() {
            Some(task) => task,
            None => match self.body_of(&watched, &target).await {
                Some(task) => task,
                None => return self.fetcher.fetch(path, headers, task, client).await,
            },
        };
        let status = CacheStatus::Hit {
            ttl: self.fetcher.cache().fresh_left(&latest),
        };
        let latest = self
            .fetcher
            .for_client(latest, &key, task.family, headers, client.tls);
        // Unchanged: the handler's `If-None-Match` check turns this into `304`.
        Served::task(&latest, status, true, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_takes_seconds_or_humantime() {
        use crate::request::routes::asks_to_wait;
        assert!(asks_to_wait("wait=30s") && asks_to_wait("a=1&wait=5") && asks_to_wait("wait"));
        assert!(!asks_to_wait("waiter=1") && !asks_to_wait("t=1"));
        assert_eq!(requested_wait("wait=30").unwrap(), Duration::from_secs(30));
        assert_eq!(
            requested_wait("x=1&wait=1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(requested_wait("wait=1m").unwrap(), Duration::from_secs(60));
        for bad in ["wait", "wait=", "wait=soon", "wait=-3"] {
            assert!(requested_wait(bad).is_err(), "{bad}");
        }
    }
}
