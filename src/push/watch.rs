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

use crate::body::Stored;
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

/// A stored answer, as readers of a watch get it.
pub type Snapshot = Arc<CachedTask>;

/// The latest answer a poller knows for its task: its identity always, its body while
/// `watch.max_memory` has room for it. Past the budget the answer is held weakly, alive only while
/// the cache keeps it: a watch then costs its task's tag, and a reader that finds the body gone reads
/// it again through the fetch core. So answers watchers hold beyond the cache are bounded in bytes, not
/// by the number of watched tasks times their size.
#[derive(Clone)]
pub struct Watched {
    pub etag: http::HeaderValue,
    class: TaskClass,
    pub stored_at: std::time::Instant,
    held: Held,
}

#[derive(Clone)]
enum Held {
    // The charge is given back when the last clone of this state goes.
    Strong(Snapshot, #[allow(dead_code)] Arc<SnapshotCharge>),
    Weak(std::sync::Weak<CachedTask>),
}

/// Bytes of one held answer under `watch.max_memory`, given back when the last reader lets it go.
struct SnapshotCharge {
    bytes: u64,
    held: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Drop for SnapshotCharge {
    fn drop(&mut self) {
        self.held
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
        self.metrics.watch.held(-(self.bytes as i64));
    }
}

impl Watched {
    pub fn class(&self) -> TaskClass {
        self.class
    }

    pub fn is_task(&self) -> bool {
        self.class.is_task()
    }

    pub fn is_finished(&self) -> bool {
        self.class == TaskClass::Terminal
    }

    /// The answer itself, if it is still held (by this watch or the cache).
    pub fn task(&self) -> Option<Snapshot> {
        match &self.held {
            Held::Strong(task, _) => Some(Arc::clone(task)),
            Held::Weak(task) => task.upgrade(),
        }
    }
}

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
    pollers: Mutex<HashMap<CacheKey, Weak<watch::Sender<Watched>>>>,
    open: Arc<Mutex<OpenCounts>>,
    config: WatchConfig,
    /// Turns `true` when shutdown begins: held long-polls answer, streams end.
    draining: watch::Sender<bool>,
    /// Bytes of answers held strongly by watches now, under `watch.max_memory`.
    held: Arc<std::sync::atomic::AtomicU64>,
    /// `watch.stream_buffer`: bytes of events handed to streams and not yet taken by their
    /// connections.
    stream_buffer: Arc<tokio::sync::Semaphore>,
    /// The charge of each event's data, by where its bytes are: one task's event goes to every
    /// stream of it with the same bytes, and is charged once however many streams hold it.
    shared_data: SharedCharges,
    metrics: Arc<Metrics>,
}

type SharedCharges = Arc<Mutex<HashMap<(usize, usize), Weak<StreamCharge>>>>;

/// The charge of one event's data, shared by the frames of every stream that holds it; it leaves the
/// map as the last frame goes.
struct SharedData {
    charge: Arc<StreamCharge>,
    key: (usize, usize),
    map: SharedCharges,
}

impl Drop for SharedData {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        // Only this frame's reference left (the map's is weak): the data's last holder is going.
        if Arc::strong_count(&self.charge) == 1
            && map
                .get(&self.key)
                .is_some_and(|weak| weak.as_ptr() == Arc::as_ptr(&self.charge))
        {
            map.remove(&self.key);
        }
    }
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
#[derive(Clone)]
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
            shared_data: Arc::default(),
            held: Arc::default(),
            metrics,
        }
    }

    /// `task` as a watch holds it: strongly while `watch.max_memory` has room for its bytes, weakly
    /// past it.
    pub fn hold(&self, task: &Snapshot) -> Watched {
        let bytes = (task.body.len() + task.gzipped().map_or(0, |g| g.body.len())) as u64;
        let charged = self
            .held
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |held| (held + bytes <= self.config.max_memory).then_some(held + bytes),
            )
            .is_ok();
        let held = if charged {
            self.metrics.watch.held(bytes as i64);
            Held::Strong(
                Arc::clone(task),
                Arc::new(SnapshotCharge {
                    bytes,
                    held: Arc::clone(&self.held),
                    metrics: Arc::clone(&self.metrics),
                }),
            )
        } else {
            Held::Weak(Arc::downgrade(task))
        };
        Watched {
            etag: task.etag.clone(),
            class: task.class(),
            stored_at: task.stored_at,
            held,
        }
    }

    /// Room for an event under `watch.stream_buffer`, waited for: `own` bytes of this stream's own
    /// (its `event:` and `id:` lines), and `data`, charged once for every stream that holds the same
    /// bytes. `None` only if the budget were closed. An event larger than the whole budget waits for
    /// all of it.
    pub async fn stream_charge(
        &self,
        own: usize,
        data: &bytes::Bytes,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        let own = self.charge_bytes(own).await?;
        if data.is_empty() {
            return Some(Box::new(own));
        }
        let key = (data.as_ptr() as usize, data.len());
        let held = self.shared_data.lock().get(&key).and_then(Weak::upgrade);
        let charge = match held {
            Some(charge) => charge,
            None => {
                let fresh = Arc::new(self.charge_bytes(data.len()).await?);
                let mut map = self.shared_data.lock();
                // Another stream of the task may have charged it meanwhile: theirs, and ours goes.
                match map.get(&key).and_then(Weak::upgrade) {
                    Some(theirs) => theirs,
                    None => {
                        map.insert(key, Arc::downgrade(&fresh));
                        fresh
                    }
                }
            }
        };
        Some(Box::new((
            own,
            SharedData {
                charge,
                key,
                map: Arc::clone(&self.shared_data),
            },
        )))
    }

    async fn charge_bytes(&self, bytes: usize) -> Option<StreamCharge> {
        let budget = usize::try_from(self.config.stream_buffer).unwrap_or(usize::MAX);
        let n = u32::try_from(bytes.min(budget)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.stream_buffer)
            .acquire_many_owned(n)
            .await
            .ok()?;
        self.metrics.watch.stream_buffered(i64::from(n));
        Some(StreamCharge {
            _permit: permit,
            bytes: i64::from(n),
            metrics: Arc::clone(&self.metrics),
        })
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
    fn retire(&self, key: &CacheKey, sender: &Arc<watch::Sender<Watched>>) -> bool {
        let mut pollers = self.pollers.lock();
        if sender.receiver_count() > 0 {
            return false;
        }
        remove_own_entry(&mut pollers, key, sender);
        true
    }

    /// Removes `sender`'s entry whoever still subscribes: its task is over.
    fn finish(&self, key: &CacheKey, sender: &Arc<watch::Sender<Watched>>) {
        let mut pollers = self.pollers.lock();
        remove_own_entry(&mut pollers, key, sender);
    }
}

