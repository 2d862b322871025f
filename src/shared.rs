//! The shared tier: task answers kept in Redis for every replica, and leases so that one replica at a
//! time calls the upstream for a key.
//!
//! Lookup order is in-process cache → Redis → upstream. A replica that misses locally looks the key
//! up in Redis and, finding no answer, takes a lease on it (`SET lease NX PX`) in the same script, so
//! no answer lands in between; it calls the upstream holding the lease, renews it while the call
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
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{RedisError, Script};
use tokio::sync::watch;

use crate::cache::{CacheKey, CachedTask};
use crate::config::SharedCacheConfig;
use crate::credential::FINGERPRINT_LEN;
use crate::family::LiveFamilies;
use crate::hex::push_hex;
use crate::metrics::{LeaseOutcome, Metrics, SharedError, SharedLookup};
use crate::task::TaskClass;

mod admin;
pub mod codec;
pub mod hooks;
mod idempotency;
mod lease;
mod link;
mod owners;

pub use codec::{ValueKey, decode, encode};
pub use lease::{Lease, under_lease};
use link::{Link, Pipes};

use codec::millis;

pub use admin::{PurgeScope, SharedEntry};

/// What a replica does with a purge another announced: its scope, encoded.
pub type PurgeHandler = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A task's value (`KEYS[1]`; an empty string when larger than `ARGV[1]` bytes or not a string,
/// which no value this version writes is, so it is counted corrupt: a value cannot make a replica
/// read 60 MiB, and a key of another type is one bad answer, not a failing Redis)
/// or, when it has none, its lease (`KEYS[2]`, `SET NX PX`): `{value, 0}`, `{false, -3}` when the
/// lease was taken, or `{false, PTTL}` of the lease another holds. One script, so no answer can
/// land between the look and the lease: a holder that writes its answer and releases its lease in between would otherwise leave
/// the looker an empty key and a free lease, and a second upstream call. The hash tag puts both
/// keys in one cluster slot.
const LOOK_OR_LEASE: &str = r"
local kind = redis.call('type', KEYS[1]).ok
if kind ~= 'none' then
  if kind ~= 'string' or redis.call('strlen', KEYS[1]) > tonumber(ARGV[1]) then return {'', 0} end
  return {redis.call('get', KEYS[1]), 0}
