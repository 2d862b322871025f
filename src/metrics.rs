//! The Prometheus registry and typed handles for every metric the gateway exports.
//!
//! Every labelled series the request path touches is resolved once here, at start-up, so recording a
//! cache hit is a few atomic adds, never a label lookup. Labels are bounded: routes and outcomes from
//! fixed enums, status classes; never a task id, a credential or a raw path.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::family::{Families, FamilyId};
use crate::task::TaskClass;

/// How many log lines the process's log writer dropped so far; installed once by the binary, which
/// owns the writer (tests and embedders log however they like, and this stays unset).
static DROPPED_LOG_LINES: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> = OnceLock::new();

/// Makes `mjgate_log_lines_dropped_total` report `dropped`, read at every scrape.
pub fn count_dropped_log_lines(dropped: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = DROPPED_LOG_LINES.set(Box::new(dropped));
}

/// Routes as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    Fetch = 0,
    Batch = 1,
    Passthrough = 2,
    Admin = 3,
    /// A fetch with `?wait=`: its duration is the time it was held.
    LongPoll = 4,
    /// `GET .../events`: its duration is the time to the stream's head.
    Events = 5,
    /// `POST /_mjgate/callback/{token}`: an upstream calling the gateway back.
    Callback = 6,
    /// `POST` on a family's submit route.
    Submit = 7,
    /// `GET /_mjgate/files/{token}`: a kept result file.
    File = 8,
    /// A family's download route (`/v1/videos/{id}/content`), served from the kept files.
    Download = 9,
}

impl RouteLabel {
    /// The label whose `as u8` is `index`.
    pub fn from_index(index: u8) -> Option<RouteLabel> {
        Self::ALL.get(usize::from(index)).copied()
    }

    const ALL: [RouteLabel; 10] = [
        RouteLabel::Fetch,
        RouteLabel::Batch,
        RouteLabel::Passthrough,
        RouteLabel::Admin,
        RouteLabel::LongPoll,
        RouteLabel::Events,
        RouteLabel::Callback,
        RouteLabel::Submit,
        RouteLabel::File,
        RouteLabel::Download,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Fetch => "fetch",
            RouteLabel::Batch => "batch",
            RouteLabel::Passthrough => "passthrough",
            RouteLabel::Admin => "admin",
            RouteLabel::LongPoll => "long_poll",
            RouteLabel::Events => "events",
            RouteLabel::Callback => "callback",
            RouteLabel::Submit => "submit",
            RouteLabel::File => "file",
            RouteLabel::Download => "download",
        }
    }
}

/// How a request was served, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Entirely from the cache.
    Hit = 0,
    /// This request's upstream call answered it.
    Miss = 1,
    /// Another request's upstream call answered it.
    Collapsed = 2,
    /// A batch answered partly from the cache.
    Partial = 3,
    /// A stale entry served because the upstream failed.
    Stale = 4,
    /// Not a cached route, or refused before the cache (bad input, admin, passthrough).
    Bypass = 5,
    /// Missing here, found in the shared (Redis) tier: another replica's upstream call answered it.
    Shared = 6,
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Collapsed,
        Outcome::Partial,
        Outcome::Stale,
        Outcome::Bypass,
        Outcome::Shared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Collapsed => "collapsed",
            Outcome::Partial => "partial",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
            Outcome::Shared => "shared",
        }
    }
}

/// Upstream calls by route, as metric labels (admin never calls upstream).
const UPSTREAM_ROUTES: [RouteLabel; 4] = [
    RouteLabel::Fetch,
    RouteLabel::Batch,
    RouteLabel::Passthrough,
    RouteLabel::Submit,
];

/// How an upstream call ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamResult {
    Status(u16),
    /// Connect, TLS or I/O failure.
    Error,
    Timeout,
    /// The client's request body failed while it was forwarded: no verdict on the upstream.
    ClientBody,
}

impl UpstreamResult {
    fn label(self) -> &'static str {
        match self {
            UpstreamResult::Status(s) if s < 200 => "1xx",
            UpstreamResult::Status(s) if s < 300 => "2xx",
            UpstreamResult::Status(s) if s < 400 => "3xx",
            UpstreamResult::Status(s) if s < 500 => "4xx",
            UpstreamResult::Status(_) => "5xx",
            UpstreamResult::Error => "error",
            UpstreamResult::Timeout => "timeout",
            UpstreamResult::ClientBody => "client_body",
        }
    }
}

const UPSTREAM_RESULTS: [&str; 8] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "error",
    "timeout",
    "client_body",
];

/// Why a request was the client's fault, as the `reason` of `mjgate_client_errors_total`: admission
/// refusals ([`crate::request::admission::Refused::label`]), request-body faults
/// ([`crate::request::body::BodyFault::label`]) and submits refused while webhooks are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    Host,
    Target,
    DotSegment,
    Method,
    Credentials,
    /// Headers larger than `server.max_header_bytes`.
    Headers,
    BodyTooLarge,
    BodyIdle,
    BodyBroken,
    BodyNotAllowed,
    BodyCoding,
    /// A submit body a lenient upstream could read otherwise.
    SubmitBody,
    /// A submit's hook the gateway will not deliver to.
    SubmitHook,
}

impl ClientError {
    pub const ALL: [ClientError; 13] = [
        ClientError::Host,
        ClientError::Target,
        ClientError::DotSegment,
        ClientError::Method,
        ClientError::Credentials,
        ClientError::Headers,
        ClientError::BodyTooLarge,
        ClientError::BodyIdle,
        ClientError::BodyBroken,
        ClientError::BodyNotAllowed,
        ClientError::BodyCoding,
        ClientError::SubmitBody,
        ClientError::SubmitHook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientError::Host => "host",
            ClientError::Target => "target",
            ClientError::DotSegment => "dot_segment",
            ClientError::Method => "method",
            ClientError::Credentials => "credentials",
            ClientError::Headers => "headers",
            ClientError::BodyTooLarge => "body_too_large",
            ClientError::BodyIdle => "body_idle",
            ClientError::BodyBroken => "body_broken",
            ClientError::BodyNotAllowed => "body_not_allowed",
            ClientError::BodyCoding => "body_coding",
            ClientError::SubmitBody => "submit_body",
            ClientError::SubmitHook => "submit_hook",
        }
    }
}