/// Removes the entry for `key` if it is `sender`'s (a newer poller may have taken the key since).
fn remove_own_entry(
    pollers: &mut HashMap<CacheKey, Weak<watch::Sender<Watched>>>,
    key: &CacheKey,
    sender: &Arc<watch::Sender<Watched>>,
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
    /// The answer `watched` stands for: its own, the cache's (that state or a newer one), else read
    /// again through the fetch core (the cache, or one collapsed upstream call). `None` only when
    /// the task cannot be read now.
    pub(crate) async fn body_of(
        &self,
        watched: &Watched,
        target: &WatchTarget,
    ) -> Option<Snapshot> {
        if let Some(task) = watched.task() {
            return Some(task);
        }
        let key: &[u8] = std::borrow::Borrow::borrow(&target.key);
        let cached = |push: &Self| {
            push.fetcher
                .cache()
                .current(key)
                .map(|(task, _)| task)
                .filter(|task| task.stored_at >= watched.stored_at)
        };
        if let Some(task) = cached(self) {
            return Some(task);
        }
        let id = TaskId::parse(&target.task.1).ok()?;
        Box::pin(self.refresh(target, id)).await;
        cached(self).or_else(|| self.fetcher.cache().current(key).map(|(task, _)| task))
    }

    /// Hands a fresher answer to the task's poller, if the task is watched: its long-polls, streams
    /// and hooks see it at once (an upstream called back with it).
    pub(crate) fn announce(&self, key: &CacheKey, latest: &Snapshot) {
        let held = self.watchers.hold(latest);
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
                    *known = held;
                }
                newer
            });
        }
    }

    /// Subscribes to the poller of `target`'s task, starting one if none runs. `current` is the
    /// answer the caller holds: a newer one than the poller's moves every subscriber forward. Compare
    /// the receiver's value with what the client has, not only its change notices: the poller may
    /// already know something newer than `current`.
    pub(crate) fn watch(
        self: &Arc<Self>,
        target: WatchTarget,
        current: Snapshot,
    ) -> watch::Receiver<Watched> {
        let current = self.watchers.hold(&current);
        let mut pollers = self.watchers.pollers.lock();
        if let Some(sender) = pollers.get(&target.key).and_then(Weak::upgrade) {
            sender.send_if_modified(|known| {
                let newer = known.etag != current.etag
                    && current.stored_at > known.stored_at
                    && !known.is_finished();
                if newer {
                    *known = current.clone();
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
        sender: Arc<watch::Sender<Watched>>,
    ) {
        let _gauge = self.metrics.watch.watcher();
        let Ok(id) = TaskId::parse(&target.task.1) else {
            self.watchers.retire(&target.key, &sender);
            return;
        };
        let mut purged = self.fetcher.cache().purges();
        loop {
            let known = sender.borrow().clone();
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
                sender.send_replace(self.watchers.hold(latest));
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
                Ok(()) = purged.changed() => {
                    // An operator purged something: if it was this task, its held clients get
                    // the upstream's answer now, not at the purged entry's TTL.
                    let key: &[u8] = std::borrow::Borrow::borrow(&target.key);
                    if self.fetcher.cache().current(key).is_some() {
                        continue;
                    }
                }
            }
            if sender.receiver_count() == 0 && self.watchers.retire(&target.key, &sender) {
                return;
            }
            self.refresh(&target, id).await;
        }
    }

    /// Asks the fetch core for `target`'s task as the client that started the watch would (the
    /// cache, or one collapsed upstream call). Errors are the fetch path's to handle (stale answers,
    /// backoff); callers read what it left in the cache.
    pub(crate) async fn refresh(&self, target: &WatchTarget, id: TaskId<'_>) {
        let task = TaskRef {
            family: target.task.0,
            id,
        };
        let served = self
            .fetcher
            .fetch(&target.path, &target.headers, task, target.client)
            .await;
        drop(served);
    }
}
