//! Hooks the gateway delivers: one tracker per submitted task with a hook. It watches the task through
//! the same poller long-polls and streams use (one upstream call per TTL however many watch), and
//! delivers every change in order, the finished state always, through [`crate::webhook::Hooks`].
//!
//! "No such task" is never an event: right after a submit new-api can answer `task_no_found` (with
//! `200`) until its row is inserted, so the tracker keeps looking, less and less often, for as long as
//! an event would still be worth delivering (`webhooks.max_age`). A finished state is final: nothing
//! after it is delivered. Between attempts a tracker holds no body: it reads its task again before a
//! retry, so a thousand failing receivers hold no thousand bodies.
//!
//! With the Redis tier, each tracker's record and lease live there (`shared/hooks.rs`): a tracker
//! that stops before its task is over (shutdown, a killed replica) leaves its record, and a sweep on
//! any replica takes it over from the last delivered state.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use tokio::sync::watch;

use super::Push;
use super::watch::{Snapshot, WatchTarget, Watched};
use crate::cache::{CacheKey, KeyBuf};
use crate::credential::MJ_API_SECRET;
use crate::family::{FamilyId, TaskRef};
use crate::metrics::Delivery;
use crate::shared::hooks::HookRecord;
use crate::shared::{Lease, under_lease};
use crate::task::TaskId;
use crate::upstream::ClientInfo;
use crate::webhook::guard::HookUrl;
use crate::webhook::{Ended, Event, EventSource, Hooks, Slot, new_event_id};
use crate::work::WorkKind;

/// The longest wait between two looks at a task the upstream does not show yet.
const LOOK_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// The longest a hook's finished event waits for its task's result files to be kept, so it carries
/// the gateway's links; past it the event goes with the upstream's (still working then).
const KEPT_WAIT: Duration = Duration::from_secs(30);

/// How often each replica looks in Redis for hooks nobody is delivering.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A submitted task whose hook the gateway delivers to.
pub struct HookTask {
    pub family: FamilyId,
    pub id: String,
    /// The task's status path upstream.
    pub path: String,
    /// The submitting request's credential headers (nothing else of its request is kept): the task
    /// is read with them.
    pub headers: HeaderMap,
    pub client: ClientInfo,
    pub hook: HookUrl,
    /// The token of the gateway's own callback URL the upstream was given, if any.
    pub callback: Option<String>,
}

impl HookTask {
    /// The bytes this task's record holds, charged against `webhooks.max_memory` with its overhead.
    pub fn record_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        self.id.len()
            + self.path.len()
            + headers
            + self.hook.uri.to_string().len()
            + self.hook.host.len()
            + self.callback.as_ref().map_or(0, String::len)
    }
}