/// How a request for a kept file was answered, as the `answer` of `mjgate_artifacts_served_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAnswer {
    /// `200`: the whole file.
    Whole,
    /// `206`: one range of it.
    Range,
    /// `HEAD`.
    Head,
    /// `304`: the client has it.
    NotModified,
    /// `404`: a token that opens to nothing kept (never issued, altered, or evicted).
    NotFound,
    /// `416`: a range past the end.
    Unsatisfiable,
}

impl FileAnswer {
    /// How a kept file's answer of `status` counts (`head`: it answered a `HEAD`).
    pub fn of(status: http::StatusCode, head: bool) -> Self {
        match status {
            http::StatusCode::NOT_MODIFIED => FileAnswer::NotModified,
            http::StatusCode::PARTIAL_CONTENT => FileAnswer::Range,
            _ if head => FileAnswer::Head,
            _ => FileAnswer::Whole,
        }
    }

    pub const ALL: [FileAnswer; 6] = [
        FileAnswer::Whole,
        FileAnswer::Range,
        FileAnswer::Head,
        FileAnswer::NotModified,
        FileAnswer::NotFound,
        FileAnswer::Unsatisfiable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileAnswer::Whole => "whole",
            FileAnswer::Range => "range",
            FileAnswer::Head => "head",
            FileAnswer::NotModified => "not_modified",
            FileAnswer::NotFound => "not_found",
            FileAnswer::Unsatisfiable => "unsatisfiable",
        }
    }
}

/// What became of a submit and its `Idempotency-Key`, as the `outcome` of `mjgate_idempotency_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyOutcome {
    /// The first request's answer, kept under its key.
    Stored,
    /// A retry answered with the kept answer.
    Replayed,
    /// A retry while the first was in flight (`409`).
    InFlight,
    /// The key with another body (`422`).
    Mismatch,
    /// A malformed key, or none where one is required (`400`).
    Invalid,
    /// A submit without a key, forwarded as before.
    Bypassed,
    /// Refused: the key budget, or the credential's share of it, is full.
    Full,
}

impl IdempotencyOutcome {
    pub const ALL: [IdempotencyOutcome; 7] = [
        IdempotencyOutcome::Stored,
        IdempotencyOutcome::Replayed,
        IdempotencyOutcome::InFlight,
        IdempotencyOutcome::Mismatch,
        IdempotencyOutcome::Invalid,
        IdempotencyOutcome::Bypassed,
        IdempotencyOutcome::Full,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdempotencyOutcome::Stored => "stored",
            IdempotencyOutcome::Replayed => "replayed",
            IdempotencyOutcome::InFlight => "in_flight",
            IdempotencyOutcome::Mismatch => "mismatch",
            IdempotencyOutcome::Invalid => "invalid",
            IdempotencyOutcome::Bypassed => "bypassed",
            IdempotencyOutcome::Full => "full",
        }
    }
}

/// How a webhook event ended (or was not sent), as the `outcome` of `mjgate_webhook_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A new answer with the status and progress of the last one delivered: not sent.
    Unchanged,
    Delivered,
    Superseded,
    Gone,
    Abandoned,
    Refused,
    Overflow,
}

impl Delivery {
    pub const ALL: [Delivery; 7] = [
        Delivery::Unchanged,
        Delivery::Delivered,
        Delivery::Superseded,
        Delivery::Gone,
        Delivery::Abandoned,
        Delivery::Refused,
        Delivery::Overflow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Unchanged => "unchanged",
            Delivery::Delivered => "delivered",
            Delivery::Superseded => "superseded",
            Delivery::Gone => "gone",
            Delivery::Abandoned => "abandoned",
            Delivery::Refused => "refused",
            Delivery::Overflow => "overflow",
        }
    }
}

/// Every metric the gateway exports, with its series pre-resolved.
pub struct Metrics {
    registry: Registry,
    /// `[route][outcome]`
    requests: Vec<Vec<IntCounter>>,
    /// `[route]`
    request_duration: Vec<Histogram>,
    /// Per task id looked up, `[family][outcome]` (a batch of 50 ids counts 50).
    task_lookups: FamilyLookups,
    /// `[upstream route][result]`
    upstream_requests: Vec<Vec<IntCounter>>,
    upstream_duration: Vec<Histogram>,
    upstream_in_flight: IntGauge,
    /// Requests waiting right now on another request's upstream call.
    collapse_waiters: IntGauge,
    client_connections: IntGauge,
    parked_connections: IntGauge,
    refused_connections: IntCounter,
    /// Connections dropped because the client took nothing for `server.send_timeout`.
    send_timeouts: IntCounter,
    log_lines_dropped: IntCounter,
    cache_entries: IntGaugeVec,
    cache_bytes: IntGaugeVec,
    /// Answers not stored because the cache holds that task finished (a finished state is final).
    cache_final_kept: IntCounter,
    /// Bytes of client bodies held whole now, under `server.body_buffer_total`.
    body_buffered: IntGauge,
    /// `[outcome]`
    idempotency: Vec<IntCounter>,
    /// `[answer]`: kept files served.
    files_served: Vec<IntCounter>,
    /// Bytes of kept files on the local disk.
    artifacts_disk: IntGauge,
    /// Files downloaded and kept, and their bytes.
    artifacts_stored: IntCounter,
    artifacts_stored_bytes: IntCounter,
    /// `[cause]`: result files not kept.
    artifacts_failures: IntCounterVec,
    /// Kept files the disk budget evicted.
    artifacts_evictions: IntCounter,
    /// Finished answers rewritten to the gateway's links, and finished answers not mirrored (`[reason]`).
    artifacts_rewritten: IntCounter,
    artifacts_skipped: IntCounterVec,
    /// Idempotency keys held in this process, and their bytes (under `idempotency.max_memory`).
    idempotency_keys: IntGauge,
    idempotency_bytes: IntGauge,
    /// Bodies that had to be read whole but did not fit the budget (503).
    body_over_budget: IntCounter,
    /// Live entry counts and weights by class, kept by inserts and moka's eviction listener.
    class_entries: [AtomicI64; 3],
    class_bytes: [AtomicI64; 3],
    /// Upstream calls refused before they were sent, by reason.
    upstream_refused: IntCounterVec,
    /// Requests refused for the client's own fault, by reason.
    client_errors: IntCounterVec,
    /// Upstream TLS certificates refused, by cause.
    upstream_tls_errors: IntCounterVec,
    /// `[ok, error]`: listener TLS handshakes, and certificate reloads.
    tls_handshakes: [IntCounter; 2],
    tls_reloads: [IntCounter; 2],
    config_reloads: IntCounterVec,
    proxy_headers: IntCounterVec,
    /// Requests and connections refused by the per-address limits, by limit.
    client_limited: [IntCounter; 2],
    circuit_open: IntGauge,
    /// The upstream pool's members, by `member` (their names, from the config: never a URL).
    pub members: MemberMetrics,
    /// The Redis tier's counters (registered whether or not it is configured).
    pub shared: SharedMetrics,
    /// Long-polls, event streams and the watchers behind them.
    pub watch: WatchMetrics,
    pub webhooks: WebhookMetrics,
}

