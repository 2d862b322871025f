//! Hooks the gateway delivers: one tracker per submitted task with a hook. It watches the task through
//! the same poller long-polls and streams use (one upstream call per TTL however many watch), and
//! delivers every change in order, the finished state always, through [`crate::webhook::Hooks`].

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::Push;
use super::watch::{Snapshot, WatchTarget};
use crate::cache::KeyBuf;
use crate::family::{FamilyId, TaskRef};
use crate::task::{TaskClass, TaskId};
use crate::upstream::ClientInfo;
use crate::webhook::guard::HookUrl;
use crate::webhook::{Ended, Event, Hooks, Slot};

/// How many times a just-submitted task is looked up before the tracker gives up on ever seeing it
/// (new-api can answer "no such task" for a moment after the submit), one TTL apart.
const FIRST_LOOKS: usize = 20;

/// A submitted task whose hook the gateway delivers to.
pub struct HookTask {
    pub family: FamilyId,
    pub id: String,
    /// The task's status path upstream.
    pub path: String,
    /// The submitting request's headers: its credential reads the task.
    pub headers: HeaderMap,
    pub client: ClientInfo,
    pub hook: HookUrl,
    /// The token of the gateway's own callback URL the upstream was given, if any.
    pub callback: Option<String>,
}

impl Push {
    /// Starts delivering `task`'s changes to its hook, holding `slot` (its place under
    /// `webhooks.max_pending`) until the task is over.
    pub(crate) fn deliver_hook(self: &Arc<Self>, hooks: &Arc<Hooks>, slot: Slot, task: HookTask) {
        let push = Arc::clone(self);
        let hooks = Arc::clone(hooks);
        tokio::spawn(async move {
            let _slot = slot;
            let callback = task.callback.clone();
            push.track(&hooks, task).await;
            if let Some(token) = callback {
                hooks.forget_callback(&token);
            }
        });
    }

    async fn track(self: Arc<Self>, hooks: &Hooks, task: HookTask) {
        let metrics = Arc::clone(&self.metrics);
        let _pending = metrics.webhooks.pending();
        let Ok(id) = TaskId::parse(&task.id) else {
            return;
        };
        let task_ref = TaskRef {
            family: task.family,
            id,
        };
        let fingerprint = self.fetcher.fingerprinter().fingerprint(&task.headers);
        let key = KeyBuf::new(&fingerprint, task_ref);
        let Some(first) = self.first_state(&task, task_ref, &key).await else {
            metrics.webhooks.delivery("abandoned");
            tracing::warn!(task = %task.id, "webhook: the task never became visible upstream");
            return;
        };
        let target = WatchTarget {
            key: key.to_key(),
            path: task.path.clone(),
            headers: task.headers.clone(),
            task: (task.family, task.id.clone()),
            client: task.client,
        };
        let mut changes = self.watch(target, first);
        let mut delivered = None;
        let mut closed = false;
        loop {
            let latest = Arc::clone(&changes.borrow_and_update());
            if delivered.as_ref() != Some(&latest.etag) && hooks.wants(latest.class) {
                let event = event_of(&latest);
                let newer = || {
                    let seen = Arc::clone(&changes.borrow());
                    Some(event_of(&seen))
                };
                if hooks.deliver(&task.hook, &task.id, event, newer).await == Ended::Stop {
                    return;
                }
                delivered = Some(latest.etag.clone());
                continue;
            }
            if latest.class != TaskClass::InProgress || closed {
                return;
            }
            // The poller ends at the finished state (or when the task vanishes): one more look.
            closed = changes.changed().await.is_err();
        }
    }

    /// The task's first state, looked up until the upstream shows it (or [`FIRST_LOOKS`] times).
    async fn first_state(
        &self,
        task: &HookTask,
        task_ref: TaskRef<'_>,
        key: &KeyBuf,
    ) -> Option<Snapshot> {
        let ttl = self.fetcher.cache().in_progress_ttl();
        for _ in 0..FIRST_LOOKS {
            let _ = self
                .fetcher
                .fetch(&task.path, &task.headers, task_ref, task.client)
                .await;
            if let Some((current, _)) = self.fetcher.cache().current(key.as_bytes())
                && current.status == StatusCode::OK
            {
                return Some(current);
            }
            tokio::time::sleep(ttl.max(Duration::from_millis(100))).await;
        }
        None
    }
}

fn event_of(snapshot: &Snapshot) -> Event {
    Event {
        body: snapshot.body.clone(),
        etag: snapshot.etag.clone(),
        class: snapshot.class,
    }
}