/// The headers a task is read with: only the credential, nothing else of the client's request.
pub fn credential_only(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::with_capacity(1);
    for name in [&AUTHORIZATION, &MJ_API_SECRET] {
        if let Some(value) = headers.get(name) {
            kept.insert(name.clone(), value.clone());
        }
    }
    kept
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
    /// `webhooks.max_pending` and `webhooks.max_memory`) until the task is over.
    pub(crate) fn deliver_hook(self: &Arc<Self>, hooks: &Arc<Hooks>, slot: Slot, task: HookTask) {
        let push = Arc::clone(self);
        let hooks = Arc::clone(hooks);
        self.fetcher.work().spawn(WorkKind::Hook, async move {
            // Boxed, here and below: what runs once (Redis writes, the lease) is not kept in the
            // future every pending hook holds for as long as its task runs.
            let record = Box::pin(push.record_of(&hooks, &task)).await;
            Box::pin(push.run_tracker(&hooks, slot, task, record, None)).await;
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
            credential: task
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            delivered: None,
            pending: None,
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
        let tracking = Box::pin(self.track(hooks, task, record.clone(), delivered));
        let tracked = under_lease(&leases, tracking).await;
        if tracked == Tracked::Over {
            if let (Some(shared), Some(record)) = (self.fetcher.shared(), &record) {
                Box::pin(shared.delete_hook(&record.id)).await;
            }
            if let Some(token) = callback {
                Box::pin(hooks.finish_callback(&token, &self.fetcher.live_families().load_full()))
                    .await;
            }
        }
        for lease in leases {
            Box::pin(lease.release()).await;
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
        let mut draining = self.watchers.draining();
        let first = match Box::pin(self.first_state(&task, task_ref, &key, hooks, &mut draining))
            .await
        {
            Some(Ok(first)) => first,
            Some(Err(())) => return Tracked::Interrupted,
            None => {
                metrics.webhooks.delivery(Delivery::Abandoned);
                tracing::warn!(task = %task.id, "webhook: the task never became visible upstream");
                return Tracked::Over;
            }
        };
        let target = WatchTarget {
            key: key.to_key(),
            path: task.path.clone(),
            headers: task.headers.clone(),
            task: (task.family, task.id.clone()),
            client: task.client,
        };
        let changes = self.watch(target.clone(), first);
        let mut source = TrackerSource {
            push: Arc::clone(self),
            target,
            changes: Some(changes),
        };
        let mut closed = false;
        let families = self.fetcher.live_families().load_full();
        let family = families.get(task.family);
        // The status and progress of the last state delivered: a change of neither is no event.
        let mut delivered_state = None;
        loop {
            if *draining.borrow() {
                return Tracked::Interrupted;
            }
            let Some(watched) = source.peek() else {
                return Tracked::Over;
            };
            if !watched.is_task() {
                // The task vanished upstream after it was seen: nothing more will be delivered.
                return Tracked::Over;
            }
            // A watch past `watch.max_memory` holds no body: read it again (cache, else upstream).
            let Some(latest) = Box::pin(self.body_of(&watched, &source.target)).await else {
                if closed {
                    return Tracked::Over;
                }
                drop(watched);
                let Some(changes) = source.changes.as_mut() else {
                    return Tracked::Over;
                };
                tokio::select! {
                    changed = changes.changed() => closed = changed.is_err(),
                    _ = draining.changed() => {}
                }
                continue;
            };
            drop(watched);
            let latest = Box::pin(self.with_kept_links(latest, &source.target.key)).await;
            let state = family.state_of(&latest.body);
            if delivered.as_ref() != Some(&latest.etag)
                && !latest.is_finished()
                && delivered_state.as_ref() == Some(&state)
            {
                // Other bytes, the same status and progress (a relay's `?rand=`): not an event.
                metrics.webhooks.delivery(Delivery::Unchanged);
                delivered = Some(latest.etag.clone());
            }
            if delivered.as_ref() != Some(&latest.etag) && hooks.wants(latest.class()) {
                delivered_state = Some(state);
                let event = Event {
                    id: pending_id(record.as_ref(), &latest.etag).unwrap_or_else(new_event_id),
                    body: latest.body.clone(),
                    etag: latest.etag.clone(),
                    class: latest.class(),
                };
                let finished = latest.is_finished();
                drop(latest);
                if finished {
                    // Nothing follows a finished state: the watch (and the body it holds) can go.
                    source.changes = None;
                }
                Box::pin(self.note_pending(hooks, record.as_mut(), &event)).await;
                let ended = Box::pin(hooks.deliver(
                    &task.hook,
                    &task.id,
                    event,
                    &mut source,
                    &mut draining,
                ))
                .await;
                match ended {
                    Ended::Stop => return Tracked::Over,
                    Ended::Interrupted => return Tracked::Interrupted,
                    // The state delivered may be newer than `latest` (it replaced a waiting one).
                    Ended::Done(etag) => {
                        Box::pin(self.remember(hooks, record.as_mut(), &etag)).await;
                        delivered = Some(etag);
                    }
                }
                if finished || source.changes.is_none() {
                    return Tracked::Over;
                }
                continue;
            }
            if latest.is_finished() || closed {
                return Tracked::Over;
            }
            drop(latest);
            let Some(changes) = source.changes.as_mut() else {
                return Tracked::Over;
            };
            // The poller ends at the finished state (or when the task vanishes): one more look.
            tokio::select! {
                changed = changes.changed() => closed = changed.is_err(),
                _ = draining.changed() => {}
            }
        }
    }

    /// A finished answer whose result files are being kept: waited on (at most [`KEPT_WAIT`]) so the
    /// hook delivers the gateway's links, which outlive the upstream's; else `latest` as it is.
    async fn with_kept_links(&self, latest: Snapshot, key: &CacheKey) -> Snapshot {
        let Some(keeper) = self.fetcher.keeper().filter(|_| latest.is_finished()) else {
            return latest;
        };
        keeper
            .settled(std::borrow::Borrow::borrow(key), KEPT_WAIT)
            .await;
        match self
            .fetcher
            .cache()
            .current(std::borrow::Borrow::borrow(key))
        {
            Some((current, _)) if current.is_finished() => current,
            _ => latest,
        }
    }

    /// Notes in the hook's record which event is being delivered, so a takeover retries it under
    /// the same `webhook-id`.
    async fn note_pending(&self, hooks: &Hooks, record: Option<&mut HookRecord>, event: &Event) {
        if let (Some(shared), Some(record)) = (self.fetcher.shared(), record) {
            let etag = String::from_utf8_lossy(event.etag.as_bytes()).into_owned();
            record.pending = Some((event.id.clone(), etag));
            shared.save_hook(record, hooks.max_age()).await;
        }
    }

    /// Notes in the hook's record that `etag` was delivered, so a takeover starts after it.
    async fn remember(&self, hooks: &Hooks, record: Option<&mut HookRecord>, etag: &HeaderValue) {
        if let (Some(shared), Some(record)) = (self.fetcher.shared(), record) {
            record.delivered = etag.to_str().ok().map(str::to_owned);
            record.pending = None;
            shared.save_hook(record, hooks.max_age()).await;
        }
    }

    /// The task's first state: looked up until the upstream shows the task (a "no such task" answer
    /// is only the upstream not having it yet), one TTL apart at first, then less often, for as long
    /// as a delivery would still be worth making. `Some(Err(()))` when the gateway starts shutting
    /// down meanwhile.
    async fn first_state(
        &self,
        task: &HookTask,
        task_ref: TaskRef<'_>,
        key: &KeyBuf,
        hooks: &Hooks,
        draining: &mut watch::Receiver<bool>,
    ) -> Option<Result<Snapshot, ()>> {
        let started = Instant::now();
        let mut wait = self
            .fetcher
            .cache()
            .in_progress_ttl()
            .max(Duration::from_millis(100));
        while started.elapsed() < hooks.max_age() {
            let _ = Box::pin(
                self.fetcher
                    .fetch(&task.path, &task.headers, task_ref, task.client),
            )
            .await;
            if let Some((current, _)) = self.fetcher.cache().current(key.as_bytes())
                && current.is_task()
            {
                return Some(Ok(current));
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = draining.wait_for(|draining| *draining) => return Some(Err(())),
            }
            wait = (wait * 3 / 2).min(LOOK_AT_MOST_EVERY);
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
            let slot = task.as_ref().and_then(|task| {
                let fingerprint = self.fetcher.fingerprinter().fingerprint(&task.headers);
                hooks.reserve(fingerprint, task.record_bytes())
            });
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
            self.fetcher.work().spawn(WorkKind::Hook, async move {
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
            headers: credential_only(&headers),
            client: ClientInfo {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                peer: std::net::Ipv4Addr::LOCALHOST.into(),
                tls: false,
            },
            hook: HookUrl::parse(&record.hook).ok()?,
            callback: record.callback.clone(),
        })
    }
}

/// The id the record says the event for `etag` is being delivered under, if it does.
fn pending_id(record: Option<&HookRecord>, etag: &HeaderValue) -> Option<String> {
    let (id, pending) = record?.pending.as_ref()?;
    (pending.as_bytes() == etag.as_bytes()).then(|| id.clone())
}

/// Where a tracker reads its task's state: its watch while the task runs, the fetch core (the cache,
/// else one upstream call) once the watch is let go.
struct TrackerSource {
    push: Arc<Push>,
    target: WatchTarget,
    changes: Option<watch::Receiver<Watched>>,
}

impl TrackerSource {
    /// The state the watch holds now, if the tracker still watches.
    fn peek(&mut self) -> Option<Watched> {
        let changes = self.changes.as_mut()?;
        Some(changes.borrow_and_update().clone())
    }
}

impl EventSource for TrackerSource {
    async fn latest(&mut self) -> Option<Event> {
        let watched = self.peek();
        let snapshot = match watched {
            Some(watched) => Box::pin(self.push.body_of(&watched, &self.target)).await?,
            None => {
                let id = TaskId::parse(&self.target.task.1).ok()?;
                Box::pin(self.push.refresh(&self.target, id)).await;
                let key: &[u8] = std::borrow::Borrow::borrow(&self.target.key);
                self.push.fetcher.cache().current(key)?.0
            }
        };
        if snapshot.is_finished() {
            // Final: the watch, and the body it keeps, are let go; a later read asks the cache.
            self.changes = None;
        }
        Some(Event {
            id: String::new(),
            body: snapshot.body.clone(),
            etag: snapshot.etag.clone(),
            class: snapshot.class(),
        })
    }
}