/// An event sent on a task's event stream, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Status = 0,
    Progress = 1,
    End = 2,
    Shutdown = 3,
    Error = 4,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Progress => "progress",
            EventKind::End => "end",
            EventKind::Shutdown => "shutdown",
            EventKind::Error => "error",
        }
    }
}

/// Webhooks the gateway delivers.
pub struct WebhookMetrics {
    /// By outcome: delivered, gone (410), abandoned (retries ran out), refused (an internal address).
    deliveries: IntCounterVec,
    /// By result: 2xx, 3xx, 4xx, 5xx, timeout, error.
    attempts: IntCounterVec,
    /// Tasks with a hook watched right now.
    pending: IntGauge,
    /// From the task's change being seen to the receiver's 2xx.
    latency: Histogram,
    /// Upstream callbacks, by result: stored, ignored (the task was finished already).
    callbacks: IntCounterVec,
    /// Bytes taken from `webhooks.max_memory` now, and the budget.
    memory: IntGauge,
    memory_capacity: IntGauge,
    capacity: std::sync::atomic::AtomicUsize,
}

impl WebhookMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        WebhookMetrics {
            deliveries: labelled(r.counters(
                "mjgate_webhook_deliveries_total",
                "Webhook events by how they ended: unchanged (a new answer with the status and progress of the last one delivered: not sent), delivered (2xx), superseded (a newer running state replaced it while it waited to be retried), gone (410: the hook is dropped), abandoned (retries ran out), refused (the hook resolves to an internal address), overflow (a submit's hook not taken over: webhooks.max_pending or its per-credential share was full).",
                &["outcome"],
            ), Delivery::ALL.map(Delivery::as_str)),
            attempts: r.counters(
                "mjgate_webhook_attempts_total",
                "Webhook delivery attempts by result: 2xx, 3xx (redirects are not followed), 4xx, 5xx, timeout, error (no connection).",
                &["result"],
            ),
            pending: r.gauge(
                "mjgate_webhook_pending",
                "Tasks whose hook the gateway is watching and delivering to right now.",
            ),
            latency: r
                .histograms(
                    "mjgate_webhook_delivery_seconds",
                    "From a task's change being seen to the receiver's 2xx, retries included.",
                    "event",
                )
                .with_label_values(&["change"]),
            callbacks: labelled(
                r.counters(
                    "mjgate_webhook_callbacks_total",
                    "Upstream callbacks to the gateway's own callback URL that were accepted, by result: stored, or ignored (the task is finished in the cache already: a finished state is final, a late or out-of-order callback is acknowledged and dropped).",
                    &["result"],
                ),
                ["stored", "ignored"],
            ),
            memory: r.gauge(
                "mjgate_webhook_memory_bytes",
                "Bytes taken from webhooks.max_memory now: every watched hook's record and overhead, and the body of every event being sent.",
            ),
            memory_capacity: r.gauge(
                "mjgate_webhook_memory_capacity_bytes",
                "The webhook memory budget (webhooks.max_memory).",
            ),
            capacity: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Counts an upstream callback: `stored`, or `ignored`.
    pub fn callback(&self, result: &'static str) {
        self.callbacks.with_label_values(&[result]).inc();
    }

    /// Adds `delta` bytes to what the webhook budget holds.
    pub fn memory(&self, delta: i64) {
        self.memory.add(delta);
    }

    pub fn set_capacity(&self, bytes: usize) {
        self.capacity.store(bytes, Ordering::Relaxed);
        self.memory_capacity
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The webhook memory budget, in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    pub fn delivery(&self, outcome: Delivery) {
        self.deliveries.with_label_values(&[outcome.as_str()]).inc();
    }

    pub fn attempt(&self, result: &str) {
        self.attempts.with_label_values(&[result]).inc();
    }

    pub fn delivered_after(&self, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts a watched hook until the guard drops.
    pub fn pending(&self) -> PendingHook<'_> {
        self.pending.inc();
        PendingHook(&self.pending)
    }
}

/// One watched hook, counted in `mjgate_webhook_pending` while it lives.
pub struct PendingHook<'a>(&'a IntGauge);

impl Drop for PendingHook<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Conditional requests, long-polls and event streams.
pub struct WatchMetrics {
    /// `[route]`
    /// `[fetch, batch, long_poll]`: the routes a `304` can answer.
    not_modified: [IntCounter; 3],
    watchers: IntGauge,
    long_polls: IntGauge,
    streams: IntGauge,
    events: [IntCounter; 5],
    refused: IntCounter,
    /// Bytes of events waiting for their stream's connection to take them (`watch.stream_buffer`).
    stream_buffered: IntGauge,
    /// Streams cut off (with their connection) because their reader fell behind.
    streams_cut: IntCounter,
    /// Bytes of answers watches hold strongly (`watch.max_memory`).
    held: IntGauge,
}

/// The routes a `304 Not Modified` can answer, in the order of `WatchMetrics::not_modified`.
const CONDITIONAL_ROUTES: [RouteLabel; 3] =
    [RouteLabel::Fetch, RouteLabel::Batch, RouteLabel::LongPoll];

