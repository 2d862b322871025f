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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;

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
    /// Delivered, or given up after its retries: the next change is the next event.
    Done,
    /// The hook is finished with: `410 Gone`, or it points at an internal address.
    Stop,
}

/// The delivery side: attempts, the retry schedule and the bound on watched hooks.
pub struct Hooks {
    deliverer: Deliverer,
    retry: Schedule,
    finished_only: bool,
    max_pending: usize,
    pending: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// A place among the watched hooks, given back on drop.
pub struct Slot(Arc<Hooks>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
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
            ),
            retry: config.retry,
            finished_only: config.finished_only,
            max_pending: config.max_pending,
            pending: AtomicUsize::new(0),
            metrics,
        }
    }

    pub fn allow_private(&self) -> bool {
        self.deliverer.allow_private()
    }

    /// Whether a state is delivered at all (`finished_only` skips the running ones).
    pub fn wants(&self, class: TaskClass) -> bool {
        !self.finished_only || class != TaskClass::InProgress
    }

    /// A place among the watched hooks, if `webhooks.max_pending` allows one more.
    pub fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            });
        taken.ok().map(|_| Slot(Arc::clone(self)))
    }

    /// Delivers `event` of task `task_id` to `hook`, retrying on the schedule. `newer` is polled
    /// between attempts: a running state it replaces is superseded (never the finished one).
    pub async fn deliver(
        &self,
        hook: &HookUrl,
        task_id: &str,
        mut event: Event,
        mut newer: impl FnMut() -> Option<Event>,
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
                    return Ended::Done;
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
                return Ended::Done;
            };
            tokio::time::sleep(wait).await;
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
