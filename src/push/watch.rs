//! Watching tasks for long-polls and event streams: one poller per (credential fingerprint, task id),
//! however many clients watch it, and the bounds on how many may watch.
//!
//! A poller refreshes its task through the ordinary fetch path (cache, collapse, rate ceilings, 429
//! backoff), so it costs the upstream what one polling client would: at most one call per
//! `in_progress_ttl`, shared with plain pollers of the same task. It publishes each new answer on a
//! `tokio::sync::watch` channel, stops when the task is terminal (or not found), and retires the moment
//! its last subscriber goes.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::watch;

use crate::cache::{CacheKey, CachedTask};
use crate::config::WatchConfig;
use crate::credential::CredentialFingerprint;
use crate::error::RequestError;
use crate::family::{FamilyId, TaskRef};
use crate::metrics::{GaugeGuard, Metrics};
use crate::push::Push;
use crate::task::{TaskClass, TaskId};
use crate::upstream::ClientInfo;
use crate::work::WorkKind;

/// The latest answer a poller knows for its task.
pub type Snapshot = Arc<CachedTask>;

/// What a long-poll or a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    LongPoll,
    Stream,
}

/// The pollers, the open-watch counts and the drain signal, shared by all connections.
pub struct Watchers {
    /// Pollers by cache key. Each poller task owns its sender; entries are added by subscribers and
    /// removed by the poller as it retires, both under this lock, so nobody subscribes to a poller
    /// that is leaving.
    pollers: Mutex<HashMap<CacheKey, Weak<watch::Sender<Snapshot>>>>,
    open: Arc<Mutex<OpenCounts>>,
    config: WatchConfig,
    /// Turns `true` when shutdown begins: held long-polls answer, streams end.
    draining: watch::Sender<bool>,
    /// `watch.stream_buffer`: bytes of events handed to streams and not yet taken by their
    /// connections.
    stream_buffer: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

/// Bytes of one event under `watch.stream_buffer`, given back (and uncounted) on drop.
struct StreamCharge {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: i64,
    metrics: Arc<Metrics>,
}

impl Drop for StreamCharge {
    fn drop(&mut self) {
        self.metrics.watch.stream_buffered(-self.bytes);
    }
}

#[derive(Default)]
struct OpenCounts {
    total: usize,
    by_credential: HashMap<CredentialFingerprint, usize>,
}

/// A long-poll's or stream's place under the bounds; given back on drop.
pub struct WatchPermit {
    open: Arc<Mutex<OpenCounts>>,
    fingerprint: CredentialFingerprint,
    _gauge: GaugeGuard,
}

/// What a poller needs to refresh its task as the client that started it would.
pub struct WatchTarget {
    pub key: CacheKey,
    /// The upstream path of the task's status and the starting request's headers.
    pub path: String,
    pub headers: HeaderMap,
    /// The task's family and id.
    pub task: (FamilyId, String),
    pub client: ClientInfo,
}

impl Watchers {
    pub fn new(config: &WatchConfig, metrics: Arc<Metrics>) -> Self {
        let budget = usize::try_from(config.stream_buffer)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Watchers {
            pollers: Mutex::new(HashMap::new()),
            open: Arc::new(Mutex::new(OpenCounts::default())),
            config: config.clone(),
            draining: watch::channel(false).0,
            stream_buffer: Arc::new(tokio::sync::Semaphore::new(budget)),
            metrics,
        }
    }

    /// Room for an event of `bytes` under `watch.stream_buffer`, waited for; `None` only if the
    /// budget were closed. An event larger than the whole budget waits for all of it.
    pub async fn stream_charge(
        &self,
        bytes: usize,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        let budget = usize::try_from(self.config.stream_buffer).unwrap_or(usize::MAX);
        let n = u32::try_from(bytes.min(budget)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.stream_buffer)
            .acquire_many_owned(n)
            .await
            .ok()?;
        self.metrics.watch.stream_buffered(i64::from(n));
        Some(Box::new(StreamCharge {
            _permit: permit,
            bytes: i64::from(n),
            metrics: Arc::clone(&self.metrics),
        }))
    }

    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    /// Takes a place for one more long-poll or stream of `fingerprint`, or says which bound is reached.
    pub fn admit(
        &self,
        fingerprint: CredentialFingerprint,
        kind: WatchKind,
        metrics: &Metrics,
    ) -> Result<WatchPermit, RequestError> {
        let mut open = self.open.lock();
        let mine = open.by_credential.get(&fingerprint).copied().unwrap_or(0);
        let refused = if open.total >= self.config.max_open {
            Some("watch.max_open")
        } else if mine >= self.config.max_open_per_credential {
            Some("watch.max_open_per_credential")
        } else {
            None
        };
        if let Some(bound) = refused {
            metrics.watch.refused();
            return Err(RequestError::TooManyWatches(bound));
        }
        open.total += 1;
        *open.by_credential.entry(fingerprint).or_default() += 1;
        let gauge = match kind {
            WatchKind::LongPoll => metrics.watch.long_poll(),
            WatchKind::Stream => metrics.watch.stream(),
        };
        Ok(WatchPermit {
            open: Arc::clone(&self.open),
            fingerprint,
            _gauge: gauge,
        })
    }

