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

use crate::credential::CredentialFingerprint;
use crate::family::FamilyId;
use crate::hex::push_hex;

use crate::config::WebhooksConfig;
use crate::metrics::Metrics;
use crate::task::TaskClass;
use deliver::{Attempt, Deliverer};
use guard::HookUrl;
use retry::Schedule;

/// One state of a task, as delivered: its answer's bytes, its tag, and whether it is over.
pub struct Event {
    pub body: Bytes,
    pub etag: HeaderValue,
    pub class: TaskClass,
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

/// The delivery side: attempts, the retry schedule and the bound on watched hooks.
pub struct Hooks {
    deliverer: Deliverer,
    retry: Schedule,
    finished_only: bool,
    max_pending: usize,
    max_pending_per_credential: usize,
    pending: AtomicUsize,
    /// Watched hooks by submitting credential, for `webhooks.max_pending_per_credential`.
    per_credential: Mutex<HashMap<CredentialFingerprint, usize>>,
    metrics: Arc<Metrics>,
    /// `webhooks.public_url`: where the upstream calls the gateway back.
    public_url: Option<String>,
    /// Callback tokens handed to the upstream, by token.
    callbacks: Mutex<HashMap<String, Callback>>,
}

/// What a callback token was issued for: one submit's task, under one credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub fingerprint: CredentialFingerprint,
    pub family: FamilyId,
    /// Known once the upstream's answer to the submit named it; until then, the first callback's.
    pub task_id: Option<String>,
}

/// A place among the watched hooks, given back on drop.
pub struct Slot(Arc<Hooks>, CredentialFingerprint);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        let mut counts = self.0.per_credential.lock();
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

impl Hooks {
    pub fn new(config: &WebhooksConfig, tls: rustls::ClientConfig, metrics: Arc<Metrics>) -> Self {
        Hooks {
            deliverer: Deliverer::new(
                Arc::clone(&config.secret),
                tls,
                config.allow_private,
                config.timeout,
                config.max_in_flight,
            ),
            retry: config.retry,
            finished_only: config.finished_only,
            max_pending: config.max_pending,
            max_pending_per_credential: config.max_pending_per_credential,
            pending: AtomicUsize::new(0),
            per_credential: Mutex::new(HashMap::new()),
            metrics,
            public_url: config.public_url.clone(),
            callbacks: Mutex::new(HashMap::new()),
        }
    }

    /// A new callback URL for a submit by `fingerprint`, and its token; `None` without
    /// `webhooks.public_url`. The token is 128 random bits: the URL is the only proof a callback has.
    pub fn issue_callback(
        &self,
        fingerprint: CredentialFingerprint,
        family: FamilyId,
    ) -> Option<(String, String)> {
        let base = self.public_url.as_ref()?;
        let mut token = Vec::with_capacity(32);
        push_hex(&mut token, &rand::random::<[u8; 16]>());
        let token = String::from_utf8(token).unwrap_or_default();
        self.callbacks.lock().insert(
            token.clone(),
            Callback {
                fingerprint,
                family,
                task_id: None,
            },
        );
        Some((format!("{base}/_mjgate/callback/{token}"), token))
    }

    /// The family `token` was issued for, if it is a token this gateway issued.
    pub fn callback_family(&self, token: &str) -> Option<FamilyId> {
        self.callbacks.lock().get(token).map(|c| c.family)
    }

    /// Binds `token` to the task the submit's answer named.
    pub fn bind_callback(&self, token: &str, task_id: &str) {
        if let Some(callback) = self.callbacks.lock().get_mut(token) {
            callback.task_id = Some(task_id.to_owned());
        }
    }

    /// What `token` was issued for, binding it to `task_id` if nothing was yet; `None` for an unknown
    /// token or one issued for another task.
    pub fn callback(&self, token: &str, task_id: &str) -> Option<Callback> {
        let mut callbacks = self.callbacks.lock();
        let callback = callbacks.get_mut(token)?;
        match &callback.task_id {
            Some(id) if id != task_id => return None,
            Some(_) => {}
            None => callback.task_id = Some(task_id.to_owned()),
        }
        Some(callback.clone())
    }

