//! The task cache: one entry per (credential fingerprint, task id), holding the upstream's bytes.
//!
//! Freshness is decided here, from the entry's class and age, not by moka: moka only bounds memory
//! (weigher and eviction) and drops entries once no rule can serve them any more. A terminal task is
//! fresh for ever; an in-progress one for `in_progress_ttl`.

pub mod conditional;
pub mod encoding;
pub mod response;
pub mod status;

use std::borrow::Borrow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use moka::Expiry;
use moka::sync::Cache;

use crate::body::Stored;
use crate::cache::conditional::etag_of;
use crate::config::CacheConfig;
use crate::credential::{CredentialFingerprint, FINGERPRINT_LEN};
use crate::family::{FamilyId, TaskRef};
use crate::gzip::Gzipped;
use crate::metrics::Metrics;
use crate::task::{MAX_ID_LEN, TaskClass};

/// Bytes charged per entry on top of its key, body and ETag text: moka's own bookkeeping (entry info,
/// deque nodes, hash-table slot), the `Arc<CachedTask>`, the shared-buffer headers of the body and the
/// ETag, the entry's expiry and task span, and its slot for a gzip copy (whose own bytes
/// [`Gzipped::weight`] charges), and its slot for an event stream's framing. Measured: a cache of 100,000 terminal tasks of 1,158 bytes, stored
/// without gzip copies, grew the process by 1,931 bytes per entry (docs/benchmarks.md, Memory); this
/// charges 1,931, so `cache.max_memory` bounds real memory, not just payload.
const ENTRY_OVERHEAD: usize = 676;

/// How cache keys are hashed: foldhash, randomly seeded per process. SipHash (the default) cost a hit
/// about 175 instructions; foldhash about a quarter of that. Flooding one bucket would need keys whose
/// hashes collide, and every key starts with a keyed fingerprint the client cannot compute.
type KeyHasher = foldhash::fast::RandomState;

/// An owned cache key: the fingerprint's bytes, the task family's number, then the task id's bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Box<[u8]>);

impl CacheKey {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        CacheKey(bytes.into())
    }
}

impl Borrow<[u8]> for CacheKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = self.0.get(FINGERPRINT_LEN).copied().unwrap_or_default();
        let id = String::from_utf8_lossy(self.0.get(FINGERPRINT_LEN + 1..).unwrap_or_default());
        write!(f, "CacheKey({family}:{id})")
    }
}

/// Which entries an operator's purge or inspection names: a family's, one task's, and of those the
/// ones of credentials whose fingerprint starts with `credential` (hex); `None` for any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub family: Option<FamilyId>,
    pub id: Option<&'a str>,
    pub credential: Option<&'a str>,
}

impl Scope<'_> {
    /// Whether the entry under `key` is in scope.
    pub fn matches(&self, key: &[u8]) -> bool {
        let Some((fingerprint, rest)) = key.split_at_checked(FINGERPRINT_LEN) else {
            return false;
        };
        let Some((family, id)) = rest.split_first() else {
            return false;
        };
        self.family.is_none_or(|f| f.0 == *family)
            && self.id.is_none_or(|want| want.as_bytes() == id)
            && self.credential.is_none_or(|prefix| {
                crate::hex::to_hex(fingerprint).starts_with(&prefix.to_ascii_lowercase())
            })
    }
}

/// A cache key built on the stack, so a lookup allocates nothing.
pub struct KeyBuf {
    bytes: [u8; FINGERPRINT_LEN + 1 + MAX_ID_LEN],
    len: usize,
}

