//! The shared tier: task answers kept in Redis for every replica, and leases so that one replica at a
//! time calls the upstream for a key.
//!
//! Lookup order is in-process cache → Redis → upstream. A replica that misses locally and in Redis
//! takes a lease on the key (`SET lease NX PX`) before calling the upstream, renews it while the call
//! runs, writes the answer (`SET value PX`), announces it on one pub/sub channel, and releases the lease
//! with a compare-and-delete script, so only its owner can. Replicas that lose the race wait for the
//! announcement (or look every `poll_interval`, should it be missed) and take the lease over if it
//! disappears without an answer: its owner's call failed, or the owner died and the lease expired.
//!
//! Redis trouble never fails a request: every command has a deadline (`shared_cache.timeout`); the
//! first failure marks Redis down (logged once), requests then skip it and run local-only, and a
//! background probe pings it every `retry_interval` until it answers, which marks it up again (logged
//! once too).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script};
use tokio::sync::watch;

use crate::cache::{CacheKey, CachedTask};
use crate::config::{SharedCacheConfig, redact_url};
use crate::credential::FINGERPRINT_LEN;
use crate::family::Families;
use crate::hex::push_hex;
use crate::metrics::{LeaseOutcome, Metrics, SharedError, SharedLookup};
use crate::task::TaskClass;

/// Releases a lease only if the caller still owns it (its token is the value).
pub mod hooks;

const RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// Extends a lease only if the caller still owns it.
const RENEW: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// How long each kind of answer may be served, which is also its Redis expiry.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub terminal: Duration,
    pub in_progress: Duration,
    pub not_found: Duration,
}

impl Freshness {
    fn of(&self, class: TaskClass) -> Duration {
        match class {
            TaskClass::Terminal => self.terminal,
            TaskClass::InProgress => self.in_progress,
            TaskClass::NotFound => self.not_found,
        }
    }
}

/// What the shared tier says about a key missing locally.
pub enum Claim {
    /// Another replica's fresh answer: store it locally and serve it; no upstream call.
    Found(Arc<CachedTask>),
    /// Call the upstream, holding `Some(lease)` while doing so, then [`SharedCache::publish`] the answer.
    /// `None` when Redis is unavailable or the wait gave up: the call goes ahead local-only.
    Lead(Option<Lease>),
}

/// The Redis tier. Cheap to clone.
#[derive(Clone)]
pub struct SharedCache {
    inner: Arc<Inner>,
}

struct Inner {
    /// One multiplexed connection, re-established by the manager when it breaks.
    connection: ConnectionManager,
    prefix: Vec<u8>,
    /// `{prefix}landed`: every replica publishes the task key it wrote, and listens.
    channel: Vec<u8>,
    freshness: Freshness,
    timeout: Duration,
    lease_ttl: Duration,
    poll_interval: Duration,
    /// Longest a replica waits on another's lease before calling the upstream itself.
    max_wait: Duration,
    /// Whether Redis answered the last command; `false` sends requests local-only until the probe
    /// gets an answer.
    up: AtomicBool,
    /// Waiters on another replica's call, by task key: each announcement bumps the key's counter.
    /// Entries are removed by the last waiter's [`AnnouncementWatch`] drop.
    landings: Mutex<HashMap<Vec<u8>, Weak<watch::Sender<u64>>>>,
    release: Script,
    renew: Script,
    metrics: Arc<Metrics>,
    /// The Redis URL without its password, for log lines.
    redis: String,
    /// Family names, for Redis key names that mean the same on replicas whose family numbers differ.
    families: Families,
    /// Seals the webhook records kept here (they hold a client's credential), keyed by the
    /// fingerprint secret every replica shares.
    sealer: hooks::Sealer,
    /// Dropped with the tier: the listener and the probe see it and stop.
    _stop: watch::Sender<()>,
}

