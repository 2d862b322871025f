//! Server-sent events: `GET [/{mode}]/mj/task/{id}/events` streams a task's changes (RFC-less, per the
//! WHATWG EventSource format). The current state goes out at once, then one event per change
//! (`event: status` when the status changed, `event: progress` otherwise; the task JSON as data, its
//! ETag as the event id), then `event: end` when the task is terminal, and the stream closes.
//! `Last-Event-ID` on reconnect skips what the client already has; reconnecting after the end gets
//! `204 No Content`, which tells an EventSource to stop.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::body::ResponseBody;
use crate::cache::KeyBuf;
use crate::cache::status::CacheStatus;
use crate::family::{FamilyId, TaskRef};
use crate::fetch::Served;
use crate::metrics::EventKind;
use crate::push::Push;
use crate::push::watch::{Snapshot, WatchKind, WatchPermit, WatchTarget};
use crate::task::TaskClass;
use crate::upstream::ClientInfo;
use crate::work::WorkKind;

static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Asks nginx-style proxies not to buffer the stream.
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Events written ahead of a slow client before the writer waits for it.
const BACKLOG: usize = 16;

impl Push {
    pub(crate) async fn events(
        self: &Arc<Self>,
        request: &Request<Incoming>,
        task: TaskRef<'_>,
        fetch_path: String,
        client: ClientInfo,
    ) -> Served {
        let headers = request.headers();
        let fingerprint = self.fetcher.fingerprinter().fingerprint(headers);
        // Refused before any work: a client over the bound costs nothing upstream.
        let permit = match self
            .watchers
            .admit(fingerprint, WatchKind::Stream, &self.metrics)
        {
            Ok(permit) => permit,
            Err(e) => return Served::bypass(e.into_response()),
        };
        let served = self.fetcher.fetch(&fetch_path, headers, task, client).await;
        let key = KeyBuf::new(&fingerprint, task);
        // Not a task the client may see (unknown, another key's, an upstream error): that answer,
        // as a fetch would give it, instead of a stream.
        let current = match self.fetcher.cache().current(key.as_bytes()) {
            Some((task, _)) if served.response.status() == StatusCode::OK && task.is_task() => task,
            _ => return served,
        };
        let last_event_id = headers.get(&LAST_EVENT_ID).cloned();
        if current.class() == TaskClass::Terminal && last_event_id.as_ref() == Some(&current.etag) {
            return Served::cached(no_content(), CacheStatus::Hit { ttl: None }, None);
        }
        let (events, body) = mpsc::channel(BACKLOG);
        let target = WatchTarget {
            key: key.to_key(),
            path: fetch_path,
            headers: headers.clone(),
            task: (task.family, task.id.as_str().to_owned()),
            client,
        };
        let stream = Stream {
            push: Arc::clone(self),
            family: task.family,
            events,
            _permit: permit,
        };
        self.fetcher
            .work()
            .spawn(WorkKind::Stream, stream.run(target, current, last_event_id));
        Served {
            response: stream_head(body),
            ..served
        }
    }
}

/// One open stream: the writer's end of the body, and its place under the bounds.
struct Stream {
    push: Arc<Push>,
    /// The task's family, which says where its status is.
    family: FamilyId,
    events: mpsc::Sender<Bytes>,
    _permit: WatchPermit,
}

/// The stream is over: the client went away, or the task's last events are out. Either way the
/// writer stops.
struct Stop;

impl Stream {
    async fn run(
        mut self,
        target: WatchTarget,
        current: Snapshot,
        last_event_id: Option<HeaderValue>,
    ) {
        let mut sent = Arc::clone(&current);
        if last_event_id.as_ref() != Some(&current.etag)
            && self.send(EventKind::Status, &current).await.is_err()
        {
            return;
        }
        if self.finish_if_over(&current).await.is_err() {
            return;
        }
        let mut changes = self.push.watch(target, current);
        let mut draining = self.push.watchers.draining();
        let period = self.push.watchers.config().heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let latest = Arc::clone(&changes.borrow_and_update());
            if latest.etag != sent.etag {
                if self.write_change(&sent, &latest).await.is_err() {
                    return;
                }
                sent = latest;
                continue;
            }
            if *draining.borrow() {
                let _ = self
                    .write(EventKind::Shutdown, Bytes::from_static(SHUTDOWN))
                    .await;
                return;
            }
            tokio::select! {
                () = self.events.closed() => return,
                changed = changes.changed() => if changed.is_err() {
                    // The poller ended (the task is over): write what it knew last, then close.
                    let latest = Arc::clone(&changes.borrow());
                    if latest.etag != sent.etag {
                        let _ = self.write_change(&sent, &latest).await;
                    }
                    return;
                },
                _ = heartbeat.tick() => {
                    if self.events.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                }
                _ = draining.changed() => {}
            }
        }
    }

    /// Writes the event for a change from `before` to `after`; `Finished` once the task is over.
    async fn write_change(&mut self, before: &Snapshot, after: &Snapshot) -> Result<(), Stop> {
        if !after.is_task() {
            // The task vanished (the upstream now says it does not exist).
            self.send(EventKind::Error, after).await?;
            return Err(Stop);
        }
        let kind = if self.status_of(after) == self.status_of(before) {
            EventKind::Progress
        } else {
            EventKind::Status
        };
        self.send(kind, after).await?;
        self.finish_if_over(after).await
    }

    /// The task's status value, as its family reads it.
    fn status_of(&self, task: &Snapshot) -> String {
        let families = self.push.fetcher.families();
        families
            .get(self.family)
            .status_text(&task.body)
            .unwrap_or_default()
    }

    /// After a terminal state: `event: end`, and the stream closes.
    async fn finish_if_over(&mut self, task: &Snapshot) -> Result<(), Stop> {
        if task.class() == TaskClass::InProgress {
            return Ok(());
        }
        let data = serde_json::json!({ "status": self.status_of(task) }).to_string();
        self.write(
            EventKind::End,
            event("end", Some(&task.etag), data.as_bytes()),
        )
        .await?;
        Err(Stop)
    }

    async fn send(&mut self, kind: EventKind, task: &Snapshot) -> Result<(), Stop> {
        self.write(kind, event(kind.as_str(), Some(&task.etag), &task.body))
            .await
    }

    async fn write(&mut self, kind: EventKind, bytes: Bytes) -> Result<(), Stop> {
        self.events.send(bytes).await.map_err(|_| Stop)?;
        self.push.metrics.watch.event(kind);
        Ok(())
    }
}

/// The event at shutdown: reconnect in a second (to a replica that is not stopping).
const SHUTDOWN: &[u8] = b"event: shutdown\nretry: 1000\ndata: {}\n\n";

/// One event in the EventSource wire format; every line of `data` gets its own `data:` field.
pub fn event(name: &str, id: Option<&HeaderValue>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 64);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_u8(b'\n');
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split(|b| *b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

fn stream_head(body: mpsc::Receiver<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Events(body));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_ACCEL_BUFFERING.clone(), HeaderValue::from_static("no"));
    response
}

fn no_content() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_follow_the_eventsource_format() {
        let id = HeaderValue::from_static("\"t1\"");
        assert_eq!(
            event("status", Some(&id), b"{\"a\":1}"),
            "event: status\nid: \"t1\"\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            event("progress", None, b"{\r\n\"a\":1\n}"),
            "event: progress\ndata: {\ndata: \"a\":1\ndata: }\n\n",
            "each line of a pretty-printed body is its own data field"
        );
    }
}
