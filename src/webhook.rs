//! Webhooks the gateway delivers itself: a submit's `notifyHook` is taken over ([`submit`]), the task
//! is watched by the ordinary pollers (`push/hooks.rs`), and each change is `POST`ed to the hook,
//! signed ([`sign`]), only to public addresses ([`guard`]), and retried ([`retry`]) until a 2xx.
//!
//! - [`sign`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//! - [`guard`]: where a client's hook may point (no internal addresses, no rebinding).
//! - [`deliver`]: one attempt: connect, `POST`, read a little, follow no redirect.
//! - [`submit`]: taking a submit's `notifyHook` over, and the task id from the upstream's answer.
//! - [`retry`]: when a failed delivery is tried again, and when it is given up.

pub mod deliver;
pub mod guard;
pub mod retry;
pub mod sign;
pub mod submit;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::credential::{CredentialFingerprint, FINGERPRINT_LEN};
use crate::family::{Families, FamilyId};
use crate::hex::push_hex;

use crate::config::WebhooksConfig;
use crate::metrics::{Delivery, Metrics};
use crate::shared::SharedCache;
use crate::shared::hooks::CallbackRecord;
use crate::task::TaskClass;
use arc_swap::ArcSwap;
use deliver::{Attempt, Deliverer, Terms};
use guard::HookUrl;
use retry::Schedule;

/// How long a finished task's callback token is still answered (`200`, ignored): an upstream may
/// call back late or out of order, and must not take a `404` for a task it finished.
const FINISHED_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a watched hook costs at rest besides its record's own bytes: its tracker's task, its
/// poller's task, the channel between them, the copies of its request headers they keep, its place in
/// the counts, and the allocator's pages around them. Measured as resident memory (not heap alone):
/// 25.8 KB a hook between 1,000 and 6,000 pending, of which about 1.7 KB is its cache entry, charged to
/// `cache.max_memory` (docs/benchmarks.md, "Webhook memory"). Charged against `webhooks.max_memory`
/// with the record.
pub const HOOK_OVERHEAD: usize = 24 << 10;

/// One state of a task, as delivered: its answer's bytes, its tag, whether it is over, and the
/// `webhook-id` it goes out under (its own, shared only by its retries).
pub struct Event {
    pub id: String,
    pub body: Bytes,
    pub etag: HeaderValue,
    pub class: TaskClass,
}

/// A fresh `webhook-id`: 128 random bits. Never derived from the body: a task going 10% → 20% →
/// 10% makes three events, and two tasks with the same answer make two.
pub fn new_event_id() -> String {
    let mut id = Vec::with_capacity(36);
    id.extend_from_slice(b"evt_");
    push_hex(&mut id, &rand::random::<[u8; 16]>());
    String::from_utf8(id).unwrap_or_default()
}

/// How the delivery of one event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The event with this `ETag` was delivered, or given up after its retries (a newer state may
    /// have replaced the one first asked for): the next change is the next event.
    Done(HeaderValue),
    /// The hook is finished with: `410 Gone`, or it points at an internal address.
    Stop,
    /// The gateway is shutting down: the event is left for whoever goes on (Redis tier).
    Interrupted,
}

/// The delivery side: attempts, the retry schedule, the bounds on watched hooks (in number and in
/// bytes), and the callback tokens handed to upstreams.
pub struct Hooks {
    deliverer: Deliverer,
    /// What a reload changes ([`Hooks::reconfigure`]), read afresh at every use.
    settings: ArcSwap<Settings>,
    pending: AtomicUsize,
    /// Watched hooks by submitting credential, for `webhooks.max_pending_per_credential`.
    per_credential: Mutex<HashMap<CredentialFingerprint, usize>>,
    /// `webhooks.max_memory`, in bytes: every watched hook's record and overhead, and the body of
    /// every event being sent, are taken from it. A hook that does not fit is not taken over; an
    /// event waits (holding no body) until its bytes fit.
    memory: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Callback tokens this replica handed to the upstream for tasks still watched, by token (as many
    /// as watched hooks at most). With the Redis tier they are also kept there (sealed, as hook
    /// records are), so any replica answers them.
    callbacks: Mutex<HashMap<String, Callback>>,
    /// Tokens of tasks that are over, answered for [`FINISHED_TOKEN_TTL`] more (bounded in number by
    /// `webhooks.max_pending`, the least recently used dropped first).
    finished_tokens: moka::sync::Cache<String, Callback>,
    shared: Option<SharedCache>,
}

/// The part of `[webhooks]` a reload applies: the signing secret (events from then on are signed with
/// the new one), where hooks may point, the deadline and retries of an attempt, which states are
/// delivered, the bounds on watched hooks in number, and where the upstream calls back.
/// `max_in_flight` and `max_memory` size the semaphores at start-up and need a restart.
#[derive(Debug)]
struct Settings {
    terms: Terms,
    retry: Schedule,
    finished_only: bool,
    max_pending: usize,
    max_pending_per_credential: usize,
    /// `webhooks.public_url`: where the upstream calls the gateway back.
    public_url: Option<String>,
}

impl Settings {
    fn of(config: &WebhooksConfig) -> Self {
        Settings {
            terms: Terms {
                secret: Arc::clone(&config.secret),
                allow_private: config.allow_private,
                timeout: config.timeout,
            },
            retry: config.retry,
            finished_only: config.finished_only,
            max_pending: config.max_pending,
            max_pending_per_credential: config.max_pending_per_credential,
            public_url: config.public_url.clone(),
        }
    }
}

/// What a callback token was issued for: one submit's task, under one credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub fingerprint: CredentialFingerprint,
    pub family: FamilyId,
    /// Known once the upstream's answer to the submit named it; until then, the first callback's.
    pub task_id: Option<String>,
    /// The task is over: its callbacks are acknowledged and ignored.
    pub finished: bool,
}