impl SharedCache {
    /// Builds the tier and starts its listener and probe. Connects lazily: a Redis that is down at
    /// start-up is a local-only start, not a failed one. Needs a Tokio runtime.
    pub fn new(
        config: &SharedCacheConfig,
        freshness: Freshness,
        max_wait: Duration,
        metrics: Arc<Metrics>,
        families: Families,
    ) -> Result<Self, RedisError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(config.retry_interval);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        let prefix = config.key_prefix.as_bytes().to_vec();
        let mut channel = prefix.clone();
        channel.extend_from_slice(b"landed");
        let (stop, stopped) = watch::channel(());
        let inner = Arc::new(Inner {
            connection,
            prefix,
            channel: channel.clone(),
            freshness,
            timeout: config.timeout,
            lease_ttl: config.lease_ttl,
            poll_interval: config.poll_interval,
            max_wait,
            up: AtomicBool::new(true),
            landings: Mutex::new(HashMap::new()),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
            metrics,
            redis: redact_url(&config.redis_url),
            families,
            sealer: hooks::Sealer::new(config.fingerprint_secret.as_bytes()),
            _stop: stop,
        });
        inner.metrics.shared.set_up(true, false);
        tracing::info!(redis = %inner.redis, "shared cache enabled");
        tokio::spawn(listen(
            Arc::downgrade(&inner),
            client,
            channel,
            stopped.clone(),
            config.retry_interval,
            config.timeout.max(Duration::from_secs(1)),
        ));
        tokio::spawn(probe(
            Arc::downgrade(&inner),
            stopped,
            config.retry_interval,
        ));
        Ok(SharedCache { inner })
    }

    /// Whether Redis is in use right now (not marked down).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Looks `key` up in Redis, then takes its lease or waits on the replica that holds it.
    pub async fn claim(&self, key: &CacheKey) -> Claim {
        if !self.is_up() {
            self.inner.metrics.shared.lookups(SharedLookup::Skipped, 1);
            return Claim::Lead(None);
        }
        let names = self.inner.names(key);
        match self.get(&names).await {
            Some(Some(task)) => Claim::Found(task),
            Some(None) => self.lead_or_wait(&names).await,
            None => Claim::Lead(None),
        }
    }

    /// [`claim`](Self::claim) for many keys at once, with one `MGET` for the lookups.
    pub async fn claim_many(&self, keys: &[CacheKey]) -> Vec<Claim> {
        let lead_all = || keys.iter().map(|_| Claim::Lead(None)).collect();
        if !self.is_up() {
            self.inner
                .metrics
                .shared
                .lookups(SharedLookup::Skipped, keys.len() as u64);
            return lead_all();
        }
        let names: Vec<Names> = keys.iter().map(|key| self.inner.names(key)).collect();
        let task_keys: Vec<&[u8]> = names.iter().map(|n| n.task.as_slice()).collect();
        let mut connection = self.inner.connection.clone();
        let Some(values) = self
            .run(connection.mget::<_, Vec<Option<Vec<u8>>>>(&task_keys))
            .await
        else {
            return lead_all();
        };
        let claims = names.iter().zip(values).map(|(names, value)| async move {
            match value.and_then(|value| self.inner.decode_fresh(&value)) {
                Some(task) => {
                    self.inner.metrics.shared.lookups(SharedLookup::Hit, 1);
                    Claim::Found(task)
                }
                None => {
                    self.inner.metrics.shared.lookups(SharedLookup::Miss, 1);
                    self.lead_or_wait(names).await
                }
            }
        });
        futures_util::future::join_all(claims).await
    }

    /// Writes upstream answers for other replicas (each expiring when it stops being fresh) and
    /// announces them, in one round trip. Call before releasing the keys' leases, so a waiter never
    /// finds neither.
    pub async fn publish(&self, answers: &[(&CacheKey, &CachedTask)]) {
        if !self.is_up() || answers.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let mut written = 0;
        for (key, task) in answers {
            let age = task.stored_at.elapsed();
            let mut left = self.inner.freshness.of(task.class()).saturating_sub(age);
            if let Some(until) = task.keep_until {
                // Redis drops it when its result expires, too.
                left = left.min(until.saturating_duration_since(std::time::Instant::now()));
            }
            if left < Duration::from_millis(1) {
                continue;
            }
            let names = self.inner.names(key);
            pipe.cmd("SET")
                .arg(&names.task)
                .arg(encode(task))
                .arg("PX")
                .arg(millis(left))
                .ignore()
                .cmd("PUBLISH")
                .arg(&self.inner.channel)
                .arg(&names.task)
                .ignore();
            written += 1;
        }
        let mut connection = self.inner.connection.clone();
        if written > 0
            && self
                .run(pipe.query_async::<()>(&mut connection))
                .await
                .is_some()
        {
            self.inner.metrics.shared.write(written);
        }
    }

    /// `GET` of one task key: `None` when Redis failed, `Some(None)` for no fresh answer.
    async fn get(&self, names: &Names) -> Option<Option<Arc<CachedTask>>> {
        let mut connection = self.inner.connection.clone();
        let value = self
            .run(connection.get::<_, Option<Vec<u8>>>(&names.task))
            .await?;
        let task = value.and_then(|value| self.inner.decode_fresh(&value));
        let result = if task.is_some() {
            SharedLookup::Hit
        } else {
            SharedLookup::Miss
        };
        self.inner.metrics.shared.lookups(result, 1);
        Some(task)
    }

    /// Takes the lease, or waits on whoever holds it.
    async fn lead_or_wait(&self, names: &Names) -> Claim {
        // Watch before trying, so an announcement between a lost race and the wait is not missed.
        let watch = self.inner.watch(&names.task);
        match self.try_lease(names).await {
            None => Claim::Lead(None),
            Some(Some(lease)) => {
                self.inner.metrics.shared.lease(LeaseOutcome::Won);
                Claim::Lead(Some(lease))
            }
            Some(None) => self.wait(names, watch).await,
        }
    }

    /// Waits for the lease holder's answer; takes the lease over if it goes away without one.
    async fn wait(&self, names: &Names, watch: AnnouncementWatch) -> Claim {
        let deadline = Instant::now() + self.inner.max_wait;
        let gave_up = || {
            self.inner.metrics.shared.lease(LeaseOutcome::GaveUp);
            Claim::Lead(None)
        };
        let mut announced = watch.announced;
        loop {
            // The receiver dates from before the lease was tried: no announcement since is missed.
            tokio::select! {
                _ = announced.changed() => {}
                () = tokio::time::sleep(self.inner.poll_interval) => {}
            }
            match self.get(names).await {
                Some(Some(task)) => {
                    self.inner.metrics.shared.lease(LeaseOutcome::Waited);
                    return Claim::Found(task);
                }
                Some(None) => {}
                None => return gave_up(),
            }
            match self.try_lease(names).await {
                Some(Some(lease)) => {
                    self.inner.metrics.shared.lease(LeaseOutcome::TakenOver);
                    return Claim::Lead(Some(lease));
                }
                Some(None) => {}
                None => return gave_up(),
            }
            if Instant::now() >= deadline {
                return gave_up();
            }
        }
    }

    /// `SET lease token NX PX ttl`: `Some(Some(lease))` when taken, `Some(None)` when someone holds it,
    /// `None` when Redis failed.
    async fn try_lease(&self, names: &Names) -> Option<Option<Lease>> {
        self.try_lease_named(&names.lease).await
    }

    /// [`try_lease`](Self::try_lease) on the Redis key `lease`.
    async fn try_lease_named(&self, lease: &[u8]) -> Option<Option<Lease>> {
        let token = format!("{:032x}", rand::random::<u128>());
        let mut connection = self.inner.connection.clone();
        let taken: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(lease)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(self.inner.lease_ttl))
                    .query_async(&mut connection),
            )
            .await?;
        Some(taken.map(|_| Lease {
            inner: Arc::clone(&self.inner),
            key: lease.to_vec(),
            token,
            released: false,
        }))
    }

    /// Runs one Redis command under the deadline; a failure marks Redis down and yields `None`.
    async fn run<T>(&self, command: impl Future<Output = Result<T, RedisError>>) -> Option<T> {
        self.inner.run(command).await
    }
}

