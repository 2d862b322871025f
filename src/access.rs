//! The access log: one line per request, in the spirit of nginx's `log_format`, written when the
//! answer's last byte has been handed to the connection (or the client went away first), so that it
//! carries the bytes really sent and the whole duration.
//!
//! A request's line is an [`AccessRecord`], begun by the envelope ([`crate::pipeline`]) from the
//! request's head, completed with the answer's status and cache outcome, and carried by the response
//! body to the connection, which counts the bytes; the record writes itself when it is dropped, so
//! every request, whichever way it ends, writes exactly one line. Nothing is computed when the log is
//! off, and hits may be sampled (`log.access_hit_sample`).
//!
//! Lines go to the process's log writer (stderr, through the writer thread that drops lines rather
//! than stall a request on a stopped reader) or to `log.access_to`: `stdout` or a file, opened for
//! appending and reopened on every reload (what `logrotate` needs).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderMap, HeaderValue, REFERER, USER_AGENT};
use http::{Method, Version};
use parking_lot::RwLock;
use serde::Deserialize;

use crate::metrics::{Outcome, RouteLabel};
use crate::trace::TraceIds;

/// `log.access_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// One JSON object per line, with the fields of `log.access_fields` in that order.
    #[default]
    Json,
    /// nginx's `combined` (`$remote_addr - $remote_user [$time_local] "$request" $status
    /// $body_bytes_sent "$http_referer" "$http_user_agent"`), the credential's fingerprint prefix
    /// as the user, then the duration in milliseconds, the cache outcome, the request id and the
    /// trace id.
    Combined,
}

/// One field of a JSON access line (`log.access_fields`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    Time,
    Method,
    /// The path; with `log.access_query`, the query string too.
    Path,
    Status,
    /// Body bytes handed to the connection.
    Bytes,
    /// From the request's arrival to its answer's last byte (or the client's going away).
    DurationMs,
    /// Time this request's own upstream calls took; absent when it made none (a hit, a collapsed
    /// follower).
    UpstreamMs,
    UpstreamStatus,
    /// The cache outcome `Cache-Status` stands for: `hit`, `miss`, `collapsed`, `stale`, `shared`,
    /// `partial`, `bypass`.
    Cache,
    /// The gateway's route: `fetch`, `batch`, `submit`, `passthrough`, ...
    Route,
    RequestId,
    /// The client after `server.trusted_proxies`.
    Client,
    /// The connection's peer (the balancer, behind one).
    Peer,
    UserAgent,
    Referer,
    /// `HTTP/1.1`, `HTTP/2.0`.
    Http,
    /// `TLSv1.3`, `TLSv1.2`; absent for cleartext.
    Tls,
    /// A short prefix of the credential's keyed fingerprint (never the credential); absent when the
    /// request carried none.
    Credential,
    /// The W3C trace the request belongs to, and the gateway's span in it.
    TraceId,
    SpanId,
}

impl Field {
    pub const ALL: [Field; 20] = [
        Field::Time,
        Field::Method,
        Field::Path,
        Field::Status,
        Field::Bytes,
        Field::DurationMs,
        Field::UpstreamMs,
        Field::UpstreamStatus,
        Field::Cache,
        Field::Route,
        Field::RequestId,
        Field::Client,
        Field::Peer,
        Field::UserAgent,
        Field::Referer,
        Field::Http,
        Field::Tls,
        Field::Credential,
        Field::TraceId,
        Field::SpanId,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Time => "time",
            Field::Method => "method",
            Field::Path => "path",
            Field::Status => "status",
            Field::Bytes => "bytes",
            Field::DurationMs => "duration_ms",
            Field::UpstreamMs => "upstream_ms",
            Field::UpstreamStatus => "upstream_status",
            Field::Cache => "cache",
            Field::Route => "route",
            Field::RequestId => "request_id",
            Field::Client => "client",
            Field::Peer => "peer",
            Field::UserAgent => "user_agent",
            Field::Referer => "referer",
            Field::Http => "http",
            Field::Tls => "tls",
            Field::Credential => "credential",
            Field::TraceId => "trace_id",
            Field::SpanId => "span_id",
        }
    }
}