    /// Forgets `token` (its task is over, or its submit failed).
    pub fn forget_callback(&self, token: &str) {
        self.callbacks.lock().remove(token);
    }

    pub fn allow_private(&self) -> bool {
        self.deliverer.allow_private()
    }

    /// How long an event is retried (`webhooks.max_age`): also how long a hook's record is kept.
    pub fn max_age(&self) -> std::time::Duration {
        self.retry.max_age
    }

    /// Whether a state is delivered at all (`finished_only` skips the running ones).
    pub fn wants(&self, class: TaskClass) -> bool {
        !self.finished_only || class != TaskClass::InProgress
    }

    /// A place among the watched hooks for a submit by `fingerprint`, if `webhooks.max_pending` and
    /// its per-credential share allow one more (one client cannot take every place). Counted as
    /// `overflow` when not.
    pub fn reserve(self: &Arc<Self>, fingerprint: CredentialFingerprint) -> Option<Slot> {
        let mut counts = self.per_credential.lock();
        let mine = counts.get(&fingerprint).copied().unwrap_or(0);
        let taken = (mine < self.max_pending_per_credential)
            .then(|| {
                self.pending
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < self.max_pending).then_some(n + 1)
                    })
                    .ok()
            })
            .flatten();
        if taken.is_none() {
            self.metrics.webhooks.delivery("overflow");
            return None;
        }
        *counts.entry(fingerprint).or_default() += 1;
        Some(Slot(Arc::clone(self), fingerprint))
    }

    /// Delivers `event` of task `task_id` to `hook`, retrying on the schedule. `newer` is polled
    /// between attempts: a running state it replaces is superseded (never the finished one).
    pub async fn deliver(
        &self,
        hook: &HookUrl,
        task_id: &str,
        mut event: Event,
        mut newer: impl FnMut() -> Option<Event>,
        draining: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Ended {
        let mut since = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let id = event_id(task_id, &event.etag);
            let result = self.deliverer.attempt(hook, &id, &event.body).await;
            self.metrics.webhooks.attempt(result.label());
            match result {
                Attempt::Delivered(_) => {
                    self.metrics.webhooks.delivery("delivered");
                    self.metrics.webhooks.delivered_after(since.elapsed());
                    return Ended::Done(event.etag);
                }
                Attempt::Gone => {
                    self.metrics.webhooks.delivery("gone");
                    tracing::info!(
                        task = task_id,
                        "webhook receiver answered 410: hook dropped"
                    );
                    return Ended::Stop;
                }
                Attempt::Refused(e) => {
                    self.metrics.webhooks.delivery("refused");
                    tracing::warn!(task = task_id, error = %e, "webhook refused");
                    return Ended::Stop;
                }
                Attempt::Failed(failure) => {
                    tracing::debug!(task = task_id, event = %id, attempt, ?failure, "webhook attempt failed");
                }
            }
            let Some(wait) = self.retry.next(attempt, since.elapsed(), rand::random()) else {
                self.metrics.webhooks.delivery("abandoned");
                tracing::warn!(task = task_id, event = %id, attempts = attempt, "webhook event abandoned");
                return Ended::Done(event.etag);
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = draining.wait_for(|draining| *draining) => return Ended::Interrupted,
            }
            if event.class == TaskClass::InProgress
                && let Some(next) = newer()
                && next.etag != event.etag
            {
                self.metrics.webhooks.delivery("superseded");
                event = next;
                attempt = 0;
                since = Instant::now();
            }
        }
    }
}

/// The `webhook-id` of one task state: the same across its retries, another for every change.
pub fn event_id(task_id: &str, etag: &HeaderValue) -> String {
    let tag = String::from_utf8_lossy(etag.as_bytes());
    format!("evt_{task_id}_{}", tag.trim_matches('"'))
}