impl Inner {
    async fn run<T>(&self, command: impl Future<Output = Result<T, RedisError>>) -> Option<T> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                // The connection's own response deadline (the same `timeout`) may fire first.
                let kind = if e.is_timeout() {
                    SharedError::Timeout
                } else {
                    SharedError::Error
                };
                self.metrics.shared.error(kind);
                self.mark_down(&e.to_string());
                None
            }
            Err(_) => {
                self.metrics.shared.error(SharedError::Timeout);
                self.mark_down("timed out");
                None
            }
        }
    }

    fn mark_down(&self, reason: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.metrics.shared.set_up(false, true);
            tracing::warn!(
                redis = %self.redis,
                error = reason,
                "shared cache unreachable: serving local-only until it answers again"
            );
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.shared.set_up(true, true);
            tracing::info!(redis = %self.redis, "shared cache reachable again: sharing resumed");
        }
    }

    /// The Redis names of `key`: `{prefix}task:{fingerprint hex}:{family}:{id}` and
    /// `{prefix}lease:...`.
    fn names(&self, key: &CacheKey) -> Names {
        let bytes: &[u8] = key.borrow();
        let (fingerprint, rest) = bytes.split_at(FINGERPRINT_LEN.min(bytes.len()));
        let (family, id) = rest.split_first().unwrap_or((&0, &[]));
        let family = self
            .families
            .all()
            .get(usize::from(*family))
            .map_or("", |f| f.name());
        let name = |kind: &[u8]| {
            let mut name =
                Vec::with_capacity(self.prefix.len() + 6 + 33 + family.len() + 1 + id.len());
            name.extend_from_slice(&self.prefix);
            name.extend_from_slice(kind);
            push_hex(&mut name, fingerprint);
            name.push(b':');
            name.extend_from_slice(family.as_bytes());
            name.push(b':');
            name.extend_from_slice(id);
            name
        };
        Names {
            task: name(b"task:"),
            lease: name(b"lease:"),
        }
    }

    /// A stored value, if it decodes and is still fresh by this replica's rules.
    fn decode_fresh(&self, value: &[u8]) -> Option<Arc<CachedTask>> {
        let Some(task) = decode(value) else {
            self.metrics.shared.error(SharedError::Corrupt);
            return None;
        };
        let fresh = task.stored_at.elapsed() < self.freshness.of(task.class())
            && !task.expired(std::time::Instant::now());
        fresh.then(|| Arc::new(task))
    }

    /// Registers interest in the announcement of `task_key`.
    fn watch(self: &Arc<Self>, task_key: &[u8]) -> AnnouncementWatch {
        let mut landings = self.landings.lock();
        let sender = match landings.get(task_key).and_then(Weak::upgrade) {
            Some(sender) => sender,
            None => {
                let sender = Arc::new(watch::channel(0u64).0);
                landings.insert(task_key.to_vec(), Arc::downgrade(&sender));
                sender
            }
        };
        AnnouncementWatch {
            announced: sender.subscribe(),
            _registration: Registration {
                inner: Arc::clone(self),
                task_key: task_key.to_vec(),
                sender,
            },
        }
    }

    /// An announcement arrived: wake whoever waits on that key here.
    fn announced(&self, task_key: &[u8]) {
        let sender = self.landings.lock().get(task_key).and_then(Weak::upgrade);
        if let Some(sender) = sender {
            sender.send_modify(|count| *count = count.wrapping_add(1));
        }
    }
}

