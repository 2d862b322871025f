//! Server-sent events: `GET [/{mode}]/mj/task/{id}/events` streams a task's changes (RFC-less, per the
//! WHATWG EventSource format). The current state goes out at once, then one event per change
//! (`event: status` when the status changed, `event: progress` otherwise; the task JSON as data, its
//! ETag as the event id), then `event: end` when the task is terminal, and the stream closes.
//! `Last-Event-ID` on reconnect skips what the client already has; reconnecting after the end gets
//! `204 No Content`, which tells an EventSource to stop.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::body::{CutOff, EventFrame, Events, ResponseBody};
use crate::cache::KeyBuf;
use crate::cache::status::CacheStatus;
use crate::family::{FamilyId, TaskRef};
use crate::fetch::Served;
use crate::metrics::EventKind;
use crate::push::Push;
use crate::push::watch::{Snapshot, WatchKind, WatchPermit, WatchTarget, Watched};
use crate::upstream::ClientInfo;
use crate::work::WorkKind;

static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Asks nginx-style proxies not to buffer the stream.
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

impl Push {
    pub(crate) async fn events(
        self: &Arc<Self>,
        request: &Request<Incoming>,
        task: TaskRef<'_>,
        fetch_path: String,
        client: ClientInfo,
        connection: Arc<CutOff>,
    ) -> Served {
        let headers = request.headers();
        let fingerprint = self.fetcher.fingerprinter().fingerprint(headers);
        // Refused before any work: a client over the bound costs nothing upstream.
        let permit = match self
            .watchers
            .admit(fingerprint, WatchKind::Stream, &self.metrics)
        {
            Ok(permit) => permit,
            Err(e) => return Served::error(e),
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
        if current.is_finished() && last_event_id.as_ref() == Some(&current.etag) {
            return Served::cached(no_content(), CacheStatus::Hit { ttl: None }, None);
        }
        // One event waits for the connection at most: a newer state replaces what a slow reader
        // has not taken yet rather than queue behind it.
        let (events, body) = mpsc::channel(1);
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
            connection,
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

/// One open stream: the writer's end of the body, its connection, and its place under the bounds.
struct Stream {
    push: Arc<Push>,
    /// The task's family, which says where its status is.
    family: FamilyId,
    events: mpsc::Sender<EventFrame>,
    /// Cut off when the reader falls behind: everything the connection holds for it goes.
    connection: Arc<CutOff>,
    _permit: WatchPermit,
}

/// The last state a stream sent: its tag and status.
struct Sent {
    etag: HeaderValue,
    status: String,
}

/// The stream is over: the client went away, fell behind, or the task's last events are out.
/// Either way the writer stops.
struct Stop;

/// Room for one event on a stream, and its bytes under `watch.stream_buffer`.
struct Room {
    permit: mpsc::OwnedPermit<EventFrame>,
}

impl Stream {
    async fn run(
        mut self,
        target: WatchTarget,
        current: Snapshot,
        last_event_id: Option<HeaderValue>,
    ) {
        let ended = self.stream(target, current, last_event_id).await;
        let draining = *self.push.watchers.draining().borrow();
        if ended.is_err() && !draining && !self.events.is_closed() {
            // The last event may still wait in the channel, charged: the reader gets as long to
            // take it as it would any other, else its connection goes (and the charge with it),
            // rather than an idle connection pinning it for ever with no writer left to notice.
            if tokio::time::timeout(self.behind(), self.events.reserve())
                .await
                .is_err()
            {
                self.cut_off();
            }
        }
    }

    async fn stream(
        &mut self,
        target: WatchTarget,
        current: Snapshot,
        last_event_id: Option<HeaderValue>,
    ) -> Result<(), Stop> {
        // What was sent last, by tag and status: a stream keeps no body of its own between events.
        let mut sent = Sent {
            etag: current.etag.clone(),
            status: self.status_of(&current),
        };
        if last_event_id.as_ref() != Some(&current.etag) {
            self.send(EventKind::Status, &current).await?;
        }
        self.finish_if_over(&current).await?;
        let mut changes = self.push.watch(target.clone(), current);
        let mut draining = self.push.watchers.draining();
        let period = self.push.watchers.config().heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let latest = changes.borrow_and_update().etag.clone();
            if latest != sent.etag {
                // Whatever is newest once there is room: a slow reader skips what it missed.
                sent = self.write_change(&sent, &mut changes, &target).await?;
                continue;
            }
            if *draining.borrow() {
                let room = self.room().await?;
                self.put(
                    room,
                    EventKind::Shutdown,
                    frame_of(SHUTDOWN, Bytes::new(), ""),
                )
                .await?;
                return Err(Stop);
            }
            tokio::select! {
                () = self.events.closed() => return Err(Stop),
                changed = changes.changed() => if changed.is_err() {
                    // The poller ended (the task is over): write what it knew last, then close.
                    if changes.borrow().etag != sent.etag {
                        self.write_change(&sent, &mut changes, &target).await?;
                    }
                    return Err(Stop);
                },
                _ = heartbeat.tick() => {
                    let room = self.room().await?;
                    let _ = room.permit.send(EventFrame {
                        head: Bytes::from_static(b": keep-alive\n\n"),
                        data: Bytes::new(),
                        tail: b"",
                        charge: None,
                    });
                }
                _ = draining.changed() => {}
            }
        }
    }

    /// Room for the next event: waited for at most two heartbeats, then the reader is taken for one
    /// that stopped reading and its connection is cut off (counted).
    async fn room(&mut self) -> Result<Room, Stop> {
        let behind = self.behind();
        match tokio::time::timeout(behind, self.events.clone().reserve_owned()).await {
            Ok(Ok(permit)) => Ok(Room { permit }),
            Ok(Err(_)) => Err(Stop),
            Err(_) => Err(self.cut_off()),
        }
    }

    /// How long a reader may leave an event untaken before it is cut off.
    fn behind(&self) -> Duration {
        self.push.watchers.config().heartbeat * 2
    }

    fn cut_off(&self) -> Stop {
        self.push.metrics.watch.stream_cut();
        tracing::debug!("event stream cut off: its reader fell behind");
        self.connection.cut();
        Stop
    }

    /// Writes the event for the change from `before` to the newest state `changes` holds once there is
    /// room (its body read again if the watch no longer holds it); ends the stream after the finished
    /// state. What it sent.
    async fn write_change(
        &mut self,
        before: &Sent,
        changes: &mut tokio::sync::watch::Receiver<Watched>,
        target: &WatchTarget,
    ) -> Result<Sent, Stop> {
        let room = self.room().await?;
        let watched = changes.borrow_and_update().clone();
        let Some(after) = self.push.body_of(&watched, target).await else {
            // Not readable now: the next change or heartbeat tries again.
            return Ok(Sent {
                etag: before.etag.clone(),
                status: before.status.clone(),
            });
        };
        if !after.is_task() {
            // The task vanished (the upstream now says it does not exist).
            self.put_task(room, EventKind::Error, &after).await?;
            return Err(Stop);
        }
        let status = self.status_of(&after);
        let kind = if status == before.status {
            EventKind::Progress
        } else {
            EventKind::Status
        };
        self.put_task(room, kind, &after).await?;
        self.finish_if_over(&after).await?;
        Ok(Sent {
            etag: after.etag.clone(),
            status,
        })
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
        if !task.is_finished() {
            return Ok(());
        }
        let data = serde_json::json!({ "status": self.status_of(task) }).to_string();
        let room = self.room().await?;
        self.put(
            room,
            EventKind::End,
            frame_of(
                &[event_head("end", Some(&task.etag)).as_slice(), b"data: "].concat(),
                Bytes::from(data),
                "\n\n",
            ),
        )
        .await?;
        Err(Stop)
    }

    async fn send(&mut self, kind: EventKind, task: &Snapshot) -> Result<(), Stop> {
        let room = self.room().await?;
        self.put_task(room, kind, task).await
    }

    /// `task` as event `kind`, its data shared with every other stream of the task.
    async fn put_task(&mut self, room: Room, kind: EventKind, task: &Snapshot) -> Result<(), Stop> {
        let head = event_head(kind.as_str(), Some(&task.etag));
        let frame = match task.event_data(data_lines) {
            // A body of one line: the event's data is the upstream's own bytes, not a copy.
            None => frame_of(
                &[head.as_slice(), b"data: "].concat(),
                task.body.clone(),
                "\n\n",
            ),
            Some(lines) => frame_of(&head, lines, "\n"),
        };
        self.put(room, kind, frame).await
    }

    /// Charges `frame` to `watch.stream_buffer` and hands it to the connection. A full budget is
    /// waited on like a full stream: the slowest readers are cut off and give theirs back.
    async fn put(
        &mut self,
        room: Room,
        kind: EventKind,
        mut frame: EventFrame,
    ) -> Result<(), Stop> {
        let own = frame.head.len() + frame.tail.len();
        let behind = self.behind();
        let charge = self.push.watchers.stream_charge(own, &frame.data);
        match tokio::time::timeout(behind, charge).await {
            Ok(Some(charge)) => frame.charge = Some(charge),
            _ => return Err(self.cut_off()),
        }
        if room.permit.send(frame).is_closed() {
            return Err(Stop);
        }
        self.push.metrics.watch.event(kind);
        Ok(())
    }
}

/// An event's own lines: `event:` and, when it has one, `id:`.
fn event_head(name: &str, id: Option<&HeaderValue>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out
}

fn frame_of(head: &[u8], data: Bytes, tail: &'static str) -> EventFrame {
    EventFrame {
        head: Bytes::copy_from_slice(head),
        data,
        tail: tail.as_bytes(),
        charge: None,
    }
}

/// The event at shutdown: reconnect in a second (to a replica that is not stopping).
const SHUTDOWN: &[u8] = b"event: shutdown\nretry: 1000\ndata: {}\n\n";

/// `data` as an event stream's `data:` lines: every line of it (ended by LF, CRLF or CR, as an
/// EventSource reads them) its own field.
pub fn data_lines(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 64);
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        for part in line.split(|b| *b == b'\r') {
            out.put_slice(b"data: ");
            out.put_slice(part);
            out.put_u8(b'\n');
        }
    }
    out.freeze()
}

/// One event in the EventSource wire format; every line of `data` gets its own `data:` field.
pub fn event(name: &str, id: Option<&HeaderValue>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::from(event_head(name, id).as_slice());
    out.put_slice(&data_lines(data));
    out.put_u8(b'\n');
    out.freeze()
}

fn stream_head(body: mpsc::Receiver<EventFrame>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Events(Events::new(body)));
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