/// A place among the watched hooks, and its bytes under `webhooks.max_memory`; given back on drop.
pub struct Slot {
    hooks: Arc<Hooks>,
    fingerprint: CredentialFingerprint,
    _memory: OwnedSemaphorePermit,
    bytes: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hooks.pending.fetch_sub(1, Ordering::AcqRel);
        self.hooks.metrics.webhooks.memory(-(self.bytes as i64));
        let mut counts = self.hooks.per_credential.lock();
        if let Some(n) = counts.get_mut(&self.fingerprint) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.fingerprint);
            }
        }
    }
}

/// The bytes of one event being sent, under `webhooks.max_memory`.
struct Sending {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
    metrics: Arc<Metrics>,
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.metrics.webhooks.memory(-(self.bytes as i64));
    }
}

impl Hooks {
    pub fn new(
        config: &WebhooksConfig,
        tls: rustls::ClientConfig,
        metrics: Arc<Metrics>,
        shared: Option<SharedCache>,
    ) -> Self {
        let memory = usize::try_from(config.max_memory)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        metrics.webhooks.set_capacity(memory);
        Hooks {
            deliverer: Deliverer::new(tls, config.max_in_flight),
            settings: ArcSwap::from_pointee(Settings::of(config)),
            pending: AtomicUsize::new(0),
            per_credential: Mutex::new(HashMap::new()),
            memory: Arc::new(Semaphore::new(memory)),
            metrics,
            callbacks: Mutex::new(HashMap::new()),
            finished_tokens: moka::sync::Cache::builder()
                .max_capacity(config.max_pending as u64)
                .time_to_live(FINISHED_TOKEN_TTL)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            shared,
        }
    }

    /// Applies a reloaded `[webhooks]` (see [`Settings`]) to every attempt and reservation from now
    /// on. Hooks already watched keep their places, even past a lowered `max_pending`.
    pub fn reconfigure(&self, config: &WebhooksConfig) {
        self.settings.store(Arc::new(Settings::of(config)));
    }

    /// A new callback URL for a submit by `fingerprint`, and its token; `None` without
    /// `webhooks.public_url`. The token is 128 random bits: the URL is the only proof a callback has.
    /// With the Redis tier it is written there too, so that the replica the upstream calls back
    /// (not always this one, and this one may be gone) knows it.
    pub async fn issue_callback(
        &self,
        fingerprint: CredentialFingerprint,
        family: FamilyId,
        families: &Families,
    ) -> Option<(String, String)> {
        let settings = self.settings.load();
        let base = settings.public_url.as_ref()?;
        let mut token = Vec::with_capacity(32);
        push_hex(&mut token, &rand::random::<[u8; 16]>());
        let token = String::from_utf8(token).unwrap_or_default();
        let callback = Callback {
            fingerprint,
            family,
            task_id: None,
            finished: false,
        };
        self.save_callback(
            &token,
            &callback,
            families,
            self.settings.load().retry.max_age,
        )
        .await;
        self.callbacks.lock().insert(token.clone(), callback);
        Some((format!("{base}/_mjgate/callback/{token}"), token))
    }

    async fn save_callback(
        &self,
        token: &str,
        callback: &Callback,
        families: &Families,
        ttl: std::time::Duration,
    ) {
        if let Some(shared) = &self.shared {
            let record = CallbackRecord {
                fingerprint: callback.fingerprint.as_bytes().to_vec(),
                family: families.get(callback.family).name().to_owned(),
                task_id: callback.task_id.clone(),
                finished: callback.finished,
            };
            shared.save_callback(token, &record, ttl).await;
        }
    }