end
if redis.call('set', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {false, -3} end
return {false, redis.call('pttl', KEYS[2])}";

/// For every key of `KEYS`, as `MGET` would answer, each value capped as in [`LOOK_OR_LEASE`].
const MGET_CAPPED: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('type', key).ok
  if kind == 'none' then out[i] = false
  elseif kind ~= 'string' or redis.call('strlen', key) > tonumber(ARGV[1]) then out[i] = ''
  else out[i] = redis.call('get', key) end
end
return out";

/// Writes a running state (`ARGV[1]`, for `ARGV[2]` ms) and announces it on `ARGV[3]`, unless the key
/// holds a finished one (class byte 0 of an `MJG3` value): a finished state is final across
/// replicas too, whoever writes late. 1 when written.
const SET_UNLESS_FINISHED: &str = r"
local held = redis.call('type', KEYS[1]).ok == 'string' and redis.call('get', KEYS[1])
if held and string.sub(held, 1, 4) == 'MJG3' and string.byte(held, 5) == 0 then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('publish', ARGV[3], KEYS[1])
return 1";

/// Writes a finished state (`ARGV[1]`, for `ARGV[2]` ms) and announces it on `ARGV[3]`.
const SET_AND_ANNOUNCE: &str = r"
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('publish', ARGV[3], KEYS[1])
return 1";

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
    /// The connection to Redis, whatever its layout (see [`link`]).
    connection: Link,
    prefix: Vec<u8>,
    /// `{prefix}landed`: every replica publishes the task key it wrote, and listens.
    channel: Vec<u8>,
    /// `{prefix}purged`: an operator's purge, announced so every replica drops its own copies.
    purge_channel: Vec<u8>,
    /// What a replica does with a purge announced by another (set by the fetch core).
    on_purge: parking_lot::RwLock<Option<PurgeHandler>>,
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
    look_or_lease: Script,
    mget_capped: Script,
    set_unless_finished: Script,
    set_and_announce: Script,
    /// Tags every value with the key it is written under (see [`codec`]).
    seal: ValueKey,
    /// The most of a value read back: `upstream.max_body` and the value's header.
    max_value: u64,
    /// `upstream.max_body`: a value's body is never larger.
    max_body: u64,
    metrics: Arc<Metrics>,
    /// Where Redis is, without a password, for log lines.
    redis: String,
    /// Family names, for Redis key names that mean the same on replicas whose family numbers differ.
    families: LiveFamilies,
    /// Seals the webhook records kept here (they hold a client's credential), keyed by the
    /// fingerprint secret every replica shares.
    sealer: hooks::Sealer,
    /// When a refused Redis certificate was last logged.
    certificate_logged: Mutex<Option<Instant>>,
    /// Leases whose release failed (Redis went away mid-call): released when it answers again,
    /// so nobody waits out `lease_ttl` on a call that ended long ago. Bounded; an entry older than
    /// `lease_ttl` has expired by itself.
    unreleased: Mutex<Vec<(Vec<u8>, String, Instant)>>,
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
        max_body: u64,
        metrics: Arc<Metrics>,
        families: LiveFamilies,
    ) -> Result<Self, RedisError> {
        let connection = Link::new(config)?;
        let prefix = config.key_prefix.as_bytes().to_vec();
        let mut channel = prefix.clone();
        channel.extend_from_slice(b"landed");
        let mut purge_channel = prefix.clone();
        purge_channel.extend_from_slice(b"purged");
        let (stop, stopped) = watch::channel(());
        let inner = Arc::new(Inner {
            connection,
            prefix,
            channel: channel.clone(),
            purge_channel: purge_channel.clone(),
            on_purge: parking_lot::RwLock::new(None),
            freshness,
            timeout: config.timeout,
            lease_ttl: config.lease_ttl,
            poll_interval: config.poll_interval,
            max_wait,
            up: AtomicBool::new(true),
            landings: Mutex::new(HashMap::new()),
            release: Script::new(lease::RELEASE),
            renew: Script::new(lease::RENEW),
            look_or_lease: Script::new(LOOK_OR_LEASE),
            mget_capped: Script::new(MGET_CAPPED),
            set_unless_finished: Script::new(SET_UNLESS_FINISHED),
            set_and_announce: Script::new(SET_AND_ANNOUNCE),
            seal: ValueKey::new(config.fingerprint_secret.as_bytes()),
            max_value: codec::max_value_len(max_body),
            max_body,
            metrics,
            redis: config.topology.describe(),
            families,
            sealer: hooks::Sealer::new(config.fingerprint_secret.as_bytes()),
            certificate_logged: Mutex::new(None),
            unreleased: Mutex::new(Vec::new()),
            _stop: stop,
        });
        inner.metrics.shared.set_up(true, false);
        tracing::info!(redis = %inner.redis, "shared cache enabled");
        tokio::spawn(listen(
            Arc::downgrade(&inner),
            [channel, purge_channel],
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
        self.look_then_lead_or_wait(&self.inner.names(key)).await
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
        let Some(values) = self.mget_capped(&task_keys).await else {
            return lead_all();
        };
        let claims = names.iter().zip(values).map(|(names, value)| async move {
            match value.and_then(|value| self.inner.decode_fresh(&names.task, &value)) {
                Some(task) => {
                    self.inner.metrics.shared.lookups(SharedLookup::Hit, 1);
                    Claim::Found(task)
                }
                None => {
                    // Looked again with the lease (and counted then): an answer may have landed
                    // since the `MGET`.
                    self.look_then_lead_or_wait(names).await
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
        let mut pipes = Pipes::new(&self.inner.connection);
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
            let value = encode(task, &names.task, &self.inner.seal);
            // A script, not `SET` then `PUBLISH`: a cluster routes `PUBLISH` by its channel's
            // slot, so the two could not share a pipeline there, and the value must be written
            // before anyone hears of it.
            let script = if task.is_finished() {
                &self.inner.set_and_announce
            } else {
                &self.inner.set_unless_finished
            };
            pipes
                .on_with_script(&names.task, script)
                .invoke_script(
                    script
                        .key(&names.task)
                        .arg(value)
                        .arg(millis(left))
                        .arg(&self.inner.channel),
                )
                .ignore();
            written += 1;
        }
        if written > 0 && self.run(pipes.run(&self.inner.connection)).await.is_some() {
            self.inner.metrics.shared.write(written);
        }
    }

    /// [`MGET_CAPPED`] of every key, in one script per hash slot (one for a server): `None` when
    /// Redis failed or answered out of shape.
    async fn mget_capped(&self, keys: &[&[u8]]) -> Option<Vec<Option<Vec<u8>>>> {
        let groups = link::slot_groups(&self.inner.connection, keys);
        let reads = groups.iter().map(|group| {
            let mut connection = self.inner.connection.clone();
            let mut mget = self.inner.mget_capped.prepare_invoke();
            for &i in group {
                mget.key(keys[i]);
            }
            mget.arg(self.inner.max_value);
            async move {
                mget.invoke_async::<Vec<Option<Vec<u8>>>>(&mut connection)
                    .await
            }
        });
        let read = futures_util::future::join_all(reads);
        let answers = self
            .run(async { read.await.into_iter().collect::<Result<Vec<_>, _>>() })
            .await?;
        let mut values = vec![None; keys.len()];
        for (group, answer) in groups.iter().zip(answers) {
            if answer.len() != group.len() {
                self.inner.metrics.shared.error(SharedError::Corrupt);
                return None;
            }
            for (&i, value) in group.iter().zip(answer) {
                values[i] = value;
            }
        }
        Some(values)
    }

    /// [`LOOK_OR_LEASE`] of one task: its fresh answer, or the lease tried; `None` when Redis
    /// failed. Counts the lookup (a lease tried is a miss).
    async fn look_or_lease(&self, names: &Names) -> Option<Look> {
        let token = lease::token();
        let mut connection = self.inner.connection.clone();
        let (value, left): (Option<Vec<u8>>, i64) = self
            .run(
                self.inner
                    .look_or_lease
                    .key(&names.task)
                    .key(&names.lease)
                    .arg(self.inner.max_value)
                    .arg(&token)
                    .arg(millis(self.inner.lease_ttl))
                    .invoke_async(&mut connection),
            )
            .await?;
        let look = match value {
            Some(value) => match self.inner.decode_fresh(&names.task, &value) {
                Some(task) => Look::Found(task),
                None => Look::Stale,
            },
            None if left == -3 => Look::Lease(LeaseTry::Taken(Lease {
                inner: Arc::clone(&self.inner),
                key: names.lease.clone(),
                token,
                released: false,
            })),
            None => Look::Lease(self.inner.held(left)),
        };
        let result = if matches!(look, Look::Found(_)) {
            SharedLookup::Hit
        } else {
            SharedLookup::Miss
        };
        self.inner.metrics.shared.lookups(result, 1);
        Some(look)
    }

    /// The fresh answer in Redis, else the lease taken, else the wait on whoever holds it.
    async fn look_then_lead_or_wait(&self, names: &Names) -> Claim {
        // Watch before looking, so an announcement between the look and the wait is not missed.
        let watch = self.inner.watch(&names.task);
        match self.look_or_lease(names).await {
            None => Claim::Lead(None),
            Some(Look::Found(task)) => Claim::Found(task),
            Some(Look::Stale) => self.lead_or_wait(names, watch).await,
            Some(Look::Lease(tried)) => self.follow(tried, names, watch).await,
        }
    }

    /// Takes the lease, or waits on whoever holds it (after a value found stale).
    async fn lead_or_wait(&self, names: &Names, watch: AnnouncementWatch) -> Claim {
        match self.try_lease(names).await {
            None => Claim::Lead(None),
            Some(tried) => self.follow(tried, names, watch).await,
        }
    }

    /// Acts on a lease tried: leads with it, or waits on its holder.
    async fn follow(&self, tried: LeaseTry, names: &Names, watch: AnnouncementWatch) -> Claim {
        match tried {
            LeaseTry::Foreign => Claim::Lead(None),
            LeaseTry::Taken(lease) => {
                self.inner.metrics.shared.lease(LeaseOutcome::Won);
                Claim::Lead(Some(lease))
            }
            LeaseTry::Held => self.wait(names, watch).await,
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
            let tried = match self.look_or_lease(names).await {
                None => return gave_up(),
                Some(Look::Found(task)) => {
                    self.inner.metrics.shared.lease(LeaseOutcome::Waited);
                    return Claim::Found(task);
                }
                // Not an answer to wait for: the lease decides.
                Some(Look::Stale) => match self.try_lease(names).await {
                    None => return gave_up(),
                    Some(tried) => tried,
                },
                Some(Look::Lease(tried)) => tried,
            };
            match tried {
                LeaseTry::Taken(lease) => {
                    self.inner.metrics.shared.lease(LeaseOutcome::TakenOver);
                    return Claim::Lead(Some(lease));
                }
                LeaseTry::Held => {}
                LeaseTry::Foreign => return gave_up(),
            }
            if Instant::now() >= deadline {
                return gave_up();
            }
        }
    }

    /// The lease on downloading the result file at `url` (one replica downloads each file): taken,
    /// held by another replica (`Some(None)`), or `None` when Redis is down or failed.
    pub async fn file_lease(&self, url: &str) -> Option<Option<Lease>> {
        if !self.is_up() {
            return None;
        }
        let mut name = self.inner.prefix.clone();
        name.extend_from_slice(b"file-lease:");
        name.extend_from_slice(blake3::hash(url.as_bytes()).to_hex().as_bytes());
        match self.try_lease_named(&name).await? {
            LeaseTry::Taken(lease) => Some(Some(lease)),
            LeaseTry::Held => Some(None),
            LeaseTry::Foreign => None,
        }
    }

    /// `SET lease token NX PX ttl`, and the lease's time left when another holds it; `None` when
    /// Redis failed.
    async fn try_lease(&self, names: &Names) -> Option<LeaseTry> {
        self.try_lease_named(&names.lease).await
    }

    /// [`try_lease`](Self::try_lease) on the Redis key `lease`. A lease no replica could have
    /// written (no expiry, or longer than `lease_ttl`: every replica writes and renews to exactly
    /// that) is [`LeaseTry::Foreign`]: nobody waits on it, however long it would last.
    async fn try_lease_named(&self, lease: &[u8]) -> Option<LeaseTry> {
        let token = lease::token();
        let mut connection = self.inner.connection.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(lease)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.inner.lease_ttl))
            .cmd("PTTL")
            .arg(lease);
        let (taken, left): (Option<String>, i64) =
            self.run(pipe.query_async(&mut connection)).await?;
        if taken.is_some() {
            return Some(LeaseTry::Taken(Lease {
                inner: Arc::clone(&self.inner),
                key: lease.to_vec(),
                token,
                released: false,
            }));
        }
        Some(self.inner.held(left))
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
                if self.certificate_refused(&e) {
                    self.mark_down(&e.to_string());
                    return None;
                }
                if is_wrong_type(&e) {
                    // A key someone else wrote with another type: this one command failed,
                    // Redis did not.
                    self.metrics.shared.error(SharedError::Corrupt);
                    return None;
                }
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

    /// Whether `e` is Redis's certificate refused: then it is counted and said in plain words, as
    /// the upstream's are, at most once a minute. The connection's handshake may fail in the probe
    /// or the listener rather than in a request (a request's command often just times out while
    /// the connection is retried), so each of them reports here.
    fn certificate_refused(&self, e: &RedisError) -> bool {
        use crate::tls::CertificateFault;
        let text = e.to_string();
        let reason = match CertificateFault::find(e)
            .or_else(|| CertificateFault::from_message(&text))
        {
            Some(fault) => fault.redis_reason(),
            // Redis's alert when it wants a certificate from us and got none.
            None if text.contains("CertificateRequired") => {
                "Redis asks for a client certificate (set shared_cache.client_cert_file and client_key_file)"
            }
            None => return false,
        };
        self.metrics.shared.error(SharedError::Certificate);
        let now = Instant::now();
        let mut last = self.certificate_logged.lock();
        if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
            *last = Some(now);
            tracing::warn!(
                redis = %self.redis,
                error = %e,
                "{reason} (logged once a minute; counted in mjgate_shared_cache_errors_total{{kind=\"tls_certificate\"}})"
            );
        }
        true
    }

    /// One check that Redis serves: the connection (the sentinels asked which server is the
    /// master; a cluster's first connection made), then a keyed read, which a cluster that lost
    /// a slot's master refuses (`CLUSTERDOWN`) where a `PING` to a live node would not.
    /// `deadline` bounds the read (a connection's first handshake may take longer than `timeout`).
    async fn check(&self, deadline: Duration) -> Result<(), RedisError> {
        let timed_out = |_| RedisError::from((redis::ErrorKind::Io, "timed out"));
        let connect_timeout = self.timeout.max(Duration::from_secs(1));
        tokio::time::timeout(connect_timeout, self.connection.refresh())
            .await
            .map_err(timed_out)??;
        let mut probe_key = self.prefix.clone();
        probe_key.extend_from_slice(b"probe");
        let mut connection = self.connection.clone();
        let mut exists = redis::cmd("EXISTS");
        exists.arg(probe_key);
        tokio::time::timeout(deadline, exists.query_async::<i64>(&mut connection))
            .await
            .map_err(timed_out)??;
        Ok(())
    }

    /// A lease another holds, by its time left (`PTTL`): [`LeaseTry::Held`] if a replica could
    /// have written it, else [`LeaseTry::Foreign`] (counted as corrupt).
    fn held(&self, left: i64) -> LeaseTry {
        // -2: it expired between the two commands; the next try takes it.
        let ours = left == -2 || (0..=millis(self.lease_ttl) as i64).contains(&left);
        if ours {
            LeaseTry::Held
        } else {
            self.metrics.shared.error(SharedError::Corrupt);
            LeaseTry::Foreign
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

    /// The Redis names of `key`: `{prefix}task:{<fingerprint hex>:<family>:<id>}` and
    /// `{prefix}lease:{...}`. The braces are a hash tag: a task's value and lease share a cluster
    /// slot, so one script or pipeline may touch both.
    fn names(&self, key: &CacheKey) -> Names {
        let bytes: &[u8] = key.borrow();
        let (fingerprint, rest) = bytes.split_at(FINGERPRINT_LEN.min(bytes.len()));
        let (family, id) = rest.split_first().unwrap_or((&0, &[]));
        let families = self.families.load();
        let family = families
            .all()
            .get(usize::from(*family))
            .map_or("", |f| f.name());
        let name = |kind: &[u8]| {
            let mut name =
                Vec::with_capacity(self.prefix.len() + 8 + 33 + family.len() + 1 + id.len());
            name.extend_from_slice(&self.prefix);
            name.extend_from_slice(kind);
            name.push(b'{');
            push_hex(&mut name, fingerprint);
            name.push(b':');
            name.extend_from_slice(family.as_bytes());
            name.push(b':');
            name.extend_from_slice(id);
            name.push(b'}');
            name
        };
        Names {
            task: name(b"task:"),
            lease: name(b"lease:"),
        }
    }

    /// The value stored under `key`, if it proves it was written there by a replica of this
    /// deployment, passes its checks, and is still fresh by this replica's rules.
    fn decode_fresh(&self, key: &[u8], value: &[u8]) -> Option<Arc<CachedTask>> {
        let Some(task) = decode(value, key, &self.seal, self.max_body) else {
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

    /// A message on one of the tier's channels: a purge another replica announced, or a landing.
    fn heard(&self, channel: &[u8], payload: &[u8]) {
        if channel == self.purge_channel.as_slice() {
            let handler = self.on_purge.read().clone();
            if let Some(handler) = handler {
                handler(payload);
            }
        } else if channel == self.channel.as_slice() {
            self.announced(payload);
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

/// Whether `e` is Redis refusing a command on a key of another type (`WRONGTYPE`, also when a
/// script's call raised it).
fn is_wrong_type(e: &RedisError) -> bool {
    e.code() == Some("WRONGTYPE") || e.to_string().contains("WRONGTYPE")
}

/// What looking a task up with its lease found.
enum Look {
    Found(Arc<CachedTask>),
    /// A value, not fresh (or unreadable) here: the lease was not tried.
    Stale,
    Lease(LeaseTry),
}

/// What trying to take a lease found.
enum LeaseTry {
    Taken(Lease),
    /// Another replica holds it, within its lifetime.
    Held,
    /// Something holds the key that no replica wrote as a lease: not waited on.
    Foreign,
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

/// Listens for landing announcements, reconnecting after failures; ends with the tier.
async fn listen(
    inner: Weak<Inner>,
    channels: [Vec<u8>; 2],
    mut stop: watch::Receiver<()>,
    retry: Duration,
    connect_timeout: Duration,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            ended = subscription(&inner, &channels, connect_timeout) => {
                // Polling covers the gap; the probe, not this, decides whether Redis is up.
                if let Err(e) = ended {
                    let refused = inner.upgrade().is_some_and(|inner| inner.certificate_refused(&e));
                    if !refused {
                        tracing::debug!(error = %e, "shared cache subscription lost");
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(retry) => {}
        }
    }
}

/// One subscription to both channels, until it breaks (or the tier is gone). A cluster's comes
/// from its own connection; a server's (or the master Sentinel names now) from a pub/sub one.
async fn subscription(
    inner: &Weak<Inner>,
    [channel, purge_channel]: &[Vec<u8>; 2],
    connect_timeout: Duration,
) -> Result<(), RedisError> {
    let Some(link) = inner.upgrade().map(|inner| inner.connection.clone()) else {
        return Ok(());
    };
    // A blackholed Redis must not park the listener for the OS's connect timeout.
    let timed_out = |_| RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out"));
    if let Some(builder) = link.cluster_listener() {
        return cluster_subscription(inner, builder, [channel, purge_channel], connect_timeout)
            .await;
    }
    let client = tokio::time::timeout(connect_timeout, link.pubsub_client())
        .await
        .map_err(timed_out)??
        .ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "no pub/sub client")))?;
    let mut pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
        .await
        .map_err(timed_out)??;
    pubsub.subscribe(channel).await?;
    pubsub.subscribe(purge_channel).await?;
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        inner.heard(
            message.get_channel_name().as_bytes(),
            message.get_payload_bytes(),
        );
    }
    Ok(())
}

/// A cluster's subscription: announcements are published cluster-wide (classic `PUBLISH` reaches
/// every node over the cluster bus), so one connection subscribed on any node hears them all. It
/// speaks RESP3 so messages arrive as pushes and the crate renews the subscription when it
/// reconnects; a ping every `connect_timeout` finds a connection that died for good.
async fn cluster_subscription(
    inner: &Weak<Inner>,
    builder: redis::cluster::ClusterClientBuilder,
    [channel, purge_channel]: [&Vec<u8>; 2],
    connect_timeout: Duration,
) -> Result<(), RedisError> {
    let weak = inner.clone();
    let builder = builder.push_sender(move |push: redis::PushInfo| {
        if matches!(
            push.kind,
            redis::PushKind::Message | redis::PushKind::SMessage
        ) && let Some(inner) = weak.upgrade()
            && let [
                redis::Value::BulkString(channel),
                redis::Value::BulkString(payload),
                ..,
            ] = push.data.as_slice()
        {
            inner.heard(channel, payload);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    let client = builder.build()?;
    let mut connection = tokio::time::timeout(connect_timeout, client.get_async_connection())
        .await
        .map_err(|_| RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out")))??;
    connection.subscribe(channel).await?;
    connection.subscribe(purge_channel).await?;
    loop {
        tokio::time::sleep(connect_timeout).await;
        if inner.strong_count() == 0 {
            return Ok(());
        }
        let ping = redis::cmd("PING");
        tokio::time::timeout(connect_timeout, ping.query_async::<()>(&mut connection))
            .await
            .map_err(|_| RedisError::from((redis::ErrorKind::Io, "pub/sub ping timed out")))??;
    }
}

/// Checks Redis at start (so a tier that cannot connect reads down at once, not at its first
/// request), then every `retry`: while it is marked down, the first answer marks it up; while up on
/// Sentinel, the sentinels are asked whether the master moved (a failover they run leaves the old
/// master answering for a while, so no command would fail to tell).
async fn probe(inner: Weak<Inner>, mut stop: watch::Receiver<()>, retry: Duration) {
    if let Some(inner) = inner.upgrade()
        && let Err(e) = inner.check(inner.timeout.max(Duration::from_secs(1))).await
    {
        if !inner.certificate_refused(&e) {
            let timed_out = e.is_timeout() || e.to_string().contains("timed out");
            inner.metrics.shared.error(if timed_out {
                SharedError::Timeout
            } else {
                SharedError::Error
            });
        }
        inner.mark_down(&e.to_string());
    }
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(retry) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.up.load(Ordering::Relaxed) {
            if inner.connection.follows_master() {
                let connect_timeout = inner.timeout.max(Duration::from_secs(1));
                let _ = tokio::time::timeout(connect_timeout, inner.connection.refresh()).await;
            }
            continue;
        }
        match inner.check(inner.timeout).await {
            Ok(()) => {
                // Before requests look again, so none finds a lease of a call long finished.
                lease::release_unreleased(&inner).await;
                inner.mark_up();
            }
            Err(e) => {
                if !inner.certificate_refused(&e) {
                    tracing::debug!(error = %e, "shared cache: Redis does not answer yet");
                }
            }
        }
    }
}