impl WatchMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        let not_modified = r.counters(
            "mjgate_not_modified_total",
            "304 Not Modified answers (If-None-Match named the current ETag), by route.",
            &["route"],
        );
        let watchers = r.gauge(
            "mjgate_watchers",
            "Tasks watched right now: one poller per (credential, task) however many long-polls and streams.",
        );
        let long_polls = r.gauge(
            "mjgate_open_long_polls",
            "Long-polls (fetch with ?wait=) held right now.",
        );
        let streams = r.gauge("mjgate_open_streams", "Event streams open right now.");
        let events = r.counters(
            "mjgate_events_sent_total",
            "Server-sent events written to streams, by event.",
            &["event"],
        );
        let refused = r.counter(
            "mjgate_watch_refused_total",
            "Long-polls and streams refused with 429: watch.max_open or watch.max_open_per_credential reached.",
        );
        WatchMetrics {
            not_modified: CONDITIONAL_ROUTES
                .map(|route| not_modified.with_label_values(&[route.as_str()])),
            stream_buffered: r.gauge(
                "mjgate_stream_buffered_bytes",
                "Bytes of server-sent events handed to streams whose connections have not taken them yet, bounded by watch.stream_buffer (event data is shared by every stream of a task, so this counts it once per stream).",
            ),
            held: r.gauge(
                "mjgate_watch_held_bytes",
                "Bytes of answers watches hold strongly beyond the cache (the latest state of each watched task), bounded by watch.max_memory; past it a watch holds its task's answer only while the cache does.",
            ),
            streams_cut: r.counter(
                "mjgate_streams_cut_total",
                "Event streams cut off with their connection because the reader fell behind: no room for the next event within two heartbeats.",
            ),
            watchers,
            long_polls,
            streams,
            events: [
                EventKind::Status,
                EventKind::Progress,
                EventKind::End,
                EventKind::Shutdown,
                EventKind::Error,
            ]
            .map(|kind| events.with_label_values(&[kind.as_str()])),
            refused,
        }
    }

    pub fn not_modified(&self, route: RouteLabel) {
        if let Some(i) = CONDITIONAL_ROUTES.iter().position(|r| *r == route) {
            self.not_modified[i].inc();
        }
    }

    /// Adds `delta` bytes to the events waiting on their connections.
    pub fn stream_buffered(&self, delta: i64) {
        self.stream_buffered.add(delta);
    }

    /// Adds `delta` bytes to the answers watches hold.
    pub fn held(&self, delta: i64) {
        self.held.add(delta);
    }

    pub fn stream_cut(&self) {
        self.streams_cut.inc();
    }

    pub fn watcher(&self) -> GaugeGuard {
        GaugeGuard::new(&self.watchers)
    }

    pub fn long_poll(&self) -> GaugeGuard {
        GaugeGuard::new(&self.long_polls)
    }

    pub fn stream(&self) -> GaugeGuard {
        GaugeGuard::new(&self.streams)
    }

    pub fn event(&self, kind: EventKind) {
        self.events[kind as usize].inc();
    }

    pub fn refused(&self) {
        self.refused.inc();
    }
}

/// What a shared-tier (Redis) lookup found, per task id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedLookup {
    /// Another replica's fresh answer.
    Hit = 0,
    Miss = 1,
    /// Not asked: Redis is marked unreachable and the request went on local-only.
    Skipped = 2,
}

/// How a replica came to call the upstream for a key, or not to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// It took the lease at once and made the call.
    Won = 0,
    /// Another replica held it; that replica's answer arrived in Redis and was used.
    Waited = 1,
    /// It waited, then took the lease (the holder's call failed or the holder died).
    TakenOver = 2,
    /// It waited past the bound, or Redis failed meanwhile, and called the upstream without a lease.
    GaveUp = 3,
}

/// Why a Redis command counted as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    /// Connection refused, reset, or an error reply.
    Error = 0,
    /// No answer within `shared_cache.timeout`.
    Timeout = 1,
    /// A stored value this version cannot read.
    Corrupt = 2,
    /// Redis's TLS certificate was refused (unknown issuer, expired, another name).
    Certificate = 3,
}

/// Counters and the state gauge of the shared tier.
pub struct SharedMetrics {
    lookups: [IntCounter; 3],
    leases: [IntCounter; 4],
    errors: [IntCounter; 4],
    writes: IntCounter,
    up: IntGauge,
    state_changes: IntCounter,
}

impl SharedMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        let lookups = r.counters(
            "mjgate_shared_cache_lookups_total",
            "Task ids looked up in Redis after missing the local cache, by result.",
            &["result"],
        );
        let leases = r.counters(
            "mjgate_shared_cache_leases_total",
            "Cross-replica collapse: how each local miss not found in Redis was resolved.",
            &["result"],
        );
        let errors = r.counters(
            "mjgate_shared_cache_errors_total",
            "Redis commands that failed, by kind; each sends its request on local-only.",
            &["kind"],
        );
        let writes = r.counter(
            "mjgate_shared_cache_writes_total",
            "Upstream answers written to Redis for other replicas.",
        );
        let up = r.gauge(
            "mjgate_shared_cache_up",
            "1 while Redis is configured and reachable; 0 when serving local-only.",
        );
        let state_changes = r.counter(
            "mjgate_shared_cache_state_changes_total",
            "Times Redis went from reachable to unreachable or back.",
        );
        SharedMetrics {
            lookups: ["hit", "miss", "skipped"].map(|r| lookups.with_label_values(&[r])),
            leases: ["won", "waited", "taken_over", "gave_up"]
                .map(|r| leases.with_label_values(&[r])),
            errors: ["error", "timeout", "corrupt", "tls_certificate"]
                .map(|k| errors.with_label_values(&[k])),
            writes,
            up,
            state_changes,
        }
    }

    pub fn lookups(&self, result: SharedLookup, n: u64) {
        self.lookups[result as usize].inc_by(n);
    }

    pub fn lease(&self, outcome: LeaseOutcome) {
        self.leases[outcome as usize].inc();
    }

    pub fn error(&self, kind: SharedError) {
        self.errors[kind as usize].inc();
    }

    pub fn write(&self, n: u64) {
        self.writes.inc_by(n);
    }

    /// Sets the state gauge; `changed` counts a transition (not the initial state).
    pub fn set_up(&self, up: bool, changed: bool) {
        self.up.set(i64::from(up));
        if changed {
            self.state_changes.inc();
        }
    }
}

fn class_index(class: TaskClass) -> usize {
    usize::from(class.index())
}

/// Client requests by route and outcome, their durations, and task lookups by outcome.
type ClientSeries = (Vec<Vec<IntCounter>>, Vec<Histogram>, FamilyLookups);