    /// What `token` was issued for: this replica's own, else the Redis tier's record of it.
    async fn lookup_callback(&self, token: &str, families: &Families) -> Option<Callback> {
        if let Some(callback) = self.callbacks.lock().get(token) {
            return Some(callback.clone());
        }
        if let Some(callback) = self.finished_tokens.get(token) {
            return Some(callback);
        }
        let record = self.shared.as_ref()?.load_callback(token).await?;
        let fingerprint: [u8; FINGERPRINT_LEN] = record.fingerprint.as_slice().try_into().ok()?;
        Some(Callback {
            fingerprint: CredentialFingerprint::from_bytes(fingerprint),
            family: families.by_name(&record.family)?.id(),
            task_id: record.task_id,
            finished: record.finished,
        })
    }

    /// The family `token` was issued for, if it is a token a replica issued.
    pub async fn callback_family(&self, token: &str, families: &Families) -> Option<FamilyId> {
        self.lookup_callback(token, families)
            .await
            .map(|c| c.family)
    }

    /// Binds `token` to the task the submit's answer named.
    pub async fn bind_callback(&self, token: &str, task_id: &str, families: &Families) {
        let bound = {
            let mut callbacks = self.callbacks.lock();
            let Some(callback) = callbacks.get_mut(token) else {
                return;
            };
            callback.task_id = Some(task_id.to_owned());
            callback.clone()
        };
        self.save_callback(token, &bound, families, self.settings.load().retry.max_age)
            .await;
    }

    /// What `token` was issued for, binding it to `task_id` if nothing was yet; `None` for an unknown
    /// token or one issued for another task.
    pub async fn callback(
        &self,
        token: &str,
        task_id: &str,
        families: &Families,
    ) -> Option<Callback> {
        let mut callback = self.lookup_callback(token, families).await?;
        match &callback.task_id {
            Some(id) if id != task_id => return None,
            Some(_) => {}
            None => {
                callback.task_id = Some(task_id.to_owned());
                if let Some(mine) = self.callbacks.lock().get_mut(token) {
                    mine.task_id = Some(task_id.to_owned());
                }
                self.save_callback(
                    token,
                    &callback,
                    families,
                    self.settings.load().retry.max_age,
                )
                .await;
            }
        }
        Some(callback)
    }

    /// Marks `token`'s task over: its callbacks are answered `200` and ignored for
    /// [`FINISHED_TOKEN_TTL`] more, here and (with the Redis tier) on every replica.
    pub async fn finish_callback(&self, token: &str, families: &Families) {
        let Some(mut callback) = self.callbacks.lock().remove(token) else {
            return;
        };
        callback.finished = true;
        self.save_callback(token, &callback, families, FINISHED_TOKEN_TTL)
            .await;
        self.finished_tokens.insert(token.to_owned(), callback);
    }

    /// Forgets `token` (its submit failed: no task was made), here and in the Redis tier.
    pub async fn forget_callback(&self, token: &str) {
        self.callbacks.lock().remove(token);
        if let Some(shared) = &self.shared {
            shared.delete_callback(token).await;
        }
    }

    pub fn allow_private(&self) -> bool {
        self.settings.load().terms.allow_private
    }

    /// How long an event is retried (`webhooks.max_age`): also how long a hook's record is kept.
    pub fn max_age(&self) -> std::time::Duration {
        self.settings.load().retry.max_age
    }

    /// Whether a state is delivered at all: never "no such task", and with `finished_only` only the
    /// finished state.
    pub fn wants(&self, class: TaskClass) -> bool {
        match class {
            TaskClass::NotFound => false,
            TaskClass::InProgress => !self.settings.load().finished_only,
            TaskClass::Terminal => true,
        }
    }

