//! Hooks the gateway delivers: one tracker per submitted task with a hook. It watches the task through
//! the same poller long-polls and streams use (one upstream call per TTL however many watch), and
//! delivers every change in order, the finished state always, through [`crate::webhook::Hooks`].
//!
//! With the Redis tier, each tracker's record and lease live there (`shared/hooks.rs`): a tracker
//! that stops before its task is over (shutdown, a killed replica) leaves its record, and a sweep on
//! any replica takes it over from the last delivered state.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::Push;
use super::watch::{Snapshot, WatchTarget};
use crate::cache::KeyBuf;
use crate::credential::MJ_API_SECRET;
use crate::family::{FamilyId, TaskRef};
use crate::shared::hooks::HookRecord;
use crate::shared::{Lease, under_lease};
use crate::task::{TaskClass, TaskId};
use crate::upstream::ClientInfo;
use crate::webhook::guard::HookUrl;
use crate::webhook::{Ended, Event, Hooks, Slot};

/// How many times a just-submitted task is looked up before the tracker gives up on ever seeing it
/// (new-api can answer "no such task" for a moment after the submit), one TTL apart.
const FIRST_LOOKS: usize = 20;

/// How often each replica looks in Redis for hooks nobody is delivering.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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

/// How a tracker ended.
#[derive(Debug, PartialEq, Eq)]
enum Tracked {
    /// The task is over (or its hook is): nothing left to deliver.
    Over,
    /// The gateway is shutting down: another replica (or this one, restarted) goes on.
    Interrupted,
}

impl Push {
    /// Starts delivering `task`'s changes to its hook, holding `slot` (its place under
    /// `webhooks.max_pending`) until the task is over.
    pub(crate) fn deliver_hook(self: &Arc<Self>, hooks: &Arc<Hooks>, slot: Slot, task: HookTask) {
        let push = Arc::clone(self);
        let hooks = Arc::clone(hooks);
        tokio::spawn(async move {
            let record = push.record_of(&hooks, &task).await;
            push.run_tracker(&hooks, slot, task, record, None).await;
        });
    }

    /// Writes a new hook's record and takes its lease, when the Redis tier is on.
    async fn record_of(&self, hooks: &Hooks, task: &HookTask) -> Option<(HookRecord, Lease)> {
        let shared = self.fetcher.shared()?;
        let family = self.fetcher.families().get(task.family).name().to_owned();
        let record = HookRecord {
            id: format!("{:032x}", rand::random::<u128>()),
            family,
            task_id: task.id.clone(),
            path: task.path.clone(),
            hook: task.hook.uri.to_string(),
            credential: credential_headers(&task.headers),
            delivered: None,
            callback: task.callback.clone(),
        };
        let lease = shared.lease_hook(&record.id).await?;
        shared.save_hook(&record, hooks.max_age()).await;
        Some((record, lease))
    }

    /// Runs one tracker to its end, under its lease when it has one; forgets the record when the
    /// task is over, leaves it for another replica when interrupted.
    async fn run_tracker(
        self: Arc<Self>,
        hooks: &Arc<Hooks>,
        _slot: Slot,
        task: HookTask,
        record: Option<(HookRecord, Lease)>,
        delivered: Option<HeaderValue>,
    ) {
        let callback = task.callback.clone();
        let (record, lease) = match record {
            Some((record, lease)) => (Some(record), Some(lease)),
            None => (None, None),
        };
        let leases: Vec<Lease> = lease.into_iter().collect();
        let tracked =
            under_lease(&leases, self.track(hooks, task, record.clone(), delivered)).await;
        if tracked == Tracked::Over {
            if let (Some(shared), Some(record)) = (self.fetcher.shared(), &record) {
                shared.delete_hook(&record.id).await;
            }
            if let Some(token) = callback {
                hooks.forget_callback(&token);
            }
        }
        for lease in leases {
            lease.release().await;
        }
    }