/// The Redis key names of one cache key.
struct Names {
    task: Vec<u8>,
    lease: Vec<u8>,
}

/// A waiter's view of one key's announcements, from the moment it registered.
struct AnnouncementWatch {
    announced: watch::Receiver<u64>,
    /// Held for its `Drop`.
    _registration: Registration,
}

/// A waiter's place in the registry; the last one to go removes the key's entry.
struct Registration {
    inner: Arc<Inner>,
    task_key: Vec<u8>,
    sender: Arc<watch::Sender<u64>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut landings = self.inner.landings.lock();
        // Ours is the last strong reference: nobody else waits on this key.
        if Arc::strong_count(&self.sender) == 1 {
            landings.remove(&self.task_key);
        }
    }
}

/// The right to call the upstream for one key, across replicas. Renewed while the call runs
/// ([`under_lease`]); released by [`Lease::release`], or on drop if the holder forgot or
/// panicked. A holder that dies leaves it to expire after `shared_cache.lease_ttl`.
pub struct Lease {
    inner: Arc<Inner>,
    key: Vec<u8>,
    /// Random per lease: only the holder can renew or release it.
    token: String,
    released: bool,
}

/// Runs `work` while holding `leases`, renewing each every third of its TTL until `work` finishes.
pub async fn under_lease<F: Future>(leases: &[Lease], work: F) -> F::Output {
    if leases.is_empty() {
        return work.await;
    }
    let renew_all = futures_util::future::join_all(leases.iter().map(Lease::keep));
    tokio::pin!(work);
    tokio::select! {
        biased;
        output = &mut work => output,
        // Renewing never ends; were it to, the work still finishes.
        _ = renew_all => work.await,
    }
}