    /// A place among the watched hooks for a submit by `fingerprint` whose record holds `bytes`, if
    /// `webhooks.max_pending`, its per-credential share and `webhooks.max_memory` allow one more (one
    /// client cannot take every place). Counted as `overflow` when not.
    pub fn reserve(
        self: &Arc<Self>,
        fingerprint: CredentialFingerprint,
        bytes: usize,
    ) -> Option<Slot> {
        let bytes = bytes + HOOK_OVERHEAD;
        let memory = u32::try_from(bytes)
            .ok()
            .and_then(|n| Arc::clone(&self.memory).try_acquire_many_owned(n).ok());
        let mut counts = self.per_credential.lock();
        let mine = counts.get(&fingerprint).copied().unwrap_or(0);
        let settings = self.settings.load();
        let taken = (mine < settings.max_pending_per_credential && memory.is_some())
            .then(|| {
                self.pending
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < settings.max_pending).then_some(n + 1)
                    })
                    .ok()
            })
            .flatten();
        let (Some(_), Some(memory)) = (taken, memory) else {
            self.metrics.webhooks.delivery(Delivery::Overflow);
            return None;
        };
        *counts.entry(fingerprint).or_default() += 1;
        self.metrics.webhooks.memory(bytes as i64);
        Some(Slot {
            hooks: Arc::clone(self),
            fingerprint,
            _memory: memory,
            bytes,
        })
    }

    /// Room under `webhooks.max_memory` for a body of `bytes` being sent, waited for (holding nothing
    /// but the wish); `None` when the gateway starts shutting down meanwhile. A body larger than the
    /// whole budget waits for all of it, and goes alone.
    async fn room_for(
        &self,
        bytes: usize,
        draining: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<Sending> {
        let capacity = self.metrics.webhooks.capacity();
        let n = u32::try_from(bytes.min(capacity)).unwrap_or(u32::MAX);
        let acquire = Arc::clone(&self.memory).acquire_many_owned(n);
        let permit = tokio::select! {
            permit = acquire => permit.ok()?,
            _ = draining.wait_for(|draining| *draining) => return None,
        };
        self.metrics.webhooks.memory(n as i64);
        Some(Sending {
            _permit: permit,
            bytes: n as usize,
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// Delivers `event` of task `task_id` to `hook`, retrying on the schedule. Between attempts no
    /// body is held: `source` is asked for the task's latest state before each retry. A running state
    /// it replaces is superseded (a new event, with its own id); the finished one never is, and is
    /// retried under its id with the body as read again.
    pub async fn deliver(
        &self,
        hook: &HookUrl,
        task_id: &str,
        event: Event,
        source: &mut impl EventSource,
        draining: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Ended {
        let mut since = Instant::now();
        let mut attempt = 0u32;
        let mut current = Some(event);
        let (mut id, mut etag, mut class) = match &current {
            Some(event) => (event.id.clone(), event.etag.clone(), event.class),
            None => return Ended::Stop,
        };
        loop {
            attempt += 1;
            if let Some(event) = current.take() {
                let Some(sending) = self.room_for(event.body.len(), draining).await else {
                    return Ended::Interrupted;
                };
                let terms = self.settings.load().terms.clone();
                let result = self.deliverer.attempt(&terms, hook, &id, &event.body).await;
                drop(sending);
                self.metrics.webhooks.attempt(result.label());
                match result {
                    Attempt::Delivered(_) => {
                        self.metrics.webhooks.delivery(Delivery::Delivered);
                        self.metrics.webhooks.delivered_after(since.elapsed());
                        return Ended::Done(etag);
                    }
                    Attempt::Gone => {
                        self.metrics.webhooks.delivery(Delivery::Gone);
                        tracing::info!(
                            task = task_id,
                            "webhook receiver answered 410: hook dropped"
                        );
                        return Ended::Stop;
                    }
                    Attempt::Refused(e) => {
                        self.metrics.webhooks.delivery(Delivery::Refused);
                        tracing::warn!(task = task_id, error = %e, "webhook refused");
                        return Ended::Stop;
                    }
                    Attempt::Failed(failure) => {
                        tracing::debug!(task = task_id, event = %id, attempt, ?failure, "webhook attempt failed");
                    }
                }
            }
            let Some(wait) =
                self.settings
                    .load()
                    .retry
                    .next(attempt, since.elapsed(), rand::random())
            else {
                self.metrics.webhooks.delivery(Delivery::Abandoned);
                tracing::warn!(task = task_id, event = %id, attempts = attempt, "webhook event abandoned");
                return Ended::Done(etag);
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = draining.wait_for(|draining| *draining) => return Ended::Interrupted,
            }
            // Read again: the task may have moved on, and its body was not kept meanwhile.
            let Some(latest) = source.latest().await else {
                continue;
            };
            if latest.etag != etag && class == TaskClass::InProgress && latest.class.is_task() {
                self.metrics.webhooks.delivery(Delivery::Superseded);
                (id, etag, class) = (new_event_id(), latest.etag.clone(), latest.class);
                attempt = 0;
                since = Instant::now();
            } else if latest.etag != etag && class != TaskClass::InProgress {
                // The finished state read again (refetched after eviction): the same event, whatever
                // its bytes now are.
                etag = latest.etag.clone();
            }
            if latest.class.is_task() && (latest.etag == etag) {
                current = Some(Event {
                    id: id.clone(),
                    ..latest
                });
            }
        }
    }
}

/// Where a delivery reads its task's latest state again before a retry.
pub trait EventSource: Send {
    fn latest(&mut self) -> impl std::future::Future<Output = Option<Event>> + Send;
}