impl KeyBuf {
    pub fn new(fingerprint: &CredentialFingerprint, task: TaskRef<'_>) -> Self {
        let id = task.id.as_str().as_bytes();
        let mut bytes = [0u8; FINGERPRINT_LEN + 1 + MAX_ID_LEN];
        bytes[..FINGERPRINT_LEN].copy_from_slice(fingerprint.as_bytes());
        bytes[FINGERPRINT_LEN] = task.family.0;
        // TaskId guarantees id.len() <= MAX_ID_LEN.
        bytes[FINGERPRINT_LEN + 1..FINGERPRINT_LEN + 1 + id.len()].copy_from_slice(id);
        KeyBuf {
            bytes,
            len: FINGERPRINT_LEN + 1 + id.len(),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn to_key(&self) -> CacheKey {
        CacheKey::from_bytes(self.as_bytes())
    }
}

/// One stored answer for a task id: exactly the upstream's status and bytes, served without re-parsing.
///
/// What the answer *is* lives in one place, `class`: a task object (finished or running) or the
/// upstream's "no such task". Every reader asks [`is_task`](Self::is_task) or
/// [`class`](Self::class); the HTTP status is derived from it (a "no such task" keeps the upstream's
/// own status, which may be `200`: new-api answers `{"code":3,"description":"task_no_found"}`).
#[derive(Debug)]
pub struct CachedTask {
    class: TaskClass,
    /// The status a "no such task" answer came with; `200` for a task object.
    status: StatusCode,
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
    pub stored_at: Instant,
    /// The strong tag of `body`, computed once when stored, sent with every answer.
    pub etag: HeaderValue,
    /// When a finished answer stops being servable (its result expires, or its family's
    /// `finished_ttl`); never served past it, not even stale.
    pub keep_until: Option<Instant>,
    /// Where the task object sits in `body` (all of it but in an envelope like new-api's), for
    /// batch answers built from stored tasks.
    task_span: (u32, u32),
    /// The gzip copy of a `200` answer, made once when the entry is stored (`cache.gzip`); empty
    /// until then, `None` inside when the answer is too short to be worth it.
    gzip: OnceLock<Option<Box<Gzipped>>>,
    /// Where this answer's links to kept files start (`http://host:port`), when it has them; a client
    /// that reached the gateway by another name gets them rebased to its own.
    pub files_base: Option<Arc<str>>,
    /// A finished answer stored with nobody's `Host` to build links on (a callback, another
    /// replica's answer): its files are kept when a client next asks for it.
    files_pending: std::sync::atomic::AtomicBool,
    /// The body as server-sent `data:` lines, made once on the first stream's first event and
    /// shared by every stream of the task, for a body of several lines (one of a single line is sent
    /// as it is).
    event_data: OnceLock<Option<Bytes>>,
}

impl CachedTask {
    /// A task object (`200`) of `class` (`Terminal` or `InProgress`; a `NotFound` class is taken
    /// for a `200` "no such task").
    pub fn new(body: Bytes, content_type: Option<HeaderValue>, class: TaskClass) -> Self {
        CachedTask {
            status: StatusCode::OK,
            etag: etag_of(&body),
            task_span: whole(&body),
            body,
            content_type,
            class,
            stored_at: Instant::now(),
            keep_until: None,
            gzip: OnceLock::new(),
            files_base: None,
            files_pending: std::sync::atomic::AtomicBool::new(false),
            event_data: OnceLock::new(),
        }
    }

    /// What the answer is: a finished task, a running one, or "no such task".
    #[inline]
    pub fn class(&self) -> TaskClass {
        self.class
    }

    /// Whether the answer is a task object (finished or running), not "no such task": the one
    /// question watchers, streams, hook trackers and batches ask of a stored answer.
    #[inline]
    pub fn is_task(&self) -> bool {
        self.class != TaskClass::NotFound
    }

    /// Whether the answer is a finished task: final, never replaced by a running state.
    #[inline]
    pub fn is_finished(&self) -> bool {
        self.class == TaskClass::Terminal
    }

    /// The status the answer is served with: `200` for a task, the upstream's own for "no such task".
    #[inline]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// This answer, never served after `keep_until`.
    pub fn keep_until(mut self, keep_until: Option<Instant>) -> Self {
        self.keep_until = keep_until;
        self
    }

    /// This answer, its task object at `span` of the body (ignored if out of bounds).
    pub fn task_at(mut self, span: std::ops::Range<usize>) -> Self {
        if span.start <= span.end && span.end <= self.body.len() {
            self.task_span = (span.start as u32, span.end as u32);
        }
        self
    }

    /// The task object's bytes (the whole body unless the API wraps it in an envelope).
    pub fn task_bytes(&self) -> &[u8] {
        let (start, end) = self.task_span;
        &self.body[start as usize..end as usize]
    }

    /// Where the task object sits in the body.
    pub fn task_span(&self) -> std::ops::Range<usize> {
        self.task_span.0 as usize..self.task_span.1 as usize
    }

    /// Whether this answer has outlived what it says about its own result.
    pub fn expired(&self, now: Instant) -> bool {
        self.keep_until.is_some_and(|until| until <= now)
    }

    /// The upstream's "no such task" answer, kept as it came.
    pub fn not_found(status: StatusCode, body: Bytes, content_type: Option<HeaderValue>) -> Self {
        CachedTask {
            status,
            etag: etag_of(&body),
            task_span: whole(&body),
            body,
            content_type,
            class: TaskClass::NotFound,
            stored_at: Instant::now(),
            keep_until: None,
            gzip: OnceLock::new(),
            files_base: None,
            files_pending: std::sync::atomic::AtomicBool::new(false),
            event_data: OnceLock::new(),
        }
    }

    /// An answer the upstream produced `age` ago (read back from the shared tier); `None` when its
    /// status and class disagree (a task object is always `200`; "no such task" is 2xx-5xx).
    pub fn restored(
        status: StatusCode,
        body: Bytes,
        content_type: Option<HeaderValue>,
        class: TaskClass,
        age: Duration,
    ) -> Option<Self> {
        let consistent = match class {
            TaskClass::NotFound => (200..600).contains(&status.as_u16()),
            _ => status == StatusCode::OK,
        };
        if !consistent {
            return None;
        }
        let now = Instant::now();
        Some(CachedTask {
            status,
            etag: etag_of(&body),
            task_span: whole(&body),
            body,
            content_type,
            class,
            stored_at: now.checked_sub(age).unwrap_or(now),
            keep_until: None,
            gzip: OnceLock::new(),
            files_base: None,
            files_pending: std::sync::atomic::AtomicBool::new(false),
            event_data: OnceLock::new(),
        })
    }

    /// This finished answer with `body` in place of its own (its result links rewritten to the
    /// gateway's), the task object at `span`, servable until `keep_until`; produced when this was.
    pub fn rewritten(
        &self,
        body: Bytes,
        span: Option<std::ops::Range<usize>>,
        keep_until: Option<Instant>,
        files_base: Option<Arc<str>>,
    ) -> Self {
        let mut task = CachedTask {
            status: self.status,
            etag: etag_of(&body),
            task_span: whole(&body),
            body,
            content_type: self.content_type.clone(),
            class: self.class,
            stored_at: self.stored_at,
            keep_until,
            gzip: OnceLock::new(),
            files_base,
            files_pending: std::sync::atomic::AtomicBool::new(false),
            event_data: OnceLock::new(),
        };
        if let Some(span) = span {
            task = task.task_at(span);
        }
        task
    }

    /// Whether this finished answer's files wait for a client's `Host` to be kept.
    #[inline]
    pub fn files_pending(&self) -> bool {
        self.files_pending
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks (or clears) that this answer's files wait for a client's `Host`; whether they did.
    pub fn set_files_pending(&self, pending: bool) -> bool {
        self.files_pending
            .swap(pending, std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes the gzip copy of a `200` answer, once; the cache does it before it weighs the entry.
    pub fn prepare_gzip(&self) {
        self.gzip.get_or_init(|| {
            self.is_task()
                .then(|| Gzipped::of(&self.body, &self.etag))
                .flatten()
                .map(Box::new)
        });
    }

    /// The body framed as event-stream data by `frame` (once, then shared), when it has more than one
    /// line; `None` when it is one line and can be sent as it is.
    pub fn event_data(&self, frame: impl FnOnce(&[u8]) -> Bytes) -> Option<Bytes> {
        self.event_data
            .get_or_init(|| {
                self.body
                    .iter()
                    .any(|b| matches!(b, b'\n' | b'\r'))
                    .then(|| frame(&self.body))
            })
            .clone()
    }

    /// Whole seconds since the upstream produced this answer, for the `Age` header.
    pub fn age(&self) -> u64 {
        self.stored_at.elapsed().as_secs()
    }
}

impl Stored for CachedTask {
    fn identity(&self) -> &Bytes {
        &self.body
    }

    /// The gzip copy, when one was made.
    fn gzipped(&self) -> Option<&Gzipped> {
        self.gzip.get().and_then(Option::as_deref)
    }
}

/// What a lookup found.
pub enum Lookup {
    /// Servable as is. `ttl` is the freshness left, `None` for a terminal task.
    Fresh {
        task: Arc<CachedTask>,
        ttl: Option<Duration>,
    },
    /// An in-progress answer past its TTL but within `cache.max_stale`: refetched, and served in place of
    /// an upstream error.
    Stale(Arc<CachedTask>),
    Miss,
}

impl Lookup {
    /// The stale answer to fall back on, if any.
    pub fn stale(self) -> Option<Arc<CachedTask>> {
        match self {
            Lookup::Stale(task) => Some(task),
            _ => None,
        }
    }
}

/// The bounded, credential-partitioned task cache. Cheap to clone.
#[derive(Clone)]
pub struct TaskCache {
    entries: Cache<CacheKey, Arc<CachedTask>, KeyHasher>,
    /// Keys whose refresh just failed while a stale answer stood in, with the failure's status: their
    /// next refresh waits one in-progress TTL, so a failing upstream still sees at most one call per
    /// task per TTL window however often clients poll.
    refresh_deferred: Cache<CacheKey, u16>,
    lifetime: Lifetime,
    /// Entry counts and bytes by class, kept here on insert and by moka's eviction listener on removal.
    metrics: Arc<Metrics>,
    /// `cache.gzip`: entries get their gzip copy as they are stored.
    gzip: bool,
    /// Counts purges that removed something: the pollers behind held long-polls and streams wake on
    /// it, so a purged task is fetched again at once instead of at its old TTL.
    purges: tokio::sync::watch::Sender<u64>,
}

/// What an entry costs against the memory budget.
fn weigh(key: &CacheKey, task: &CachedTask) -> u32 {
    let bytes = key.0.len()
        + task.body.len()
        + task.content_type.as_ref().map_or(0, HeaderValue::len)
        + task.etag.len()
        + task.gzipped().map_or(0, Gzipped::weight)
        + ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl TaskCache {
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Self {
        let on_removal = Arc::clone(&metrics);
        let lifetime = Lifetime::default();
        lifetime.set(config);
        let entries = Cache::builder()
            .max_capacity(config.max_memory)
            .weigher(|key: &CacheKey, task: &Arc<CachedTask>| weigh(key, task))
            .expire_after(lifetime.clone())
            // TinyLFU (moka's default, named so it stays): a new entry gets in only when it is asked
            // for more often than the entries it would push out, so a flood of one-off ids cannot evict
            // the tasks clients keep polling.
            .eviction_policy(moka::policy::EvictionPolicy::tiny_lfu())
            // Called for every entry that leaves, replaced ones included, so the class gauges stay exact.
            .eviction_listener(move |key: Arc<CacheKey>, task: Arc<CachedTask>, _cause| {
                on_removal.cache_removed(task.class(), weigh(&key, &task));
            })
            .build_with_hasher(KeyHasher::default());
        let refresh_deferred = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.in_progress_ttl)
            .build();
        TaskCache {
            entries,
            refresh_deferred,
            lifetime,
            metrics,
            gzip: config.gzip,
            purges: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn lookup(&self, key: &[u8]) -> Lookup {
        let Some(task) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        let Some(fresh_for) = self.lifetime.fresh_for(task.class()) else {
            return match task.keep_until {
                None => Lookup::Fresh { task, ttl: None },
                // A finished answer that said when its result expires: fresh until then, never stale.
                Some(until) => match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Lookup::Fresh {
                        task,
                        ttl: Some(left),
                    },
                    _ => Lookup::Miss,
                },
            };
        };
        let age = task.stored_at.elapsed();
        match fresh_for.checked_sub(age) {
            Some(left) if !left.is_zero() => Lookup::Fresh {
                task,
                ttl: Some(left),
            },
            _ if task.class() == TaskClass::InProgress
                && age < fresh_for + self.lifetime.max_stale() =>
            {
                Lookup::Stale(task)
            }
            _ => Lookup::Miss,
        }
    }

    /// The answer held for `key`, fresh or stale, with how long it stays fresh (`Duration::MAX` for a
    /// terminal task, zero once stale): what a watcher has to go on between polls.
    pub fn current(&self, key: &[u8]) -> Option<(Arc<CachedTask>, Duration)> {
        match self.lookup(key) {
            Lookup::Fresh { task, ttl } => Some((task, ttl.unwrap_or(Duration::MAX))),
            Lookup::Stale(task) => Some((task, Duration::ZERO)),
            Lookup::Miss => None,
        }
    }

    /// How long `task` stays fresh from now: `None` for a terminal task (as `Lookup::Fresh` says it).
    pub fn fresh_left(&self, task: &CachedTask) -> Option<Duration> {
        let Some(fresh_for) = self.lifetime.fresh_for(task.class()) else {
            return task
                .keep_until
                .map(|until| until.saturating_duration_since(Instant::now()));
        };
        Some(fresh_for.saturating_sub(task.stored_at.elapsed()))
    }

    pub fn in_progress_ttl(&self) -> Duration {
        self.lifetime.in_progress_ttl()
    }

    /// Takes a reloaded config's TTLs (`in_progress_ttl`, `not_found_ttl`, `max_stale`): lookups
    /// judge every entry by them from now on, those already held included.
    pub fn set_lifetime(&self, config: &CacheConfig) {
        self.lifetime.set(config);
    }

    /// Defers refreshing `key` for one in-progress TTL after a refresh failed with `status`.
    pub fn defer_refresh(&self, key: &[u8], status: u16) {
        self.refresh_deferred
            .insert(CacheKey::from_bytes(key), status);
    }

    /// The status of the failure deferring a refresh of `key`, if one is.
    pub fn refresh_deferred(&self, key: &[u8]) -> Option<u16> {
        self.refresh_deferred.get(key)
    }

    /// Stores `task` for `key` and returns what the cache holds for it now: `task`, or the finished
    /// answer already held (a finished state is final: a running state, another finished one or a
    /// "no such task" that arrives later, from a late callback or a slow replica, does not replace it
    /// while it is servable; counted in `mjgate_cache_final_kept_total`).
    pub fn insert(&self, key: CacheKey, task: Arc<CachedTask>) -> Arc<CachedTask> {
        if let Some(held) = self.entries.get(&key)
            && held.is_finished()
            && !held.expired(Instant::now())
            && held.etag != task.etag
        {
            self.metrics.cache_final_kept();
            return held;
        }
        if self.gzip {
            task.prepare_gzip();
        }
        self.metrics.cache_added(task.class(), weigh(&key, &task));
        self.refresh_deferred.invalidate(&key);
        self.entries.insert(key, Arc::clone(&task));
        task
    }

    /// Replaces the answer held for `key` with `task` if it is still `held` (not refreshed, purged
    /// or evicted meanwhile): how a finished answer gets its rewritten links, past "a finished state
    /// is final". Whether it was replaced.
    pub fn replace(&self, key: &CacheKey, held: &Arc<CachedTask>, task: Arc<CachedTask>) -> bool {
        use moka::ops::compute::{CompResult, Op};
        if self.gzip {
            task.prepare_gzip();
        }
        let weight = weigh(key, &task);
        let class = task.class();
        let result = self
            .entries
            .entry_by_ref(key)
            .and_compute_with(|current| match current {
                Some(current) if Arc::ptr_eq(current.value(), held) => Op::Put(task),
                _ => Op::Nop,
            });
        let replaced = matches!(result, CompResult::ReplacedWith(_));
        if replaced {
            self.metrics.cache_added(class, weight);
        }
        replaced
    }

    /// The entries `scope` names, with their keys (a walk of the whole cache: an operator's look,
    /// never a request's).
    pub fn matching(&self, scope: &Scope<'_>) -> Vec<(CacheKey, Arc<CachedTask>)> {
        self.entries
            .iter()
            .filter(|(key, _)| scope.matches(&key.0))
            .map(|(key, task)| ((*key).clone(), task))
            .collect()
    }

    /// Removes the entries `scope` names; how many there were.
    pub fn purge(&self, scope: &Scope<'_>) -> usize {
        let keys = self.matching(scope);
        for (key, _) in &keys {
            self.entries.invalidate(key);
            self.refresh_deferred.invalidate(key);
        }
        if !keys.is_empty() {
            self.purges.send_modify(|purges| *purges += 1);
        }
        keys.len()
    }

    /// Changes on every purge that removed an entry (see `purges`).
    pub fn purges(&self) -> tokio::sync::watch::Receiver<u64> {
        self.purges.subscribe()
    }

    /// Entries currently held (approximate: moka applies writes in batches).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes currently charged against `cache.max_memory` (approximate, as `entry_count`).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Applies pending writes and evictions now; for tests and metrics.
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
    }
}

/// Tells moka when an entry can no longer serve anyone: never for terminal tasks, after the TTL plus the
/// stale window for in-progress ones, after the not-found TTL for "no such task" answers. Shared by
/// the cache and moka, and changed in place by a reload (nanoseconds in atomics: the hit path reads
/// them with a plain load).
#[derive(Debug, Clone, Default)]
struct Lifetime(Arc<[AtomicU64; 3]>);

const IN_PROGRESS: usize = 0;
const MAX_STALE: usize = 1;
const NOT_FOUND: usize = 2;

impl Lifetime {
    fn set(&self, config: &CacheConfig) {
        for (slot, ttl) in [
            (IN_PROGRESS, config.in_progress_ttl),
            (MAX_STALE, config.max_stale),
            (NOT_FOUND, config.not_found_ttl),
        ] {
            let nanos = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
            self.0[slot].store(nanos, Ordering::Relaxed);
        }
    }

    fn get(&self, slot: usize) -> Duration {
        Duration::from_nanos(self.0[slot].load(Ordering::Relaxed))
    }

    fn in_progress_ttl(&self) -> Duration {
        self.get(IN_PROGRESS)
    }

    fn max_stale(&self) -> Duration {
        self.get(MAX_STALE)
    }

    /// How long an answer of `class` is fresh; `None` for a terminal task, fresh for ever.
    fn fresh_for(&self, class: TaskClass) -> Option<Duration> {
        match class {
            TaskClass::Terminal => None,
            TaskClass::InProgress => Some(self.in_progress_ttl()),
            TaskClass::NotFound => Some(self.get(NOT_FOUND)),
        }
    }

    fn of(&self, task: &CachedTask) -> Option<Duration> {
        match task.class() {
            TaskClass::Terminal => task
                .keep_until
                .map(|until| until.saturating_duration_since(Instant::now())),
            TaskClass::InProgress => Some(self.in_progress_ttl() + self.max_stale()),
            TaskClass::NotFound => Some(self.get(NOT_FOUND)),
        }
    }
}

impl Expiry<CacheKey, Arc<CachedTask>> for Lifetime {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        task: &Arc<CachedTask>,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.of(task)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        task: &Arc<CachedTask>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // A task that became terminal must lose the expiry its in-progress answer had.
        self.of(task)
    }
}

fn whole(body: &[u8]) -> (u32, u32) {
    (0, u32::try_from(body.len()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Fingerprinter;

    fn key(cred: &'static str, id: &str) -> KeyBuf {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static(cred));
        let fp = Fingerprinter::with_key([1; 32]).fingerprint(&h);
        KeyBuf::new(
            &fp,
            TaskRef {
                family: crate::family::FamilyId(0),
                id: crate::task::TaskId::parse(id).unwrap(),
            },
        )
    }

    fn task(class: TaskClass) -> Arc<CachedTask> {
        Arc::new(CachedTask::new(Bytes::from_static(b"{}"), None, class))
    }

    fn cache(max_memory: u64, ttl: Duration) -> TaskCache {
        let config = CacheConfig {
            in_progress_ttl: ttl,
            max_memory,
            max_stale: Duration::from_millis(100),
            not_found_ttl: ttl,
            gzip: true,
        };
        TaskCache::new(
            &config,
            Arc::new(Metrics::new(
                max_memory,
                &crate::family::Families::builtin(),
            )),
        )
    }

    #[test]
    fn terminal_entries_stay_fresh_and_in_progress_ones_expire() {
        let cache = cache(1 << 20, Duration::from_millis(30));
        cache.insert(key("a", "done").to_key(), task(TaskClass::Terminal));
        cache.insert(key("a", "busy").to_key(), task(TaskClass::InProgress));
        assert!(matches!(
            cache.lookup(key("a", "busy").as_bytes()),
            Lookup::Fresh { ttl: Some(_), .. }
        ));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!matches!(
            cache.lookup(key("a", "busy").as_bytes()),
            Lookup::Fresh { .. }
        ));
        assert!(matches!(
            cache.lookup(key("a", "done").as_bytes()),
            Lookup::Fresh { ttl: None, .. }
        ));
    }

    #[test]
    fn a_task_turning_terminal_loses_its_expiry() {
        let cache = cache(1 << 20, Duration::from_millis(30));
        cache.insert(key("a", "t").to_key(), task(TaskClass::InProgress));
        cache.insert(key("a", "t").to_key(), task(TaskClass::Terminal));
        std::thread::sleep(Duration::from_millis(40));
        cache.sync();
        assert!(matches!(
            cache.lookup(key("a", "t").as_bytes()),
            Lookup::Fresh { .. }
        ));
    }

    #[test]
    fn credentials_partition_entries() {
        let cache = cache(1 << 20, Duration::from_secs(3));
        cache.insert(key("a", "t").to_key(), task(TaskClass::Terminal));
        assert!(matches!(
            cache.lookup(key("b", "t").as_bytes()),
            Lookup::Miss
        ));
    }

    #[test]
    fn memory_budget_bounds_the_cache() {
        let cache = cache(256 << 10, Duration::from_secs(3));
        let body = Bytes::from(vec![b'x'; 1024]);
        for i in 0..2_000 {
            let k = key("a", &format!("t{i}")).to_key();
            cache.insert(
                k,
                Arc::new(CachedTask::new(body.clone(), None, TaskClass::Terminal)),
            );
        }
        cache.sync();
        assert!(
            cache.weighted_size() <= 256 << 10,
            "{}",
            cache.weighted_size()
        );
        assert!(cache.entry_count() < 2_000);
    }

    #[test]
    fn a_flood_of_one_off_ids_does_not_evict_the_tasks_clients_keep_polling() {
        let cache = cache(256 << 10, Duration::from_secs(3));
        let body = Bytes::from(vec![b'x'; 1024]);
        let finished = || Arc::new(CachedTask::new(body.clone(), None, TaskClass::Terminal));
        let mut n = 0;
        let mut one_off = |cache: &TaskCache| {
            let k = key("b", &format!("cold{n}"));
            n += 1;
            cache.insert(k.to_key(), finished());
            let _ = cache.lookup(k.as_bytes());
        };
        // Ten clients polling twenty tasks, as the gateway serves them: a miss is fetched and stored.
        let hot: Vec<KeyBuf> = (0..20).map(|i| key("a", &format!("hot{i}"))).collect();
        let poll_hot = |cache: &TaskCache| {
            let mut fetched = 0;
            for k in &hot {
                for _client in 0..10 {
                    if matches!(cache.lookup(k.as_bytes()), Lookup::Miss) {
                        cache.insert(k.to_key(), finished());
                        fetched += 1;
                    }
                }
            }
            cache.sync();
            fetched
        };
        // A full cache (about 160 entries fit), then the hot tasks polled for a while.
        for _ in 0..300 {
            one_off(&cache);
        }
        for _ in 0..10 {
            poll_hot(&cache);
            for _ in 0..20 {
                one_off(&cache);
            }
        }
        // Then a flood: fifteen times the cache in ids asked for once, the hot tasks polled once per
        // 200 new ids. That is more ids than the cache holds, so recency alone would not keep the hot
        // tasks (an LRU cache refetches all twenty every round); their frequency does.
        let mut refetched = 0;
        for i in 1..=2_500 {
            one_off(&cache);
            if i % 200 == 0 {
                refetched += poll_hot(&cache);
            }
        }
        assert!(cache.weighted_size() <= 256 << 10);
        assert_eq!(refetched, 0, "hot tasks were evicted by one-off ids");
    }
}

#[cfg(test)]
mod gzip_tests {
    use super::*;
    use crate::body::ResponseBody;
    use crate::cache::response::task_response_for;
    use crate::cache::status::CacheStatus;

    /// A finished task's answer, long enough to be worth compressing.
    fn task_body() -> Bytes {
        let buttons = r#"{"customId":"MJ::JOB::upsample::1::t","label":"U1","type":2,"style":2}"#;
        Bytes::from(format!(
            r#"{{"id":"t","status":"SUCCESS","progress":"100%","buttons":[{}]}}"#,
            [buttons; 6].join(",")
        ))
    }

    fn body_of(response: &http::Response<ResponseBody>) -> Bytes {
        match response.body() {
            ResponseBody::Full(Some(bytes)) => bytes.clone(),
            _ => panic!("a full body"),
        }
    }

    #[test]
    fn a_stored_task_is_compressed_once_and_every_gzip_hit_sends_that_copy() {
        let body = task_body();
        let task = CachedTask::new(body.clone(), None, TaskClass::Terminal);
        task.prepare_gzip();
        let copy = task.gzipped().expect("a copy").body.clone();
        task.prepare_gzip();
        assert_eq!(
            task.gzipped().unwrap().body.as_ptr(),
            copy.as_ptr(),
            "made once"
        );
        let hit = |gzip| task_response_for(&task, CacheStatus::Hit { ttl: None }, true, gzip);
        for _ in 0..3 {
            assert_eq!(
                body_of(&hit(true)).as_ptr(),
                copy.as_ptr(),
                "no compression per hit"
            );
            assert_eq!(
                body_of(&hit(false)).as_ptr(),
                body.as_ptr(),
                "identity unchanged"
            );
        }
    }

    #[test]
    fn not_found_answers_get_no_copy() {
        let task = CachedTask::not_found(http::StatusCode::NOT_FOUND, task_body(), None);
        task.prepare_gzip();
        assert!(task.gzipped().is_none());
    }
}