/// `[log]`'s access-log keys.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// `log.access`: write the access log at all.
    pub enabled: bool,
    pub format: AccessFormat,
    /// The JSON line's fields, in order (`Field::ALL` unless configured).
    pub fields: Vec<Field>,
    /// `log.access_query`: paths keep their query string (dropped by default: it may carry what a
    /// client did not mean to have logged).
    pub query: bool,
    /// `log.access_hit_sample`: the share of fresh cache hits logged, from 0 to 1; every other
    /// request is always logged.
    pub hit_sample: f64,
    /// `log.access_to`: where lines go.
    pub to: AccessTarget,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            format: AccessFormat::Json,
            fields: Field::ALL.to_vec(),
            query: false,
            hit_sample: 1.0,
            to: AccessTarget::Log,
        }
    }
}

/// Where access lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    /// With the process's other log lines (stderr), through its writer thread.
    Log,
    Stdout,
    /// Appended to this file, reopened on every reload.
    File(PathBuf),
}

impl AccessTarget {
    pub fn parse(text: &str) -> Self {
        match text {
            "" | "log" | "stderr" => AccessTarget::Log,
            "stdout" => AccessTarget::Stdout,
            path => AccessTarget::File(PathBuf::from(path)),
        }
    }
}

/// Where written lines go: the writer thread of the log, or one of its own for `stdout` or a
/// file. Set by the binary; without one (the library in tests), lines are `tracing` events under
/// the `mjgate::access` target.
type Sink = tracing_appender::non_blocking::NonBlocking;

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// The writer thread of `log.access_to` when it is not the log's own, with the count of lines it
/// dropped. Replaced (the old one flushed and ended) when a reload reopens the file.
static OWN_WRITER: parking_lot::Mutex<Option<(WorkerGuard, ErrorCounter)>> =
    parking_lot::Mutex::new(None);
/// Lines dropped by writers since replaced.
static DROPPED_BEFORE: AtomicU64 = AtomicU64::new(0);

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines queued for an access writer of its own before new ones are dropped (and counted).
const QUEUED_LINES: usize = 16 * 1024;

/// Sends access lines where `to` says, from now on: with the log's lines (`log_writer`), or to a
/// writer thread of their own for stdout or a file (opened for appending; a reload opens it
/// again, so a rotated file is followed). Fails only when the file cannot be opened, and then
/// changes nothing.
pub fn install(to: &AccessTarget, log_writer: &Sink) -> std::io::Result<()> {
    let own = match to {
        AccessTarget::Log => None,
        AccessTarget::Stdout => Some(writer(Box::new(std::io::stdout()))),
        AccessTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            Some(writer(Box::new(file)))
        }
    };
    let previous = match own {
        None => {
            *SINK.write() = Some(log_writer.clone());
            OWN_WRITER.lock().take()
        }
        Some((sink, guard, dropped)) => {
            *SINK.write() = Some(sink);
            OWN_WRITER.lock().replace((guard, dropped))
        }
    };
    if let Some((guard, dropped)) = previous {
        DROPPED_BEFORE.fetch_add(dropped.dropped_lines() as u64, Ordering::Relaxed);
        // Flushes what it still holds and ends its thread.
        drop(guard);
    }
    Ok(())
}

fn writer(to: Box<dyn std::io::Write + Send>) -> (Sink, WorkerGuard, ErrorCounter) {
    let (sink, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("mjgate-access")
        .finish(to);
    let dropped = sink.error_counter();
    (sink, guard, dropped)
}

/// Access lines dropped by writers of their own (stdout, a file) because their queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED_BEFORE.load(Ordering::Relaxed)
        + OWN_WRITER
            .lock()
            .as_ref()
            .map_or(0, |(_, dropped)| dropped.dropped_lines() as u64)
}