/// `mjgate_task_lookups_total` by family number: a family a reload adds gets its series then, and
/// a retired one keeps its own (its number is never reused).
struct FamilyLookups {
    vec: prometheus::IntCounterVec,
    by_family: Box<[std::sync::OnceLock<Vec<IntCounter>>]>,
}

impl FamilyLookups {
    fn add(&self, families: &Families) {
        for family in families.live() {
            if let Some(slot) = self.by_family.get(family.id().index()) {
                slot.get_or_init(|| {
                    Outcome::ALL
                        .iter()
                        .map(|o| self.vec.with_label_values(&[family.name(), o.as_str()]))
                        .collect()
                });
            }
        }
    }
}

fn client_series(r: &Registrar<'_>, families: &Families) -> ClientSeries {
    let requests = r.counters(
        "mjgate_requests_total",
        "Client requests by route and cache outcome.",
        &["route", "cache"],
    );
    let duration = r.histograms(
        "mjgate_request_duration_seconds",
        "Time from request head to response head, by route.",
        "route",
    );
    let lookups = r.counters(
        "mjgate_task_lookups_total",
        "Task ids looked up by fetches and batches in this replica's cache, by task family and outcome (miss = asked of Redis when configured, then the upstream).",
        &["family", "cache"],
    );
    (
        RouteLabel::ALL
            .iter()
            .map(|route| {
                Outcome::ALL
                    .iter()
                    .map(|o| requests.with_label_values(&[route.as_str(), o.as_str()]))
                    .collect()
            })
            .collect(),
        RouteLabel::ALL
            .iter()
            .map(|route| duration.with_label_values(&[route.as_str()]))
            .collect(),
        {
            let lookups = FamilyLookups {
                vec: lookups,
                by_family: (0..crate::family::MAX_FAMILIES)
                    .map(|_| std::sync::OnceLock::new())
                    .collect(),
            };
            lookups.add(families);
            lookups
        },
    )
}

/// Upstream calls by route and result, and their durations.
fn upstream_series(r: &Registrar<'_>) -> (Vec<Vec<IntCounter>>, Vec<Histogram>) {
    let upstream = r.counters(
        "mjgate_upstream_requests_total",
        "Upstream calls by route and result (status class, error or timeout).",
        &["route", "status"],
    );
    let upstream_duration = r.histograms(
        "mjgate_upstream_request_duration_seconds",
        "Upstream call time to the whole answer (cached routes) or its head (passthrough).",
        "route",
    );
    (
        UPSTREAM_ROUTES
            .iter()
            .map(|route| {
                UPSTREAM_RESULTS
                    .iter()
                    .map(|result| upstream.with_label_values(&[route.as_str(), result]))
                    .collect()
            })
            .collect(),
        UPSTREAM_ROUTES
            .iter()
            .map(|route| upstream_duration.with_label_values(&[route.as_str()]))
            .collect(),
    )
}

/// What was refused and why: upstream calls not sent, client errors, upstream certificates.
fn refusal_series(r: &Registrar<'_>) -> (IntCounterVec, IntCounterVec, IntCounterVec) {
    (
        labelled(
                    r.counters(
                        "mjgate_upstream_refused_total",
                        "Upstream calls not sent: 429 backoff, open circuit, or a ceiling reached.",
                        &["reason"],
                    ),
                    ["backoff", "circuit_open", "overloaded"],
                ),
        labelled(
                    r.counters(
                        "mjgate_client_errors_total",
                        "Requests refused for the client's own fault (never counted against the upstream): a request the gateway does not admit, or a request body too large, stalled, or malformed or cut short.",
                        &["reason"],
                    ),
                    ClientError::ALL.map(ClientError::as_str),
                ),
        labelled(
                    r.counters(
                        "mjgate_upstream_tls_errors_total",
                        "Upstream connections whose TLS certificate was refused, by cause.",
                        &["cause"],
                    ),
                    crate::tls::CertificateFault::ALL.map(|fault| fault.label()),
                ),
    )
}

/// The cache's capacity, the build, and the standard `process_*` metrics.
fn process_and_build_series(r: &Registrar<'_>, cache_capacity_bytes: u64) {
    r.gauge(
        "mjgate_cache_capacity_bytes",
        "The cache's memory budget (cache.max_memory).",
    )
    .set(i64::try_from(cache_capacity_bytes).unwrap_or(i64::MAX));
    r.gauges(
        "mjgate_build_info",
        "Always 1; the version is a label.",
        &["version"],
    )
    .with_label_values(&[env!("CARGO_PKG_VERSION")])
    .set(1);
    #[cfg(target_os = "linux")]
    {
        // CPU, RSS, open fds, start time: process_* as every Prometheus client exports them.
        r.0.register(Box::new(ProcessMetrics::new()))
            .expect("process metrics register once");
    }
}

/// The standard `process_*` metrics: the prometheus crate's collector, but for CPU time, which it
/// counts in whole seconds (a process that used 0.12 s reads 0): that one is read here, in seconds
/// with their fractions, as the Prometheus exposition guide has it.
#[cfg(target_os = "linux")]
struct ProcessMetrics {
    inner: prometheus::process_collector::ProcessCollector,
    cpu: prometheus::Counter,
    descs: Vec<prometheus::core::Desc>,
}

#[cfg(target_os = "linux")]
impl ProcessMetrics {
    const CPU: &'static str = "process_cpu_seconds_total";

    fn new() -> Self {
        use prometheus::core::Collector;
        let inner = prometheus::process_collector::ProcessCollector::for_self();
        let cpu = prometheus::Counter::new(
            Self::CPU,
            "Total user and system CPU time spent in seconds.",
        )
        .expect("valid metric");
        let descs = inner
            .desc()
            .into_iter()
            .filter(|d| d.fq_name != Self::CPU)
            .chain(cpu.desc())
            .cloned()
            .collect();
        ProcessMetrics { inner, cpu, descs }
    }

    /// User and system CPU time of this process, from `/proc/self/stat` (fields 14 and 15, in
    /// clock ticks).
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count after it.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf reads a constant of the system.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| (utime + stime) / ticks as f64)
    }
}

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some(seconds) = Self::cpu_seconds() {
            let delta = seconds - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
        }
        let mut families: Vec<_> = self
            .inner
            .collect()
            .into_iter()
            .filter(|f| f.name() != Self::CPU)
            .collect();
        families.extend(self.cpu.collect());
        families
    }
}