    async fn track(
        self: &Arc<Self>,
        hooks: &Hooks,
        task: HookTask,
        mut record: Option<HookRecord>,
        mut delivered: Option<HeaderValue>,
    ) -> Tracked {
        let metrics = Arc::clone(&self.metrics);
        let _pending = metrics.webhooks.pending();
        let Ok(id) = TaskId::parse(&task.id) else {
            return Tracked::Over;
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
            return Tracked::Over;
        };
        let target = WatchTarget {
            key: key.to_key(),
            path: task.path.clone(),
            headers: task.headers.clone(),
            task: (task.family, task.id.clone()),
            client: task.client,
        };
        let mut changes = self.watch(target, first);
        let mut draining = self.watchers.draining();
        let mut closed = false;
        loop {
            if *draining.borrow() {
                return Tracked::Interrupted;
            }
            let latest = Arc::clone(&changes.borrow_and_update());
            if delivered.as_ref() != Some(&latest.etag) && hooks.wants(latest.class) {
                let event = event_of(&latest);
                let newer = || Some(event_of(&changes.borrow()));
                match hooks
                    .deliver(&task.hook, &task.id, event, newer, &mut draining)
                    .await
                {
                    Ended::Stop => return Tracked::Over,
                    Ended::Interrupted => return Tracked::Interrupted,
                    // The state delivered may be newer than `latest` (it replaced a waiting one).
                    Ended::Done(etag) => {
                        self.remember(hooks, record.as_mut(), &etag).await;
                        delivered = Some(etag);
                    }
                }
                continue;
            }
            if latest.class != TaskClass::InProgress || closed {
                return Tracked::Over;
            }
            // The poller ends at the finished state (or when the task vanishes): one more look.
            tokio::select! {
                changed = changes.changed() => closed = changed.is_err(),
                _ = draining.changed() => {}
            }
        }
    }

    /// Notes in the hook's record that `etag` was delivered, so a takeover starts after it.
    async fn remember(&self, hooks: &Hooks, record: Option<&mut HookRecord>, etag: &HeaderValue) {
        if let (Some(shared), Some(record)) = (self.fetcher.shared(), record) {
            record.delivered = etag.to_str().ok().map(str::to_owned);
            shared.save_hook(record, hooks.max_age()).await;
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

    /// Takes over hooks no replica is delivering any more, every [`SWEEP_EVERY`], until the gateway
    /// goes away or shuts down. Runs only with the Redis tier.
    pub(crate) fn sweep_orphan_hooks(self: &Arc<Self>, hooks: &Arc<Hooks>) {
        let (push, hooks) = (Arc::downgrade(self), Arc::downgrade(hooks));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let (Some(push), Some(hooks)) = (push.upgrade(), Weak::upgrade(&hooks)) else {
                    return;
                };
                if *push.watchers.draining().borrow() {
                    return;
                }
                push.take_over_orphans(&hooks).await;
            }
        });
    }

    async fn take_over_orphans(self: &Arc<Self>, hooks: &Arc<Hooks>) {
        let Some(shared) = self.fetcher.shared() else {
            return;
        };
        for (record, lease) in shared.orphan_hooks(16).await {
            let task = self.task_of(&record);
            let fingerprint = task
                .as_ref()
                .map(|task| self.fetcher.fingerprinter().fingerprint(&task.headers));
            let slot = fingerprint.and_then(|fingerprint| hooks.reserve(fingerprint));
            let (Some(slot), Some(task)) = (slot, task) else {
                lease.release().await;
                continue;
            };
            tracing::info!(task = %record.task_id, "webhook: taking over a hook another replica left");
            let delivered = record
                .delivered
                .as_deref()
                .and_then(|etag| HeaderValue::from_str(etag).ok());
            let push = Arc::clone(self);
            let hooks = Arc::clone(hooks);
            tokio::spawn(async move {
                push.run_tracker(&hooks, slot, task, Some((record, lease)), delivered)
                    .await;
            });
        }
    }

    /// The tracker's task for a record read back from Redis.
    fn task_of(&self, record: &HookRecord) -> Option<HookTask> {
        let family = self.fetcher.families().by_name(&record.family)?.id();
        let mut headers = HeaderMap::new();
        for (name, value) in &record.credential {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            );
        }
        Some(HookTask {
            family,
            id: record.task_id.clone(),
            path: record.path.clone(),
            headers,
            client: ClientInfo {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
            },
            hook: HookUrl::parse(&record.hook).ok()?,
            callback: record.callback.clone(),
        })
    }
}

/// The headers a task is read with: only the credential, nothing else of the client's request.
fn credential_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    [&AUTHORIZATION, &MJ_API_SECRET]
        .into_iter()
        .filter_map(|name| {
            let value = headers.get(name)?;
            Some((name.as_str().to_owned(), value.as_bytes().to_vec()))
        })
        .collect()
}

fn event_of(snapshot: &Snapshot) -> Event {
    Event {
        body: snapshot.body.clone(),
        etag: snapshot.etag.clone(),
        class: snapshot.class,
    }
}