/// Flushes the access writer of its own, if any (at exit).
pub fn flush() {
    drop(OWN_WRITER.lock().take());
}

fn write_line(line: &[u8]) {
    let sink = SINK.read();
    match sink.as_ref() {
        // The writer thread's queue: a full one drops the line and counts it, never waits.
        Some(sink) => {
            let _ = sink.clone().write_all(line);
        }
        None => {
            let text = String::from_utf8_lossy(line);
            tracing::info!(target: "mjgate::access", "{}", text.trim_end());
        }
    }
}

/// The access log's settings as a request sees them: shared by the records begun under them, so a
/// reload changes the lines of new requests only.
#[derive(Debug)]
pub struct AccessLog {
    config: AccessLogConfig,
    /// `hit_sample` as a threshold on a random `u32`.
    hit_threshold: u64,
}

impl AccessLog {
    pub fn new(config: AccessLogConfig) -> Arc<Self> {
        // Out of 2^32: 0 logs no hit, 2^32 (a sample of 1) every hit.
        let hit_threshold = (config.hit_sample.clamp(0.0, 1.0) * 4_294_967_296.0) as u64;
        Arc::new(AccessLog {
            config,
            hit_threshold,
        })
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Whether this fresh hit is one of the sampled.
    pub fn sample_hit(&self) -> bool {
        self.hit_threshold > u64::from(u32::MAX)
            || u64::from(rand::random::<u32>()) < self.hit_threshold
    }

    /// A record of a request, begun from its head and what the connection knows of its client.
    pub fn begin(
        self: &Arc<Self>,
        head: &RequestHead<'_>,
        started: Instant,
        request_id: HeaderValue,
        notes: Option<Arc<Notes>>,
    ) -> Box<AccessRecord> {
        let uri = head.uri;
        let mut target = uri.path().to_owned();
        if self.config.query
            && let Some(query) = uri.query()
        {
            target.push('?');
            target.push_str(query);
        }
        let header = |name| {
            head.headers
                .get(name)
                .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Box::new(AccessRecord {
            log: Arc::clone(self),
            at: SystemTime::now(),
            started,
            method: head.method.clone(),
            target,
            version: head.version,
            user_agent: header(USER_AGENT),
            referer: header(REFERER),
            who: head.who.clone(),
            request_id,
            trace: crate::trace::of_headers(head.headers),
            notes,
            route: RouteLabel::Passthrough,
            outcome: Outcome::Bypass,
            status: 0,
            upstream_status: None,
            bytes: 0,
            complete: false,
        })
    }
}

/// What the access log reads of a request's head.
pub struct RequestHead<'r> {
    pub method: &'r Method,
    pub uri: &'r http::Uri,
    pub version: Version,
    pub headers: &'r HeaderMap,
    pub who: Who,
}

/// Who sent a request, as the connection and the handler know it.
#[derive(Debug, Clone)]
pub struct Who {
    pub client: IpAddr,
    pub peer: IpAddr,
    pub tls: Option<&'static str>,
    /// The credential fingerprint's short prefix; `None` when the request carried none.
    pub credential: Option<String>,
}

/// What a request's handling learns that its line reports, noted from wherever the work runs (the
/// upstream client notes its time here through [`note_upstream`]).
#[derive(Debug, Default)]
pub struct Notes {
    /// The route plus one, as soon as the request is routed (0 until then): what a request that
    /// ends before its answer (a long-poll whose client left) is logged under.
    route: std::sync::atomic::AtomicU8,
    upstream_us: AtomicU64,
    upstream_calls: AtomicU64,
    trace: parking_lot::Mutex<Option<TraceIds>>,
}

impl Notes {
    pub fn set_trace(&self, ids: TraceIds) {
        *self.trace.lock() = Some(ids);
    }