/// `vec` with a series for each of `labels` made up front, so every one is exported (as 0) from the
/// first scrape.
fn labelled<const N: usize>(vec: IntCounterVec, labels: [&str; N]) -> IntCounterVec {
    for label in labels {
        vec.with_label_values(&[label]);
    }
    vec
}

/// Creates metrics and registers them in one step: the names are this file's constants, so a failure
/// is a programming error caught by every test that builds a gateway.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, metric: C) -> C {
        self.0
            .register(Box::new(metric.clone()))
            .expect("metric names are valid and unique");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn histograms(&self, name: &str, help: &str, label: &str) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, &[label]).expect("valid metric"))
    }
}

/// Latency buckets in seconds: cache hits sit in the sub-millisecond ones, upstream calls further up.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Metrics {
    pub fn new(cache_capacity_bytes: u64, families: &Families) -> Self {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let (requests, request_duration, task_lookups) = client_series(&r, families);
        let (upstream_requests, upstream_duration) = upstream_series(&r);
        let (upstream_refused, client_errors, upstream_tls_errors) = refusal_series(&r);
        let handshakes = r.counters(
            "mjgate_tls_handshakes_total",
            "TLS handshakes on the main listener, by result (error includes a handshake not done within server.header_read_timeout).",
            &["result"],
        );
        let reloads = r.counters(
            "mjgate_tls_reloads_total",
            "Listener certificate reloads after its files changed or SIGHUP, by result (error: the old certificate keeps serving).",
            &["result"],
        );
        process_and_build_series(&r, cache_capacity_bytes);
        Metrics {
            requests,
            request_duration,
            task_lookups,
            upstream_requests,
            upstream_duration,
            upstream_in_flight: r.gauge("mjgate_upstream_in_flight", "Upstream calls in progress."),
            collapse_waiters: r.gauge(
                "mjgate_collapse_waiters",
                "Requests waiting on another request's upstream call right now.",
            ),
            client_connections: r.gauge("mjgate_client_connections", "Open client connections."),
            parked_connections: r.gauge(
                "mjgate_client_connections_parked",
                "Idle HTTP/1 client connections parked without buffers until their next request.",
            ),
            refused_connections: r.counter(
                "mjgate_client_connections_refused_total",
                "Client connections closed on accept because server.max_connections was reached.",
            ),
            send_timeouts: r.counter(
                "mjgate_client_send_timeouts_total",
                "Client connections dropped because the client took no byte for server.send_timeout.",
            ),
            log_lines_dropped: r.counter(
                "mjgate_log_lines_dropped_total",
                "Log lines dropped because the log output (stderr) fell behind; requests never wait on it.",
            ),
            cache_entries: r.gauges(
                "mjgate_cache_entries",
                "Cached task answers by class.",
                &["class"],
            ),
            cache_bytes: r.gauges(
                "mjgate_cache_weighted_bytes",
                "Bytes charged against cache.max_memory, by class.",
                &["class"],
            ),
            idempotency: {
                let outcomes = r.counters(
                    "mjgate_idempotency_total",
                    "Submits by what their Idempotency-Key did: stored (the first request's answer kept), replayed (a retry answered with it), in_flight (a retry while the first ran: 409), mismatch (the key with another body: 422), invalid (a malformed key, or none where required: 400), bypassed (no key: forwarded as before), full (the key budget or the credential's share of it was full).",
                    &["outcome"],
                );
                IdempotencyOutcome::ALL
                    .iter()
                    .map(|o| outcomes.with_label_values(&[o.as_str()]))
                    .collect()
            },
            files_served: {
                let answers = r.counters(
                    "mjgate_artifacts_served_total",
                    "Requests for kept files by answer: whole (200), range (206), head, not_modified (304), not_found (404: a token nobody issued, or its file evicted), unsatisfiable (416).",
                    &["answer"],
                );
                FileAnswer::ALL
                    .iter()
                    .map(|a| answers.with_label_values(&[a.as_str()]))
                    .collect()
            },
            artifacts_disk: r.gauge(
                "mjgate_artifacts_disk_bytes",
                "Bytes of kept files on the local disk, under artifacts.max_disk (0 with a bucket).",
            ),
            artifacts_stored: r.counter(
                "mjgate_artifacts_stored_total",
                "Downloads of result files from their origin that were kept (a URL this process or, with a bucket, another replica kept already is not downloaded again; the same bytes from another URL are downloaded, and stored once).",
            ),
            artifacts_stored_bytes: r.counter(
                "mjgate_artifacts_stored_bytes_total",
                "Bytes of result files downloaded and kept.",
            ),
artifacts_failures: {
                let failures = r.counters(
                    "mjgate_artifacts_failures_total",
                    "Result files not kept, by cause: refused (an inside address, a bad URL), status (the origin's error answer), redirects, unsafe_type (HTML, SVG, scripts), timeout, connection, too_large (past artifacts.max_file), store (the disk or bucket failed), busy (too many downloads waiting). Their answers keep the upstream's link.",
                    &["cause"],
                );
                // Every cause at zero from the start, so a dashboard's rate() sees the first one.
                for cause in crate::artifacts::download::DownloadError::CAUSES {
                    failures.with_label_values(&[cause]);
                }
                failures
            },
            artifacts_evictions: r.counter(
                "mjgate_artifacts_evictions_total",
                "Kept files deleted to stay under artifacts.max_disk, least recently used first.",
            ),
            artifacts_rewritten: r.counter(
                "mjgate_artifacts_rewritten_total",
                "Finished answers whose result links were rewritten to the gateway's kept files.",
            ),
            artifacts_skipped: r.counters(
                "mjgate_artifacts_skipped_total",
                "Finished answers with result files not mirrored, by reason: busy (artifacts.max_pending tasks mirroring already), no_base (no artifacts.public_url and no client Host to build links on).",
                &["reason"],
            ),
            idempotency_keys: r.gauge(
                "mjgate_idempotency_keys",
                "Idempotency keys held in this process: claims in flight and answers kept for retries.",
            ),
            idempotency_bytes: r.gauge(
                "mjgate_idempotency_bytes",
                "Bytes those keys hold, bounded by idempotency.max_memory.",
            ),
            body_buffered: r.gauge(
                "mjgate_request_body_buffered_bytes",
                "Bytes of client request bodies held whole right now (batch queries, submits read for their hook, small passthrough bodies), bounded by server.body_buffer_total.",
            ),
            body_over_budget: r.counter(
                "mjgate_request_body_over_budget_total",
                "Request bodies that had to be read whole and found server.body_buffer_total taken (answered 503 with Retry-After).",
            ),
            cache_final_kept: r.counter(
                "mjgate_cache_final_kept_total",
                "Answers not stored because the cache holds that task finished: a later running state, another finished state or a not-found (a late callback, a slow replica) never replaces a finished one.",
            ),
            class_entries: Default::default(),
            class_bytes: Default::default(),
            upstream_refused,
            client_errors,
            upstream_tls_errors,
            tls_handshakes: ["ok", "error"].map(|result| handshakes.with_label_values(&[result])),
            tls_reloads: ["ok", "error"].map(|result| reloads.with_label_values(&[result])),
            proxy_headers: r.counters(
                "mjgate_proxy_protocol_headers_total",
                "PROXY protocol headers read on the main listener (server.proxy_protocol), by result: proxied (named the client), local (the balancer's own connection), missing, malformed, truncated, timeout (the connection was closed for the last four).",
                &["result"],
            ),
            config_reloads: r.counters(
                "mjgate_config_reloads_total",
                "Config reloads (SIGHUP, POST /admin/reload), by result: ok, invalid (the file did not validate), needs_restart (it changed keys only a restart applies); refused ones change nothing.",
                &["result"],
            ),
            client_limited: {
                let limited = r.counters(
                    "mjgate_client_limited_total",
                    "Requests (limit=rate, answered 429) and connections (limit=connections, closed on accept) refused by the per-address limits (server.per_client_rps, server.per_client_connections).",
                    &["limit"],
                );
                ["rate", "connections"].map(|limit| limited.with_label_values(&[limit]))
            },
            circuit_open: r.gauge(
                "mjgate_upstream_circuit_open",
                "1 while the circuit breaker fails upstream calls fast, else 0.",
            ),
            members: MemberMetrics::new(&r),
            shared: SharedMetrics::new(&r),
            watch: WatchMetrics::new(&r),
            webhooks: WebhookMetrics::new(&r),
            registry,
        }
    }

    pub fn request(&self, route: RouteLabel, outcome: Outcome, elapsed: Duration) {
        self.requests[route as usize][outcome as usize].inc();
        self.request_duration[route as usize].observe(elapsed.as_secs_f64());
    }

    /// Counts `n` task ids of `family` looked up with `outcome`.
    pub fn task_lookups(&self, family: FamilyId, outcome: Outcome, n: u64) {
        if let Some(family) = self
            .task_lookups
            .by_family
            .get(family.index())
            .and_then(|slot| slot.get())
        {
            family[outcome as usize].inc_by(n);
        }
    }

    /// Gives the families a reload added their series.
    pub fn add_families(&self, families: &Families) {
        self.task_lookups.add(families);
    }

    /// Marks an upstream call as started; the returned guard records its result and time.
    pub fn upstream_call(&self, route: RouteLabel) -> UpstreamCall<'_> {
        self.upstream_in_flight.inc();
        UpstreamCall {
            metrics: self,
            route: UPSTREAM_ROUTES
                .iter()
                .position(|r| *r == route)
                .unwrap_or(0),
            started: std::time::Instant::now(),
            result: None,
        }
    }

    pub fn collapse_waiter(&self) -> GaugeGuard {
        GaugeGuard::new(&self.collapse_waiters)
    }

    pub fn client_connection(&self) -> GaugeGuard {
        GaugeGuard::new(&self.client_connections)
    }

    pub fn parked_connection(&self) -> GaugeGuard {
        GaugeGuard::new(&self.parked_connections)
    }

    pub fn connection_refused(&self) {
        self.refused_connections.inc();
    }

    pub fn send_timed_out(&self) {
        self.send_timeouts.inc();
    }

    pub fn file_served(&self, answer: FileAnswer) {
        self.files_served[answer as usize].inc();
    }

    pub fn artifacts_disk(&self, bytes: u64) {
        self.artifacts_disk
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The store's eviction count so far (the store counts them where they happen, in its own
    /// listener): the counter is brought up to it.
    pub fn artifacts_evicted(&self, total: u64) {
        let counted = self.artifacts_evictions.get();
        if total > counted {
            self.artifacts_evictions.inc_by(total - counted);
        }
    }

    pub fn artifact_stored(&self, bytes: u64) {
        self.artifacts_stored.inc();
        self.artifacts_stored_bytes.inc_by(bytes);
    }

    pub fn artifact_failed(&self, cause: &'static str) {
        self.artifacts_failures.with_label_values(&[cause]).inc();
    }

    pub fn artifacts_rewritten(&self) {
        self.artifacts_rewritten.inc();
    }

    pub fn artifacts_skipped(&self, reason: &'static str) {
        self.artifacts_skipped.with_label_values(&[reason]).inc();
    }

    pub fn idempotency(&self, outcome: IdempotencyOutcome) {
        self.idempotency[outcome as usize].inc();
    }

    /// Adds to the idempotency keys held and their bytes.
    pub fn idempotency_keys(&self, keys: i64, bytes: i64) {
        self.idempotency_keys.add(keys);
        self.idempotency_bytes.add(bytes);
    }

    /// Adds `delta` bytes to the client bodies held whole.
    pub fn body_buffered(&self, delta: i64) {
        self.body_buffered.add(delta);
    }

    /// Counts a body refused because the body budget was taken.
    pub fn body_over_budget(&self) {
        self.body_over_budget.inc();
    }

    /// Registers a labelled gauge family for a module that owns its own labels (an enum of its own,
    /// which this module does not import: it imports nothing of the gateway's).
    pub fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        Registrar(&self.registry).gauges(name, help, labels)
    }

    /// Counts an answer the cache kept out because it holds the task finished.
    pub fn cache_final_kept(&self) {
        self.cache_final_kept.inc();
    }

    /// Accounts for an entry entering the cache.
    pub fn cache_added(&self, class: TaskClass, weight: u32) {
        let i = class_index(class);
        self.class_entries[i].fetch_add(1, Ordering::Relaxed);
        self.class_bytes[i].fetch_add(i64::from(weight), Ordering::Relaxed);
    }

    /// Accounts for an entry leaving the cache (evicted, expired or replaced).
    pub fn cache_removed(&self, class: TaskClass, weight: u32) {
        let i = class_index(class);
        self.class_entries[i].fetch_sub(1, Ordering::Relaxed);
        self.class_bytes[i].fetch_sub(i64::from(weight), Ordering::Relaxed);
    }

    pub fn upstream_refused(&self, reason: &'static str) {
        self.upstream_refused.with_label_values(&[reason]).inc();
    }

    /// Counts a request refused for the client's own fault.
    pub fn client_error(&self, reason: ClientError) {
        self.client_errors
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts an upstream certificate refused for `cause`.
    pub fn upstream_tls_error(&self, cause: &'static str) {
        self.upstream_tls_errors.with_label_values(&[cause]).inc();
    }

    pub fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes[usize::from(!ok)].inc();
    }

    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads[usize::from(!ok)].inc();
    }

    /// Counts a PROXY protocol header by its result.
    pub fn proxy_header(&self, result: &'static str) {
        self.proxy_headers.with_label_values(&[result]).inc();
    }

    /// Counts a config reload by its result (`ok`, `invalid`, `needs_restart`).
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Counts a request (`connection == false`) or a connection refused by the per-address limits.
    pub fn client_limited(&self, connection: bool) {
        self.client_limited[usize::from(connection)].inc();
    }

    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.set(i64::from(open));
    }

    /// The exposition text for `GET /metrics`.
    pub fn render(&self) -> Vec<u8> {
        for class in TaskClass::ALL {
            let i = class_index(class);
            self.cache_entries
                .with_label_values(&[class.as_str()])
                .set(self.class_entries[i].load(Ordering::Relaxed));
            self.cache_bytes
                .with_label_values(&[class.as_str()])
                .set(self.class_bytes[i].load(Ordering::Relaxed));
        }
        let dropped = DROPPED_LOG_LINES.get().map_or(0, |dropped| dropped());
        let behind = dropped.saturating_sub(self.log_lines_dropped.get());
        self.log_lines_dropped.inc_by(behind);
        let mut out = Vec::with_capacity(16 << 10);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The upstream pool's series, each by `member`.
pub struct MemberMetrics {
    /// Calls made to each member (every route).
    pub calls: IntCounterVec,
    /// 1 while a member's breaker fails its calls fast.
    pub circuit_open: IntGaugeVec,
    /// Tasks a member owns that the gateway has not seen finish (set at scrape time).
    pub running: IntGaugeVec,
    /// Submits, by member and outcome: `sent` (forwarded to it), `skipped` (it could not be
    /// reached, the next member tried).
    pub submits: IntCounterVec,
    /// Submits no member could take, by reason: `busy` (all at their running limit: 429),
    /// `down` (none reachable: 503).
    pub submits_refused: IntCounterVec,
    /// Owners looked up on every member, by the member found (`none`) and result: `found`, `nowhere`.
    pub owner_lookups: IntCounterVec,
    /// Active health checks (`[upstream.probe]`), by member and result: `up`, `down`.
    pub probes: IntCounterVec,
}

impl MemberMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        MemberMetrics {
            calls: r.counters(
                "mjgate_member_calls_total",
                "Upstream calls made to each member of the pool (every route).",
                &["member"],
            ),
            circuit_open: r.gauges(
                "mjgate_member_circuit_open",
                "1 while a member's circuit breaker fails its calls fast (and keeps it out of the submit rotation), else 0.",
                &["member"],
            ),
            running: r.gauges(
                "mjgate_member_running_tasks",
                "Tasks a member owns that the gateway has not seen finish (what least-busy and max_running count).",
                &["member"],
            ),
            submits: r.counters(
                "mjgate_member_submits_total",
                "Submits by member and outcome: sent (forwarded to it), skipped (it could not be reached; the next member was tried).",
                &["member", "outcome"],
            ),
            submits_refused: r.counters(
                "mjgate_pool_submits_refused_total",
                "Submits no member could take, by reason: busy (every member at its running limit, answered 429), down (none reachable, answered 503).",
                &["reason"],
            ),
            owner_lookups: r.counters(
                "mjgate_owner_lookups_total",
                "Tasks whose owner was unknown, looked for on every member at once, by the member that had it (none when nowhere) and result: found, nowhere.",
                &["member", "result"],
            ),
            probes: r.counters(
                "mjgate_member_probes_total",
                "Active health checks of each member (upstream.probe), by result: up (any HTTP answer), down (no answer within probe.timeout; counted toward its breaker).",
                &["member", "result"],
            ),
        }
    }
}