    /// A receiver that sees `true` once shutdown has begun.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Removes `sender`'s entry if nobody subscribes to it any more; `false` when someone does.
    fn retire(&self, key: &CacheKey, sender: &Arc<watch::Sender<Snapshot>>) -> bool {
        let mut pollers = self.pollers.lock();
        if sender.receiver_count() > 0 {
            return false;
        }
        remove_own_entry(&mut pollers, key, sender);
        true
    }

    /// Removes `sender`'s entry whoever still subscribes: its task is over.
    fn finish(&self, key: &CacheKey, sender: &Arc<watch::Sender<Snapshot>>) {
        let mut pollers = self.pollers.lock();
        remove_own_entry(&mut pollers, key, sender);
    }
}

/// Removes the entry for `key` if it is `sender`'s (a newer poller may have taken the key since).
fn remove_own_entry(
    pollers: &mut HashMap<CacheKey, Weak<watch::Sender<Snapshot>>>,
    key: &CacheKey,
    sender: &Arc<watch::Sender<Snapshot>>,
) {
    if pollers
        .get(key)
        .is_some_and(|entry| std::ptr::eq(entry.as_ptr(), Arc::as_ptr(sender)))
    {
        pollers.remove(key);
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.by_credential.get_mut(&self.fingerprint) {
            *mine -= 1;
            if *mine == 0 {
                open.by_credential.remove(&self.fingerprint);
            }
        }
    }
}

impl Push {
    /// Subscribes to the poller of `target`'s task, starting one if none runs. `current` is the
    /// answer the caller holds: a newer one than the poller's moves every subscriber forward. Compare
    /// the receiver's value with what the client has, not only its change notices: the poller may
    /// already know something newer than `current`.
    /// Hands a fresher answer to the task's poller, if the task is watched: its long-polls, streams
    /// and hooks see it at once (an upstream called back with it).
    pub(crate) fn announce(&self, key: &CacheKey, latest: &Snapshot) {
        let sender = self
            .watchers
            .pollers
            .lock()
            .get(key)
            .and_then(Weak::upgrade);
        if let Some(sender) = sender {
            sender.send_if_modified(|known| {
                // A finished state is final: nothing replaces it, however it arrives.
                let newer = known.etag != latest.etag
                    && latest.stored_at >= known.stored_at
                    && !known.is_finished();
                if newer {
                    *known = Arc::clone(latest);
                }
                newer
            });
        }
    }

    pub(crate) fn watch(
        self: &Arc<Self>,
        target: WatchTarget,
        current: Snapshot,
    ) -> watch::Receiver<Snapshot> {
        let mut pollers = self.watchers.pollers.lock();
        if let Some(sender) = pollers.get(&target.key).and_then(Weak::upgrade) {
            sender.send_if_modified(|known| {
                let newer = known.etag != current.etag
                    && current.stored_at > known.stored_at
                    && !known.is_finished();
                if newer {
                    *known = Arc::clone(&current);
                }
                newer
            });
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(current);
        let sender = Arc::new(sender);
        pollers.insert(target.key.clone(), Arc::downgrade(&sender));
        drop(pollers);
        self.fetcher.work().spawn(
            WorkKind::Poller,
            Arc::clone(self).poll_watched(target, sender),
        );
        receiver
    }

    /// The poller: refreshes the task each time its answer goes stale, while anyone watches.
    async fn poll_watched(
        self: Arc<Self>,
        target: WatchTarget,
        sender: Arc<watch::Sender<Snapshot>>,
    ) {
        let _gauge = self.metrics.watch.watcher();
        let (family, id) = &target.task;
        let Ok(id) = TaskId::parse(id) else {
            self.watchers.retire(&target.key, &sender);
            return;
        };
        loop {
            let known = Arc::clone(&sender.borrow());
            if known.class() != TaskClass::InProgress {
                // Terminal or gone: nothing more will change. Subscribers keep the last value.
                self.watchers.finish(&target.key, &sender);
                return;
            }
            let cached = self
                .fetcher
                .cache()
                .current(std::borrow::Borrow::borrow(&target.key));
            if let Some((latest, _)) = &cached
                && latest.etag != known.etag
                && latest.stored_at >= known.stored_at
            {
                // Someone else refreshed it (a plain poll, a batch, another replica via Redis).
                sender.send_replace(Arc::clone(latest));
                continue;
            }
            let fresh_for = cached.map_or(Duration::ZERO, |(_, left)| left);
            // A stale or missing entry: the refresh just failed or was refused; try again in one TTL.
            let wait = if fresh_for.is_zero() {
                self.fetcher.cache().in_progress_ttl()
            } else {
                fresh_for
            };
            tokio::select! {
                () = sender.closed() => {
                    if self.watchers.retire(&target.key, &sender) {
                        return;
                    }
                    continue;
                }
                () = tokio::time::sleep(wait) => {}
            }
            if sender.receiver_count() == 0 && self.watchers.retire(&target.key, &sender) {
                return;
            }
            // Errors are the fetch path's to handle (stale answers, backoff); the poller only reads
            // what that left in the cache.
            let _ = self
                .fetcher
                .fetch(
                    &target.path,
                    &target.headers,
                    TaskRef {
                        family: *family,
                        id,
                    },
                    target.client,
                )
                .await;
        }
    }
}