    /// The request's trace and the gateway's span in it, once the handler has begun it.
    pub fn trace(&self) -> Option<TraceIds> {
        *self.trace.lock()
    }

    fn upstream(&self) -> Option<Duration> {
        (self.upstream_calls.load(Ordering::Relaxed) > 0)
            .then(|| Duration::from_micros(self.upstream_us.load(Ordering::Relaxed)))
    }
}

tokio::task_local! {
    /// The notes of the request whose handling this task runs.
    static NOTES: Arc<Notes>;
}

/// Runs `future` with `notes` as its request's notes.
pub async fn with_notes<F: std::future::Future>(notes: Option<Arc<Notes>>, future: F) -> F::Output {
    match notes {
        Some(notes) => NOTES.scope(notes, future).await,
        None => future.await,
    }
}

/// Notes the request's route, once it is known.
pub fn note_route(route: RouteLabel) {
    let _ = NOTES.try_with(|notes| notes.route.store(route as u8 + 1, Ordering::Relaxed));
}

/// Notes an upstream call's time against the request being handled, if any is.
pub fn note_upstream(elapsed: Duration) {
    let _ = NOTES.try_with(|notes| {
        notes
            .upstream_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        notes.upstream_calls.fetch_add(1, Ordering::Relaxed);
    });
}

/// The notes of the request being handled, to hand to work it spawns.
pub fn current_notes() -> Option<Arc<Notes>> {
    NOTES.try_with(Arc::clone).ok()
}

/// One request's line, written when it is dropped.
pub struct AccessRecord {
    log: Arc<AccessLog>,
    at: SystemTime,
    started: Instant,
    method: Method,
    target: String,
    version: Version,
    user_agent: Option<String>,
    referer: Option<String>,
    who: Who,
    request_id: HeaderValue,
    /// The client's `traceparent`, if it sent one; the gateway's own span is in `notes`.
    trace: Option<TraceIds>,
    notes: Option<Arc<Notes>>,
    route: RouteLabel,
    outcome: Outcome,
    status: u16,
    upstream_status: Option<u16>,
    bytes: u64,
    /// The body was sent to its end (not cut short by the client or an error).
    complete: bool,
}

impl AccessRecord {
    /// The answer, once it is known.
    pub fn answered(
        &mut self,
        route: RouteLabel,
        outcome: Outcome,
        status: u16,
        upstream_status: Option<u16>,
    ) {
        self.route = route;
        self.outcome = outcome;
        self.status = status;
        self.upstream_status = upstream_status;
    }

