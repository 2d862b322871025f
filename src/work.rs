//! Work the gateway spawns on behalf of requests (collapsed upstream calls, submits, batch chunks,
//! webhook trackers, watch pollers, event streams), tracked so that shutdown waits for it within the
//! grace and says what it abandoned.
//!
//! Every spawn goes through [`Work::spawn`]: it keeps the caller's span (a request's log lines carry
//! its id whichever task writes them) and, for a request's own upstream work, its access-log notes, counts the task by kind while it runs
//! (`mjgate_background_tasks{kind}`), and registers it with a [`TaskTracker`] the drain waits on.
//! Long-lived kinds end on the drain signal by themselves (watchers answer, trackers leave their hook
//! to the Redis tier), so waiting for all of them is waiting for what is still worth finishing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::Instrument;

use prometheus::IntGauge;

use crate::metrics::{GaugeGuard, Metrics};

/// What a spawned task is doing, as a metric label and in the drain's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// One upstream call for a task, collapsed for every waiter.
    Fetch,
    /// A chunk of a batch's missing ids, fetched in one upstream call.
    BatchChunk,
    /// A submit whose body is read: forwarded and followed up even if its client hangs up.
    Submit,
    /// A webhook tracker: watches one task and delivers its changes.
    Hook,
    /// One task's poller, behind its long-polls, streams and hooks.
    Poller,
    /// One event stream's writer.
    Stream,
    /// Housekeeping: lease releases, the Redis sweep.
    Housekeeping,
    /// A finished task's result files being kept, then its answer rewritten to point at them.
    Mirror,
}

impl WorkKind {
    pub const ALL: [WorkKind; 8] = [
        WorkKind::Fetch,
        WorkKind::BatchChunk,
        WorkKind::Submit,
        WorkKind::Hook,
        WorkKind::Poller,
        WorkKind::Stream,
        WorkKind::Housekeeping,
        WorkKind::Mirror,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkKind::Fetch => "fetch",
            WorkKind::BatchChunk => "batch_chunk",
            WorkKind::Submit => "submit",
            WorkKind::Hook => "hook",
            WorkKind::Poller => "poller",
            WorkKind::Stream => "stream",
            WorkKind::Housekeeping => "housekeeping",
            WorkKind::Mirror => "mirror",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How waiting for the spawned work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Everything finished.
    Done,
    /// The grace ran out; these were still running, by kind.
    Abandoned(Vec<(WorkKind, i64)>),
}

/// The tracker every spawn goes through. Cheap to clone.
#[derive(Clone)]
pub struct Work {
    tracker: TaskTracker,
    /// `mjgate_background_tasks{kind}`, by [`WorkKind`].
    running: Arc<[IntGauge]>,
}

impl Work {
    pub fn new(metrics: &Metrics) -> Self {
        let gauges = metrics.gauges(
            "mjgate_background_tasks",
            "Work spawned on behalf of requests and running now, by kind: fetch (a collapsed upstream call), batch_chunk, submit (forwarded and followed up even if its client hung up), hook (a webhook tracker), poller (one per watched task), stream (an event stream's writer), housekeeping, mirror (a finished task's result files being kept). Shutdown waits for them within server.shutdown_grace.",
            &["kind"],
        );
        Work {
            tracker: TaskTracker::new(),
            running: WorkKind::ALL
                .iter()
                .map(|kind| gauges.with_label_values(&[kind.as_str()]))
                .collect(),
        }
    }

    /// Spawns `future` as work of `kind`, in the caller's span, counted and tracked.
    pub fn spawn<F>(&self, kind: WorkKind, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running = GaugeGuard::new(&self.running[kind.index()]);
        // A request's own upstream work times against its access-log line; a watch's poller or a
        // hook's tracker outlives the request that started it, and is nobody's.
        let notes = match kind {
            WorkKind::Fetch | WorkKind::BatchChunk | WorkKind::Submit => {
                crate::access::current_notes()
            }
            _ => None,
        };
        self.tracker.spawn(
            async move {
                let _running: GaugeGuard = running;
                crate::access::with_notes(notes, future).await
            }
            .in_current_span(),
        )
    }

    /// Tasks of `kind` running now.
    pub fn running(&self, kind: WorkKind) -> i64 {
        self.running[kind.index()].get()
    }

    /// Waits up to `grace` for every tracked task to finish; says which were left running.
    pub async fn settle(&self, grace: Duration) -> Settled {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return Settled::Done;
        }
        let left = WorkKind::ALL
            .iter()
            .map(|kind| (*kind, self.running(*kind)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Settled::Abandoned(left)
    }
}