/// An upstream call being timed; records on drop, as `error` if no result was set.
pub struct UpstreamCall<'a> {
    metrics: &'a Metrics,
    route: usize,
    started: std::time::Instant,
    result: Option<UpstreamResult>,
}

impl UpstreamCall<'_> {
    pub fn finish(mut self, result: UpstreamResult) {
        self.result = Some(result);
    }
}

impl Drop for UpstreamCall<'_> {
    fn drop(&mut self) {
        let result = self.result.unwrap_or(UpstreamResult::Error).label();
        let index = UPSTREAM_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(5);
        self.metrics.upstream_requests[self.route][index].inc();
        self.metrics.upstream_duration[self.route].observe(self.started.elapsed().as_secs_f64());
        self.metrics.upstream_in_flight.dec();
    }
}

/// Holds a gauge up by one while alive.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new(1 << 20, &Families::builtin());
        m.request(RouteLabel::Fetch, Outcome::Hit, Duration::from_micros(50));
        m.upstream_call(RouteLabel::Batch)
            .finish(UpstreamResult::Status(503));
        m.upstream_call(RouteLabel::Fetch)
            .finish(UpstreamResult::Timeout);
        m.cache_added(TaskClass::Terminal, 300);
        let text = String::from_utf8(m.render()).unwrap();
        for needle in [
            "mjgate_requests_total{cache=\"hit\",route=\"fetch\"} 1",
            "mjgate_upstream_requests_total{route=\"batch\",status=\"5xx\"} 1",
            "mjgate_upstream_requests_total{route=\"fetch\",status=\"timeout\"} 1",
            "mjgate_upstream_in_flight 0",
            "mjgate_cache_entries{class=\"terminal\"} 1",
            "mjgate_cache_weighted_bytes{class=\"terminal\"} 300",
            "mjgate_cache_capacity_bytes 1048576",
            "mjgate_request_duration_seconds_bucket{route=\"fetch\",le=\"0.0001\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