    /// Body bytes handed to the connection.
    pub fn sent(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// The body ended: every byte of it was handed over.
    pub fn completed(&mut self) {
        self.complete = true;
    }

    /// The route it was answered on, or, never answered, the one it was routed to.
    fn route(&self) -> RouteLabel {
        if self.status != 0 {
            return self.route;
        }
        self.notes
            .as_ref()
            .and_then(|notes| {
                let noted = notes.route.load(Ordering::Relaxed);
                RouteLabel::from_index(noted.checked_sub(1)?)
            })
            .unwrap_or(self.route)
    }

    fn trace(&self) -> Option<TraceIds> {
        self.notes
            .as_ref()
            .and_then(|notes| *notes.trace.lock())
            .or(self.trace)
    }

    /// The line, newline included.
    pub fn line(&self) -> String {
        let mut line = String::with_capacity(384);
        match self.log.config.format {
            AccessFormat::Json => self.json(&mut line),
            AccessFormat::Combined => self.combined(&mut line),
        }
        line.push('\n');
        line
    }

    fn json(&self, line: &mut String) {
        let elapsed = self.started.elapsed();
        let upstream = self.notes.as_ref().and_then(|notes| notes.upstream());
        let trace = self.trace();
        line.push('{');
        let mut first = true;
        for &field in &self.log.config.fields {
            let mark = line.len();
            if !first {
                line.push(',');
            }
            json_string(line, field.name());
            line.push(':');
            let written = match field {
                Field::Time => json_string(line, &rfc3339(self.at)),
                Field::Method => json_string(line, self.method.as_str()),
                Field::Path => json_string(line, &self.target),
                Field::Status => number(line, self.status),
                Field::Bytes => number(line, self.bytes),
                Field::DurationMs => millis(line, elapsed),
                Field::UpstreamMs => upstream.is_some_and(|time| millis(line, time)),
                Field::UpstreamStatus => self.upstream_status.is_some_and(|s| number(line, s)),
                Field::Cache => json_string(line, self.outcome.as_str()),
                Field::Route => json_string(line, self.route().as_str()),
                Field::RequestId => json_string(line, self.request_id.to_str().unwrap_or("")),
                Field::Client => json_string(line, &self.who.client.to_string()),
                Field::Peer => json_string(line, &self.who.peer.to_string()),
                Field::UserAgent => self
                    .user_agent
                    .as_ref()
                    .is_some_and(|v| json_string(line, v)),
                Field::Referer => self.referer.as_ref().is_some_and(|v| json_string(line, v)),
                Field::Http => json_string(line, version(self.version)),
                Field::Tls => self.who.tls.is_some_and(|v| json_string(line, v)),
                Field::Credential => self
                    .who
                    .credential
                    .as_ref()
                    .is_some_and(|v| json_string(line, v)),
                Field::TraceId => trace.is_some_and(|t| json_string(line, &t.trace_id_hex())),
                Field::SpanId => trace.is_some_and(|t| json_string(line, &t.span_id_hex())),
            };
            if written {
                first = false;
            } else {
                // An absent value: the field is left out rather than written as null.
                line.truncate(mark);
            }
        }
        // Not answered at all (the client left first) is incomplete too.
        if !self.complete {
            if !first {
                line.push(',');
            }
            line.push_str("\"complete\":false");
        }
        line.push('}');
    }

    fn combined(&self, line: &mut String) {
        let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
        let quoted = |v: Option<&str>| v.unwrap_or("-").replace(['"', '\\'], "_");
        let _ = write!(
            line,
            "{} - {} [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {:.3} {} {} {}",
            self.who.client,
            dash(self.who.credential.as_deref()),
            time_local(self.at),
            self.method,
            self.target.replace(['"', ' '], "_"),
            version(self.version),
            self.status,
            self.bytes,
            quoted(self.referer.as_deref()),
            quoted(self.user_agent.as_deref()),
            self.started.elapsed().as_secs_f64() * 1000.0,
            self.outcome.as_str(),
            self.request_id.to_str().unwrap_or("-"),
            self.trace()
                .map_or_else(|| "-".to_owned(), |t| t.trace_id_hex()),
        );
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        LINE.with(|buffer| {
            let Ok(mut buffer) = buffer.try_borrow_mut() else {
                return;
            };
            buffer.clear();
            buffer.push_str(&self.line());
            write_line(buffer.as_bytes());
        });
    }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

fn version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// nginx's `$time_local` (in UTC): `04/Dec/2026:17:02:11 +0000`, what log parsers of the combined
/// format read.
fn time_local(at: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `2026-12-04T17:02:11Z`: fixed widths.
    let text = humantime::format_rfc3339_seconds(at).to_string();
    let month: usize = text[5..7].parse().unwrap_or(1);
    format!(
        "{}/{}/{}:{} +0000",
        &text[8..10],
        MONTHS[month.clamp(1, 12) - 1],
        &text[0..4],
        &text[11..19]
    )
}

/// Writes `text` as a JSON string (escaped by serde_json); always `true`.
fn json_string(line: &mut String, text: &str) -> bool {
    match serde_json::to_string(text) {
        Ok(quoted) => line.push_str(&quoted),
        Err(_) => line.push_str("\"\""),
    }
    true
}

fn number(line: &mut String, n: impl std::fmt::Display) -> bool {
    let _ = write!(line, "{n}");
    true
}

fn millis(line: &mut String, time: Duration) -> bool {
    let _ = write!(line, "{:.3}", time.as_secs_f64() * 1000.0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_combined_time_is_nginxs_time_local() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_403_731);
        assert_eq!(time_local(at), "04/Dec/2026:17:02:11 +0000");
    }

    fn record(config: AccessLogConfig, uri: &str) -> Box<AccessRecord> {
        let uri: http::Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("ua \"quoted\""));
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            version: Version::HTTP_11,
            headers: &headers,
            who: Who {
                client: "127.0.0.2".parse().unwrap(),
                peer: "127.0.0.1".parse().unwrap(),
                tls: None,
                credential: Some("0a1b2c3d".to_owned()),
            },
        };
        AccessLog::new(config).begin(&head, Instant::now(), HeaderValue::from_static("rid"), None)
    }