impl Lease {
    /// Renews the lease every third of its TTL, for ever; stops renewing once it is lost.
    async fn keep(&self) {
        loop {
            tokio::time::sleep(self.inner.lease_ttl / 3).await;
            let mut connection = self.inner.connection.clone();
            let renewed: Option<i64> = self
                .inner
                .run(
                    self.inner
                        .renew
                        .key(&self.key)
                        .arg(&self.token)
                        .arg(millis(self.inner.lease_ttl))
                        .invoke_async(&mut connection),
                )
                .await;
            if renewed != Some(1) {
                // Lost (expired and taken, or Redis gone): nothing left to renew.
                return std::future::pending().await;
            }
        }
    }

    /// Gives the lease up (only if still ours).
    pub async fn release(mut self) {
        self.released = true;
        release(
            Arc::clone(&self.inner),
            self.key.clone(),
            self.token.clone(),
        )
        .await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release(
                Arc::clone(&self.inner),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            ));
        }
    }
}

async fn release(inner: Arc<Inner>, key: Vec<u8>, token: String) {
    let mut connection = inner.connection.clone();
    let _: Option<i64> = inner
        .run(
            inner
                .release
                .key(&key)
                .arg(&token)
                .invoke_async(&mut connection),
        )
        .await;
}

/// Listens for landing announcements, reconnecting after failures; ends with the tier.
async fn listen(
    inner: Weak<Inner>,
    client: redis::Client,
    channel: Vec<u8>,
    mut stop: watch::Receiver<()>,
    retry: Duration,
    connect_timeout: Duration,
) {
    loop {
        let session = async {
            // A blackholed Redis must not park the listener for the OS's connect timeout.
            let connect = tokio::time::timeout(connect_timeout, client.get_async_pubsub());
            let mut pubsub = connect.await.map_err(|_| {
                RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out"))
            })??;
            pubsub.subscribe(&channel).await?;
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(inner) = inner.upgrade() else {
                    return Ok(());
                };
                inner.announced(message.get_payload_bytes());
            }
            Ok::<(), RedisError>(())
        };
        tokio::select! {
            _ = stop.changed() => return,
            ended = session => {
                // Polling covers the gap; the probe, not this, decides whether Redis is up.
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "shared cache subscription lost");
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(retry) => {}
        }
    }
}