    #[test]
    fn a_json_line_has_every_field_that_has_a_value_and_no_query_unless_asked() {
        let mut r = record(
            AccessLogConfig {
                enabled: true,
                ..Default::default()
            },
            "/mj/task/t1/fetch?secret=1",
        );
        r.answered(RouteLabel::Fetch, Outcome::Hit, 200, None);
        r.sent(42);
        r.completed();
        let line: serde_json::Value = serde_json::from_str(&r.line()).unwrap();
        assert_eq!(line["path"], "/mj/task/t1/fetch");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 42);
        assert_eq!(line["cache"], "hit");
        assert_eq!(line["client"], "127.0.0.2");
        assert_eq!(line["user_agent"], "ua \"quoted\"");
        assert_eq!(line["credential"], "0a1b2c3d");
        assert!(
            line.get("upstream_ms").is_none(),
            "no upstream call: no field"
        );
        assert!(line.get("tls").is_none());
    }

    #[test]
    fn fields_and_query_are_the_operators_choice() {
        let mut r = record(
            AccessLogConfig {
                enabled: true,
                fields: vec![Field::Status, Field::Path],
                query: true,
                ..Default::default()
            },
            "/a?b=c",
        );
        r.answered(RouteLabel::Passthrough, Outcome::Bypass, 404, Some(404));
        r.completed();
        assert_eq!(r.line(), "{\"status\":404,\"path\":\"/a?b=c\"}\n");
    }

    #[test]
    fn a_combined_line_reads_like_nginx() {
        let mut r = record(
            AccessLogConfig {
                enabled: true,
                format: AccessFormat::Combined,
                ..Default::default()
            },
            "/mj/task/t1/fetch",
        );
        r.answered(RouteLabel::Fetch, Outcome::Miss, 200, Some(200));
        r.sent(7);
        let line = r.line();
        assert!(line.starts_with("127.0.0.2 - 0a1b2c3d ["), "{line}");
        assert!(
            line.contains("] \"GET /mj/task/t1/fetch HTTP/1.1\" 200 7 \"-\" \"ua _quoted_\" "),
            "{line}"
        );
        assert!(line.trim_end().ends_with(" miss rid -"), "{line}");
    }

    #[test]
    fn a_hit_sample_of_zero_logs_no_hit_and_one_logs_every_hit() {
        let none = AccessLog::new(AccessLogConfig {
            hit_sample: 0.0,
            ..Default::default()
        });
        let all = AccessLog::new(AccessLogConfig::default());
        assert!((0..1000).all(|_| all.sample_hit()));
        assert!((0..1000).all(|_| !none.sample_hit()));
        let half = AccessLog::new(AccessLogConfig {
            hit_sample: 0.5,
            ..Default::default()
        });
        let sampled = (0..10_000).filter(|_| half.sample_hit()).count();
        assert!((4_000..6_000).contains(&sampled), "{sampled}");
    }
}