/// While Redis is marked down, pings it every `retry`; the first answer marks it up.
async fn probe(inner: Weak<Inner>, mut stop: watch::Receiver<()>, retry: Duration) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(retry) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.up.load(Ordering::Relaxed) {
            continue;
        }
        let mut connection = inner.connection.clone();
        let ping = redis::cmd("PING");
        let answer =
            tokio::time::timeout(inner.timeout, ping.query_async::<String>(&mut connection));
        if let Ok(Ok(_)) = answer.await {
            inner.mark_up();
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The stored value: a fixed header the gateway reads, then the upstream's bytes untouched.
///
/// `MJG2` | class (1 byte) | HTTP status (u16) | fetched at, Unix ms (u64) | content-type length (u16) |
/// keep until, Unix ms (u64, 0: for ever) | task span start, end (u32, u32) | content type | body.
/// Fetched-at lets every replica give the same `Age` and the same remaining TTL; keep-until carries a
/// finished answer's own expiry, so no replica serves it past that. `MJG1` values (no keep-until, no
/// span) from an older replica are still read.
const MAGIC: &[u8; 4] = b"MJG2";
const MAGIC_V1: &[u8; 4] = b"MJG1";
const HEADER_LEN_V1: usize = 4 + 1 + 2 + 8 + 2;
const HEADER_LEN: usize = HEADER_LEN_V1 + 8 + 4 + 4;

/// The stored value of `task` (public for the fuzz target).
pub fn encode(task: &CachedTask) -> Vec<u8> {
    let content_type = task.content_type.as_ref().map_or(&[][..], |v| v.as_bytes());
    let content_type = &content_type[..content_type.len().min(usize::from(u16::MAX))];
    let now = SystemTime::now();
    let fetched_at = unix_millis(now).saturating_sub(millis(task.stored_at.elapsed()));
    let keep_until = task.keep_until.map_or(0, |until| {
        let left = until.saturating_duration_since(std::time::Instant::now());
        unix_millis(now + left).max(1)
    });
    let span = task.task_span();
    let mut value = Vec::with_capacity(HEADER_LEN + content_type.len() + task.body.len());
    value.extend_from_slice(MAGIC);
    value.push(task.class().index());
    value.extend_from_slice(&task.status().as_u16().to_be_bytes());
    value.extend_from_slice(&fetched_at.to_be_bytes());
    value.extend_from_slice(&(content_type.len() as u16).to_be_bytes());
    value.extend_from_slice(&keep_until.to_be_bytes());
    value.extend_from_slice(&(span.start as u32).to_be_bytes());
    value.extend_from_slice(&(span.end as u32).to_be_bytes());
    value.extend_from_slice(content_type);
    value.extend_from_slice(&task.body);
    value
}

/// Reads a stored value back; `None` for anything this version did not write (a value in Redis may
/// come from another version, or anyone who can write there). Public for the fuzz target.
pub fn decode(value: &[u8]) -> Option<CachedTask> {
    let v2 = match value.get(..4)? {
        magic if magic == MAGIC => true,
        magic if magic == MAGIC_V1 => false,
        _ => return None,
    };
    let header_len = if v2 { HEADER_LEN } else { HEADER_LEN_V1 };
    let header = value.get(..header_len)?;
    let class = TaskClass::from_index(header[4])?;
    let status = StatusCode::from_u16(u16::from_be_bytes([header[5], header[6]])).ok()?;
    let fetched_at = u64::from_be_bytes(header[7..15].try_into().ok()?);
    let content_type_len = usize::from(u16::from_be_bytes([header[15], header[16]]));
    let (keep_until, span) = if v2 {
        let keep_until = u64::from_be_bytes(header[17..25].try_into().ok()?);
        let start = u32::from_be_bytes(header[25..29].try_into().ok()?) as usize;
        let end = u32::from_be_bytes(header[29..33].try_into().ok()?) as usize;
        (keep_until, Some(start..end))
    } else {
        (0, None)
    };
    let rest = &value[header_len..];
    let content_type = rest.get(..content_type_len)?;
    let body = Bytes::copy_from_slice(&rest[content_type_len..]);
    let content_type = if content_type.is_empty() {
        None
    } else {
        Some(HeaderValue::from_bytes(content_type).ok()?)
    };
    let now = SystemTime::now();
    // A clock ahead of ours makes the age 0, never negative.
    let age = Duration::from_millis(unix_millis(now).saturating_sub(fetched_at));
    let keep_until = (keep_until != 0)
        .then(|| crate::family::expiry::instant_of(UNIX_EPOCH + Duration::from_millis(keep_until)));
    let mut task =
        CachedTask::restored(status, body, content_type, class, age)?.keep_until(keep_until);
    if let Some(span) = span {
        if span.start > span.end || span.end > task.body.len() {
            return None;
        }
        task = task.task_at(span);
    }
    Some(task)
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_with_its_age() {
        let mut task = CachedTask::new(
            Bytes::from_static(br#"{"id":"t","status":"SUCCESS"}"#),
            Some(HeaderValue::from_static("application/json")),
            TaskClass::Terminal,
        );
        task.stored_at -= Duration::from_secs(42);
        let back = decode(&encode(&task)).unwrap();
        assert_eq!(back.body, task.body);
        assert_eq!(back.class(), TaskClass::Terminal);
        assert_eq!(back.status(), StatusCode::OK);
        assert_eq!(back.content_type, task.content_type);
        assert_eq!(back.age(), 42);
    }

    #[test]
    fn a_not_found_answer_keeps_its_status_and_no_content_type() {
        let task = CachedTask::not_found(StatusCode::NOT_FOUND, Bytes::new(), None);
        let back = decode(&encode(&task)).unwrap();
        assert_eq!(back.status(), StatusCode::NOT_FOUND);
        assert_eq!(back.class(), TaskClass::NotFound);
        assert!(back.content_type.is_none() && back.body.is_empty());
    }

    #[test]
    fn foreign_or_truncated_values_are_refused() {
        let task = CachedTask::new(Bytes::from_static(b"{}"), None, TaskClass::InProgress);
        let value = encode(&task);
        assert!(decode(&value[..HEADER_LEN - 1]).is_none());
        assert!(decode(b"{\"id\":\"t\"}").is_none());
        let mut bad_class = value.clone();
        bad_class[4] = 9;
        assert!(decode(&bad_class).is_none());
    }
}
