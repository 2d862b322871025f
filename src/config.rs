//! Configuration: the TOML file as serde reads it, validated once at start-up into a typed [`Config`].
//!
//! Every key is optional in the file and has a default here, so a file may set only what it changes.
//! Unknown keys are refused (`deny_unknown_fields`) so a typo never silently falls back to a default.

mod artifacts;
pub mod keys;
mod redis;
mod trace;
mod url;
mod webhooks;

pub use crate::trace::{OtlpProtocol, TraceConfig};
pub use artifacts::{ArtifactStore, ArtifactsConfig};
pub use redis::{RedisTls, RedisTopology, SentinelConfig};
pub use webhooks::WebhooksConfig;

pub use url::{UpstreamUrl, UrlError};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::family::Families;
use crate::tls::{self, ListenerTls, Roots, TlsError};

/// The default location of the config file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/mjgate.toml";

/// A config that could not be read or does not validate. The message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse, or a value had the wrong type. Said without quoting the file: the line
    /// could hold a secret (`webhooks.secret`, `shared_cache.fingerprint_secret`).
    #[error("invalid config: {}{}{message}", key_prefix(key), line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Parse {
        /// The dotted path of the offending key (`cache.in_progress_ttl`); empty for a syntax error.
        key: String,
        /// The line of the file, when the parser knows it.
        line: Option<usize>,
        /// What is wrong, in the parser's words, without the file's text.
        message: String,
    },
    #[error("invalid config: `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// A task family's description (`[families.<name>]`), the key named in full.
    #[error("invalid config: {0}")]
    Family(#[from] crate::family::FamilyError),
    /// A key of a named pool (`[upstreams.<name>]`), which takes every key `[upstream]` does.
    #[error("invalid config: in `[upstreams.{pool}]`: {}", pool_error(error))]
    Pool {
        pool: String,
        error: Box<ConfigError>,
    },
}

/// An `[upstream]` key's error, said of the named pool's table (`upstreams.<name>.max_body`).
fn pool_error(error: &ConfigError) -> String {
    reason_of(error).replace("`upstream.", "`")
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// A separate listener for `/metrics`, `/healthz`, `/readyz`; `None` serves them on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `admin.token` (or `MJGATE_ADMIN_TOKEN`): the bearer token the task admin routes
    /// (`/admin/tasks/...`: inspect, purge) require; unset, they are refused.
    pub admin_token: Option<String>,
    /// The default pool (`[upstream]`): passthrough, and every family that names no other.
    pub upstream: UpstreamConfig,
    /// The named pools (`[upstreams.<name>]`), in name order; a family goes to one with
    /// `families.<name>.upstream`.
    pub upstreams: Vec<(String, UpstreamConfig)>,
    pub cache: CacheConfig,
    pub batch: BatchConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
    /// The Redis tier replicas share; `None` runs a single instance with its in-process cache only.
    pub shared_cache: Option<SharedCacheConfig>,
    /// `[tls]`: the main listener serves TLS with this certificate; `None` serves cleartext.
    pub tls: Option<ListenerTls>,
    pub watch: WatchConfig,
    /// The task APIs served from the cache: the built-in families with `[families.<name>]` applied.
    pub families: Families,
    /// `[webhooks]`: the gateway delivers submits' `notifyHook`s itself; `None` passes them on.
    pub webhooks: Option<WebhooksConfig>,
    /// `[idempotency]`: `Idempotency-Key` on submits; `None` when turned off.
    pub idempotency: Option<IdempotencyConfig>,
    /// `[artifacts]`: finished tasks' files kept and served by the gateway; `None` when off.
    pub artifacts: Option<ArtifactsConfig>,
    /// `[trace]`: spans exported over OTLP/HTTP; `None` exports nothing (trace context is still
    /// continued to the upstream).
    pub trace: Option<TraceConfig>,
}

/// `[idempotency]`: submits that are safe to retry.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// How long a key's answer is kept for retries.
    pub ttl: Duration,
    /// Submits without a key are refused (`400`), the draft's "required" mode.
    pub require: bool,
    /// Bytes the keys of this process may hold (claims and the answers kept); past it, new keys get
    /// `503`.
    pub max_memory: u64,
    /// Keys one credential may hold at once; past it, `429`.
    pub max_keys_per_credential: usize,
}

/// `[watch]`: long-polls (`fetch?wait=`) and event streams (`/events`).
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The longest a long-poll is held, whatever `wait` asks.
    pub max_wait: Duration,
    /// Most long-polls and streams open at once, all credentials together.
    pub max_open: usize,
    /// Most long-polls and streams open at once for one credential.
    pub max_open_per_credential: usize,
    /// How often an idle event stream gets a comment line, so proxies do not close it.
    pub heartbeat: Duration,
    /// Bytes of events waiting on their streams' connections, all streams together; a reader that
    /// leaves an event untaken for two heartbeats (or finds this full for as long) is cut off.
    pub stream_buffer: u64,
    /// Bytes of answers watches hold beyond the cache (the latest state of every watched task); past
    /// it, a watch holds its task's answer only while the cache does.
    pub max_memory: u64,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The first member's URL (the only one's, without `[[upstream.members]]`).
    pub url: UpstreamUrl,
    /// The pool: `[[upstream.members]]`, or one member named `default` at `url`.
    pub members: Vec<MemberConfig>,
    /// How submits are spread over the members.
    pub policy: Policy,
    /// How long a submitted task counts against its member's `max_running` without being seen
    /// finished (a task nobody polls to the end must not hold its place for ever).
    pub running_ttl: Duration,
    /// How long a submit waits for a member under its running limit when all are at it (then `429`).
    pub queue_wait: Duration,
    /// The built-in roots an `https` upstream's certificate is checked against.
    pub roots: Roots,
    /// Extra roots (a private CA), trusted in addition to `roots`.
    pub ca_file: Option<PathBuf>,
    /// TCP (and TLS) connect timeout for one upstream connection.
    pub connect_timeout: Duration,
    /// Deadline for a whole cached-route call, body included, and for a passthrough call's response head.
    pub request_timeout: Duration,
    /// Deadline for a submit's answer head when it carries an `Idempotency-Key` (its work runs on its
    /// own, whoever waits for it).
    pub submit_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Largest upstream body accepted on a cached route (task or batch answer).
    pub max_body: u64,
    /// Most upstream calls in flight, overall and per credential.
    pub max_in_flight: usize,
    pub max_in_flight_per_credential: usize,
    /// Passthrough's share of `max_in_flight`: the rest is kept for task fetches and batches.
    pub max_in_flight_passthrough: usize,
    /// Most upstream calls per second, overall and per credential; 0 means no ceiling.
    pub max_rps: u32,
    pub max_rps_per_credential: u32,
    /// How long a call over a ceiling waits for room before it is refused.
    pub queue_timeout: Duration,
    /// Backoff after a `429` without `Retry-After`, and the cap on any `Retry-After`.
    pub retry_after_default: Duration,
    pub retry_after_max: Duration,
    /// Consecutive connection failures that open the circuit, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// The active health check of every member (`[upstream.probe]`); `None`: members are judged
    /// by client traffic alone.
    pub probe: Option<ProbeConfig>,
}

/// `[upstream.probe]`: every member is asked for `path` each `interval`. Any HTTP answer (even a
/// `401`: the gateway holds no upstream credential) is up; no answer within `timeout` counts as a
/// connection failure toward the breaker, so a dead member leaves the submit rotation before a
/// client finds it, and a recovered one returns without a client's request as the trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// One upstream instance of the pool (`[[upstream.members]]`): a midjourney-proxy, an account.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// What logs, metrics and errors call it.
    pub name: String,
    pub url: UpstreamUrl,
    /// Its share of submits under `weighted`, and the tie-break under `least-busy`.
    pub weight: u32,
    /// Most tasks it runs at once (Discord's 3 on a basic plan, 10 on Pro); 0: no limit.
    pub max_running: usize,
}

/// How submits are spread over the members (`upstream.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Fewest running tasks (relative to weight), then the highest weight.
    #[default]
    LeastBusy,
    /// At random, in proportion to weight.
    Weighted,
    /// Each in turn.
    RoundRobin,
}

/// Most members in one pool.
pub const MAX_MEMBERS: usize = 64;

/// Most named pools (`[upstreams.<name>]`).
pub const MAX_POOLS: usize = 16;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How long a non-terminal task answer is served from the cache.
    pub in_progress_ttl: Duration,
    /// Memory budget for cached bodies and keys; moka evicts beyond it.
    pub max_memory: u64,
    /// How long past its TTL an in-progress answer may be served when the upstream fails.
    pub max_stale: Duration,
    /// How long a "no such task" answer is kept.
    pub not_found_ttl: Duration,
    /// Keep a gzip copy of each task answer (from 256 bytes) and serve it to clients that accept it.
    pub gzip: bool,
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Largest `list-by-condition` request body read from a client.
    pub max_body: u64,
    /// Most ids one client batch may ask for.
    pub max_ids: usize,
    /// Most ids sent in one upstream `list-by-condition` call.
    pub upstream_chunk: usize,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `server.trusted_proxies`: whose `Forwarded` / `X-Forwarded-For` name the real client.
    pub trusted_proxies: crate::request::client_addr::TrustedProxies,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits anyway.
    pub shutdown_grace: Duration,
    /// Deadline for a client to send a complete request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Most simultaneous client connections; further ones are closed on accept.
    pub max_connections: usize,
    /// `server.per_client_rps` / `per_client_burst`: requests per second one client address may
    /// make, and how far ahead of that rate it may burst; 0 turns the limit off.
    pub per_client_rps: u32,
    pub per_client_burst: u32,
    /// `server.per_client_connections`: connections one address may hold open; 0 for no limit.
    pub per_client_connections: u32,
    /// `server.proxy_protocol`: the main listener's connections start with a PROXY protocol header
    /// (v1 or v2, as HAProxy and cloud load balancers send it) naming the client.
    pub proxy_protocol: bool,
    /// Largest request head a client may send.
    pub max_header_bytes: usize,
    /// Largest passthrough request body (streamed, counted as it flows).
    pub max_request_body: u64,
    /// A passthrough body up to this size is read whole before an upstream slot is taken, so a client
    /// that trickles it holds no slot; larger ones stream. 0 streams every body.
    pub passthrough_buffer: u64,
    /// Every client body held whole at once, together: passthrough buffers (past it, they stream),
    /// batch queries and submits read for their hook (past it, 503).
    pub body_buffer_total: u64,
    /// Longest a request body may go without sending a byte (slow-body guard); 408 past it.
    pub body_read_timeout: Duration,
    /// A connection with no new request for this long is closed gracefully (GOAWAY on HTTP/2).
    pub idle_timeout: Duration,
    /// Longest a connection's writes may wait on a client that takes nothing (nginx's
    /// `send_timeout`); it is dropped past it, with every byte held for it.
    pub send_timeout: Duration,
    /// A plaintext HTTP/1 connection idle this long gives up hyper's buffers until its next request
    /// (nginx's keep-alive); `None` (configured as 0) keeps every connection whole.
    pub park_idle_after: Option<Duration>,
}

/// `[shared_cache]`: the Redis tier. Its `Debug` leaves out the URL's password and the secret.
#[derive(Clone)]
pub struct SharedCacheConfig {
    /// One server, a cluster, or a master named by sentinels.
    pub topology: RedisTopology,
    /// Prepended to every key and channel name, so several deployments can share one Redis.
    pub key_prefix: String,
    /// The secret every replica keys credential fingerprints with, so they agree on key names.
    pub fingerprint_secret: String,
    /// Redis expiry of a terminal task's answer (`maxmemory-policy allkeys-lru` bounds memory).
    pub terminal_ttl: Duration,
    /// Deadline for one Redis command; past it the request goes on local-only.
    pub timeout: Duration,
    /// How long a replica's claim to call the upstream for a key lasts unless renewed.
    pub lease_ttl: Duration,
    /// How often a replica waiting on another's lease looks for the answer when no notice arrives.
    pub poll_interval: Duration,
    /// While Redis is unreachable, how often it is probed.
    pub retry_interval: Duration,
    /// `MJGATE_REDIS_PASSWORD`: the password (of the URL's user, or `default`), kept out of the
    /// file; it beats one in the URL.
    pub password: Option<String>,
    /// TLS (`rediss://`): a PEM bundle of the CA that signed the server's certificate, trusted
    /// instead of the system roots; and a client certificate and key for servers that require one.
    pub tls: RedisTls,
}

impl std::fmt::Debug for SharedCacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCacheConfig")
            .field("topology", &self.topology)
            .field(
                "redis_credentials",
                &crate::redact::redacted(self.topology.userinfo().as_bytes()),
            )
            .field("key_prefix", &self.key_prefix)
            .field(
                "fingerprint_secret",
                &crate::redact::redacted(self.fingerprint_secret.as_bytes()),
            )
            .field("terminal_ttl", &self.terminal_ttl)
            .field("timeout", &self.timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field("poll_interval", &self.poll_interval)
            .field("retry_interval", &self.retry_interval)
            .field(
                "redis_password",
                &self
                    .password
                    .as_ref()
                    .map(|p| crate::redact::redacted(p.as_bytes())),
            )
            .field("tls", &self.tls)
            .finish()
    }
}

/// The `user:password` of `url`, if any.
fn userinfo(url: &str) -> &str {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => &url[scheme_end + 3..at],
        _ => "",
    }
}

/// `url` with any `user:password@` replaced, safe to log.
pub fn redact_url(url: &str) -> String {
    let shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    };
    // A query or fragment may carry a secret too (`?password=`): shown by its presence only.
    let host_start = shown.find("://").map_or(0, |i| i + 3);
    match shown[host_start..].find(['?', '#']) {
        Some(i) => format!(
            "{}{}***",
            &shown[..host_start + i],
            &shown[host_start + i..][..1]
        ),
        None => shown,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter used when `RUST_LOG` is unset.
    pub filter: String,
    /// The access log (`log.access` and the `log.access_*` keys).
    pub access: crate::access::AccessLogConfig,
}

// ---- the file as serde reads it ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    upstreams: std::collections::BTreeMap<String, RawUpstream>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    batch: RawBatch,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    shared_cache: Option<RawSharedCache>,
    #[serde(default)]
    watch: RawWatch,
    tls: Option<RawTls>,
    /// Kept as TOML: merged over the built-in descriptions as tables ([`Families::new`]).
    #[serde(default)]
    families: toml::Table,
    webhooks: Option<webhooks::RawWebhooks>,
    #[serde(default)]
    idempotency: RawIdempotency,
    artifacts: Option<artifacts::RawArtifacts>,
    trace: Option<trace::RawTrace>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    require: Option<bool>,
    max_memory: Option<ByteSize>,
    max_keys_per_credential: Option<usize>,
}

impl RawIdempotency {
    fn validate(self) -> Result<Option<IdempotencyConfig>, ConfigError> {
        let config = IdempotencyConfig {
            ttl: keys::IDEMPOTENCY_TTL.duration(self.ttl)?,
            require: keys::IDEMPOTENCY_REQUIRE.flag(self.require),
            max_memory: keys::IDEMPOTENCY_MAX_MEMORY.number(self.max_memory.map(|b| b.0))?,
            max_keys_per_credential: keys::IDEMPOTENCY_MAX_KEYS_PER_CREDENTIAL
                .count(self.max_keys_per_credential)?,
        };
        if !keys::IDEMPOTENCY_ENABLED.flag(self.enabled) {
            if config.require {
                return Err(ConfigError::Invalid {
                    key: "idempotency.require",
                    reason: "needs idempotency.enabled".into(),
                });
            }
            return Ok(None);
        }
        Ok(Some(config))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    reload_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    #[serde(default, with = "humantime_serde")]
    max_wait: Option<Duration>,
    max_open: Option<usize>,
    max_open_per_credential: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    heartbeat: Option<Duration>,
    stream_buffer: Option<ByteSize>,
    max_memory: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Option<String>,
    members: Option<Vec<RawMember>>,
    policy: Option<Policy>,
    #[serde(default, with = "humantime_serde")]
    running_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    queue_wait: Option<Duration>,
    roots: Option<Roots>,
    ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    submit_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: Option<usize>,
    max_body: Option<ByteSize>,
    max_in_flight: Option<usize>,
    max_in_flight_per_credential: Option<usize>,
    max_in_flight_passthrough: Option<usize>,
    max_rps: Option<u32>,
    max_rps_per_credential: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    queue_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retry_after_default: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retry_after_max: Option<Duration>,
    breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    breaker_cooldown: Option<Duration>,
    probe: Option<RawProbe>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    path: Option<String>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

impl RawProbe {
    fn validate(self) -> Result<ProbeConfig, ConfigError> {
        let path = self.path.unwrap_or_else(|| "/".to_owned());
        let valid = path.starts_with('/')
            && path.len() <= 1024
            && http::uri::PathAndQuery::try_from(path.as_str()).is_ok();
        if !valid {
            return Err(ConfigError::Invalid {
                key: "upstream.probe.path",
                reason: "must be a path starting with `/` (and a query, if any), up to 1 KiB"
                    .into(),
            });
        }
        Ok(ProbeConfig {
            path,
            interval: keys::UPSTREAM_PROBE_INTERVAL.duration(self.interval)?,
            timeout: keys::UPSTREAM_PROBE_TIMEOUT.duration(self.timeout)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: String,
    url: String,
    weight: Option<u32>,
    max_running: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default, with = "humantime_serde")]
    in_progress_ttl: Option<Duration>,
    max_memory: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    max_stale: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    not_found_ttl: Option<Duration>,
    gzip: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_body: Option<ByteSize>,
    max_ids: Option<usize>,
    upstream_chunk: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    max_connections: Option<usize>,
    per_client_rps: Option<usize>,
    per_client_burst: Option<usize>,
    per_client_connections: Option<usize>,
    proxy_protocol: Option<bool>,
    max_header_bytes: Option<ByteSize>,
    max_request_body: Option<ByteSize>,
    passthrough_buffer: Option<ByteSize>,
    /// Named `passthrough_buffer_total` before it covered batch and submit bodies too.
    #[serde(alias = "passthrough_buffer_total")]
    body_buffer_total: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    body_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    send_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    park_idle_after: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    filter: Option<String>,
    access: Option<bool>,
    access_format: Option<crate::access::AccessFormat>,
    access_fields: Option<Vec<crate::access::Field>>,
    access_query: Option<bool>,
    access_hit_sample: Option<f64>,
    access_to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSharedCache {
    redis_url: Option<String>,
    key_prefix: Option<String>,
    fingerprint_secret: Option<String>,
    #[serde(default, with = "humantime_serde")]
    terminal_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    lease_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retry_interval: Option<Duration>,
    cluster: Option<Vec<String>>,
    sentinel: Option<redis::RawSentinel>,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
}

/// Overrides from the command line or the environment; they beat the file.
#[derive(Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    /// `MJGATE_REDIS_URL` / `--redis-url`: turns the shared tier on (or points it elsewhere).
    pub redis_url: Option<String>,
    /// `MJGATE_ARTIFACTS_DIR` / `--artifacts-dir`: where kept files live, in place of
    /// `artifacts.dir` (a local store only).
    pub artifacts_dir: Option<PathBuf>,
    /// `MJGATE_FINGERPRINT_SECRET`: kept out of files and process lists.
    pub fingerprint_secret: Option<String>,
    /// `MJGATE_REDIS_PASSWORD`: the shared tier's password, kept out of files and process lists.
    pub redis_password: Option<String>,
    /// `MJGATE_WEBHOOK_SECRET`: the webhook signing secret, likewise.
    pub webhook_secret: Option<String>,
    /// `MJGATE_ADMIN_TOKEN`: the admin routes' token, likewise.
    pub admin_token: Option<String>,
}

impl Config {
    /// Reads and validates the file at `path`, then applies `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        };
        let bytes = crate::file::read_bounded(path, crate::file::MAX_CONFIG).map_err(read)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            read(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8",
            ))
        })?;
        Self::from_toml(&text, overrides)
    }

    /// Parses and validates a TOML document, then applies `overrides`.
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let parse_error = |key: String, source: toml::de::Error| ConfigError::Parse {
            key,
            line: source
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1),
            message: source.message().trim().to_owned(),
        };
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| parse_error(String::new(), e))?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| parse_error(e.path().to_string(), e.into_inner()))?;
        Self::validate(raw, overrides)
    }

    /// A config for `upstream` with every other value at its default, for tests and embedding.
    pub fn for_upstream(upstream: &str) -> Result<Self, ConfigError> {
        Self::from_toml(
            "",
            &Overrides {
                upstream: Some(upstream.to_owned()),
                ..Overrides::default()
            },
        )
    }

    fn validate(raw: RawConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let listen = overrides.listen.or(raw.listen).unwrap_or_else(|| {
            keys::LISTEN
                .default
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)))
        });
        if raw.admin_listen.is_some() && raw.admin_listen == Some(listen) {
            return Err(ConfigError::Invalid {
                key: "admin_listen",
                reason: "must differ from listen".into(),
            });
        }
        let cache = raw.cache.validate()?;
        let upstream = raw
            .upstream
            .validate(overrides.upstream.clone(), "default")?;
        let upstreams = named_pools(raw.upstreams, &upstream)?;
        let families = Families::new(raw.families)?;
        family_pools(&families, &upstreams)?;
        let admin_token = overrides
            .admin_token
            .clone()
            .or(raw.admin.and_then(|admin| admin.token));
        if admin_token.as_ref().is_some_and(|token| token.len() < 16) {
            return Err(ConfigError::Invalid {
                key: "admin.token",
                reason: "must be at least 16 bytes".into(),
            });
        }
        Ok(Config {
            listen,
            admin_listen: raw.admin_listen,
            admin_token,
            upstream,
            upstreams,
            shared_cache: shared_cache(raw.shared_cache, overrides, cache.in_progress_ttl)?,
            cache,
            batch: raw.batch.validate()?,
            server: raw.server.validate()?,
            log: raw.log.validate()?,
            watch: raw.watch.validate()?,
            tls: listener_tls(raw.tls)?,
            families,
            webhooks: webhooks::RawWebhooks::validate(
                raw.webhooks,
                overrides.webhook_secret.clone(),
            )?,
            idempotency: raw.idempotency.validate()?,
            artifacts: artifacts::RawArtifacts::validate(raw.artifacts)?.map(|mut kept| {
                if let (Some(dir), ArtifactStore::Local { dir: local, .. }) =
                    (&overrides.artifacts_dir, &mut kept.store)
                {
                    local.clone_from(dir);
                }
                kept
            }),
            trace: trace::RawTrace::validate(raw.trace)?,
        })
    }
}

/// The named pools, each checked as `[upstream]` is, its errors said of its own table; a pool with
/// `url` alone is one member named after the pool. Member names are unique across every pool
/// (metrics, logs and the shared tier's owner records name them).
fn named_pools(
    raw: std::collections::BTreeMap<String, RawUpstream>,
    default: &UpstreamConfig,
) -> Result<Vec<(String, UpstreamConfig)>, ConfigError> {
    if raw.len() > MAX_POOLS {
        return Err(ConfigError::Invalid {
            key: "upstreams",
            reason: format!("at most {MAX_POOLS} named pools"),
        });
    }
    let mut names: Vec<String> = default.members.iter().map(|m| m.name.clone()).collect();
    let mut pools = Vec::with_capacity(raw.len());
    for (pool, table) in raw {
        if pool == "default" || !is_name(&pool) {
            return Err(ConfigError::Invalid {
                key: "upstreams",
                reason: format!(
                    "a pool's name is 1 to 64 letters, digits, `-` or `_`, and not `default`: {:?}",
                    pool.chars().take(64).collect::<String>()
                ),
            });
        }
        let config = table
            .validate(None, &pool)
            .map_err(|error| ConfigError::Pool {
                pool: pool.clone(),
                error: Box::new(error),
            })?;
        for member in &config.members {
            if names.contains(&member.name) {
                return Err(ConfigError::Pool {
                    pool,
                    error: Box::new(ConfigError::Invalid {
                        key: "upstream.members",
                        reason: format!(
                            "a member is named `{}` in another pool too (names are unique across pools)",
                            member.name
                        ),
                    }),
                });
            }
            names.push(member.name.clone());
        }
        pools.push((pool, config));
    }
    Ok(pools)
}

/// Every family's `upstream` names a pool there is; and no two families on different pools claim
/// the same passthrough prefix (which pool would a request under it go to?).
fn family_pools(
    families: &Families,
    upstreams: &[(String, UpstreamConfig)],
) -> Result<(), ConfigError> {
    for family in families.live() {
        if let Some(pool) = family.upstream()
            && !upstreams.iter().any(|(name, _)| name == pool)
        {
            return Err(ConfigError::Family(crate::family::FamilyError {
                key: format!("families.{}.upstream", family.name()),
                reason: format!("names no pool: there is no [upstreams.{pool}]"),
            }));
        }
    }
    for a in families.live().filter(|f| f.upstream().is_some()) {
        if let Some(b) = families
            .live()
            .find(|b| b.prefix() == a.prefix() && b.upstream() != a.upstream())
        {
            return Err(ConfigError::Family(crate::family::FamilyError {
                key: format!("families.{}.upstream", a.name()),
                reason: format!(
                    "family `{}` shares its path prefix `{}` but goes to another pool: passthrough \
                     requests under it could go to either",
                    b.name(),
                    a.prefix()
                ),
            }));
        }
    }
    Ok(())
}

/// What an error says, without its `invalid config:` lead (to nest it in another's reason).
fn reason_of(error: &ConfigError) -> String {
    let text = error.to_string();
    text.strip_prefix("invalid config: ")
        .unwrap_or(&text)
        .to_owned()
}

/// A member's or a pool's name: what metrics, logs and the shared tier call it.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Config {
    /// Every pool, the default first: `("default", [upstream])`, then the named ones.
    pub fn pools(&self) -> impl Iterator<Item = (&str, &UpstreamConfig)> {
        std::iter::once(("default", &self.upstream)).chain(
            self.upstreams
                .iter()
                .map(|(name, pool)| (name.as_str(), pool)),
        )
    }

    /// Every member of every pool.
    pub fn all_members(&self) -> impl Iterator<Item = &MemberConfig> {
        self.pools().flat_map(|(_, pool)| pool.members.iter())
    }
}

impl RawUpstream {
    /// `[upstream]` (or a named pool's table, its lone member named `lone`).
    fn validate(
        self,
        url_override: Option<String>,
        lone: &str,
    ) -> Result<UpstreamConfig, ConfigError> {
        let members = members(url_override, self.url, self.members, lone)?;
        let url = members[0].url.clone();

        let max_in_flight = keys::UPSTREAM_MAX_IN_FLIGHT.count(self.max_in_flight)?;
        let roots = self.roots.unwrap_or_default();
        // Only an https upstream uses them, but a bad bundle is a bad config whatever the scheme.
        if roots != Roots::Webpki || self.ca_file.is_some() {
            upstream_roots(roots, self.ca_file.as_deref())?;
        }
        let passthrough = self
            .max_in_flight_passthrough
            .unwrap_or(max_in_flight.div_ceil(2));
        if !(1..=max_in_flight).contains(&passthrough) {
            return Err(ConfigError::Invalid {
                key: "upstream.max_in_flight_passthrough",
                reason: format!("must be from 1 to upstream.max_in_flight ({max_in_flight})"),
            });
        }
        let u32_count = |key: &keys::Key, value: Option<u32>| {
            keys::Key::number(key, value.map(u64::from)).map(|n| n as u32)
        };
        Ok(UpstreamConfig {
            url,
            members,
            policy: self.policy.unwrap_or_default(),
            running_ttl: keys::UPSTREAM_RUNNING_TTL.duration(self.running_ttl)?,
            queue_wait: keys::UPSTREAM_QUEUE_WAIT.duration(self.queue_wait)?,
            roots,
            ca_file: self.ca_file,
            connect_timeout: keys::UPSTREAM_CONNECT_TIMEOUT.duration(self.connect_timeout)?,
            request_timeout: keys::UPSTREAM_REQUEST_TIMEOUT.duration(self.request_timeout)?,
            submit_timeout: keys::UPSTREAM_SUBMIT_TIMEOUT.duration(self.submit_timeout)?,
            pool_idle_timeout: keys::UPSTREAM_POOL_IDLE_TIMEOUT.duration(self.pool_idle_timeout)?,
            pool_max_idle_per_host: keys::UPSTREAM_POOL_MAX_IDLE_PER_HOST
                .count(self.pool_max_idle_per_host)?,
            max_body: keys::UPSTREAM_MAX_BODY.number(self.max_body.map(|b| b.0))?,
            max_in_flight,
            max_in_flight_passthrough: passthrough,
            max_in_flight_per_credential: keys::UPSTREAM_MAX_IN_FLIGHT_PER_CREDENTIAL
                .count(self.max_in_flight_per_credential)?,
            max_rps: u32_count(&keys::UPSTREAM_MAX_RPS, self.max_rps)?,
            max_rps_per_credential: u32_count(
                &keys::UPSTREAM_MAX_RPS_PER_CREDENTIAL,
                self.max_rps_per_credential,
            )?,
            queue_timeout: keys::UPSTREAM_QUEUE_TIMEOUT.duration(self.queue_timeout)?,
            retry_after_default: keys::UPSTREAM_RETRY_AFTER_DEFAULT
                .duration(self.retry_after_default)?,
            retry_after_max: keys::UPSTREAM_RETRY_AFTER_MAX.duration(self.retry_after_max)?,
            breaker_failures: u32_count(&keys::UPSTREAM_BREAKER_FAILURES, self.breaker_failures)?,
            breaker_cooldown: keys::UPSTREAM_BREAKER_COOLDOWN.duration(self.breaker_cooldown)?,
            probe: self.probe.map(RawProbe::validate).transpose()?,
        })
    }
}

/// The pool: `--upstream` (or `MJGATE_UPSTREAM`) alone, else `upstream.url` alone, else the members.
fn members(
    url_override: Option<String>,
    url: Option<String>,
    raw: Option<Vec<RawMember>>,
    lone: &str,
) -> Result<Vec<MemberConfig>, ConfigError> {
    let parse = |key: &'static str, text: &str| {
        UpstreamUrl::parse(text).map_err(|e| ConfigError::Invalid {
            key,
            reason: e.to_string(),
        })
    };
    let one = |url: UpstreamUrl| {
        vec![MemberConfig {
            name: lone.to_owned(),
            url,
            weight: 1,
            max_running: 0,
        }]
    };
    if let Some(text) = url_override {
        return Ok(one(parse("upstream.url", &text)?));
    }
    let invalid = |reason: String| ConfigError::Invalid {
        key: "upstream.members",
        reason,
    };
    match (url, raw) {
        (Some(_), Some(_)) => Err(invalid(
            "and upstream.url both set: list the first upstream as a member too".into(),
        )),
        (None, None) => Err(ConfigError::Invalid {
            key: "upstream.url",
            reason: "is required (set it in the file, MJGATE_UPSTREAM or --upstream), or \
                     [[upstream.members]]"
                .into(),
        }),
        (Some(text), None) => Ok(one(parse("upstream.url", &text)?)),
        (None, Some(raw)) => {
            if raw.is_empty() || raw.len() > MAX_MEMBERS {
                return Err(invalid(format!("must list 1 to {MAX_MEMBERS} members")));
            }
            let mut members: Vec<MemberConfig> = Vec::with_capacity(raw.len());
            for member in raw {
                let name = member.name;
                if !is_name(&name) {
                    return Err(invalid(format!(
                        "a member's name is 1 to 64 letters, digits, `-` or `_`: {:?}",
                        name.chars().take(64).collect::<String>()
                    )));
                }
                if members.iter().any(|m| m.name == name) {
                    return Err(invalid(format!("two members are named `{name}`")));
                }
                let url = UpstreamUrl::parse(&member.url)
                    .map_err(|e| invalid(format!("member `{name}`: url: {e}")))?;
                let weight = keys::UPSTREAM_MEMBER_WEIGHT
                    .number(member.weight.map(u64::from))
                    .map_err(|e| invalid(format!("member `{name}`: {}", reason_of(&e))))?
                    as u32;
                let max_running = keys::UPSTREAM_MEMBER_MAX_RUNNING
                    .count(member.max_running)
                    .map_err(|e| invalid(format!("member `{name}`: {}", reason_of(&e))))?;
                members.push(MemberConfig {
                    name,
                    url,
                    weight,
                    max_running,
                });
            }
            Ok(members)
        }
    }
}

impl RawCache {
    fn validate(self) -> Result<CacheConfig, ConfigError> {
        Ok(CacheConfig {
            in_progress_ttl: keys::CACHE_IN_PROGRESS_TTL.duration(self.in_progress_ttl)?,
            max_memory: keys::CACHE_MAX_MEMORY.number(self.max_memory.map(|b| b.0))?,
            max_stale: keys::CACHE_MAX_STALE.duration(self.max_stale)?,
            not_found_ttl: keys::CACHE_NOT_FOUND_TTL.duration(self.not_found_ttl)?,
            gzip: keys::CACHE_GZIP.flag(self.gzip),
        })
    }
}

impl RawBatch {
    fn validate(self) -> Result<BatchConfig, ConfigError> {
        Ok(BatchConfig {
            max_body: keys::BATCH_MAX_BODY.number(self.max_body.map(|b| b.0))?,
            max_ids: keys::BATCH_MAX_IDS.count(self.max_ids)?,
            upstream_chunk: keys::BATCH_UPSTREAM_CHUNK.count(self.upstream_chunk)?,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let body_buffer_total =
            keys::SERVER_BODY_BUFFER_TOTAL.number(self.body_buffer_total.map(|b| b.0))?;
        let passthrough_buffer =
            keys::SERVER_PASSTHROUGH_BUFFER.number(self.passthrough_buffer.map(|b| b.0))?;
        if passthrough_buffer > body_buffer_total {
            return Err(ConfigError::Invalid {
                key: "server.passthrough_buffer",
                reason: "must not exceed server.body_buffer_total".into(),
            });
        }
        let trusted_proxies = crate::request::client_addr::TrustedProxies::parse(
            &self.trusted_proxies,
        )
        .map_err(|entry| ConfigError::Invalid {
            key: "server.trusted_proxies",
            reason: format!("{entry:?} is neither a CIDR (10.0.0.0/8) nor an address"),
        })?;
        Ok(ServerConfig {
            trusted_proxies,
            shutdown_grace: keys::SERVER_SHUTDOWN_GRACE.duration(self.shutdown_grace)?,
            header_read_timeout: keys::SERVER_HEADER_READ_TIMEOUT
                .duration(self.header_read_timeout)?,
            max_connections: keys::SERVER_MAX_CONNECTIONS.count(self.max_connections)?,
            per_client_rps: keys::SERVER_PER_CLIENT_RPS.count(self.per_client_rps)? as u32,
            per_client_burst: keys::SERVER_PER_CLIENT_BURST.count(self.per_client_burst)? as u32,
            per_client_connections: keys::SERVER_PER_CLIENT_CONNECTIONS
                .count(self.per_client_connections)? as u32,
            proxy_protocol: keys::SERVER_PROXY_PROTOCOL.flag(self.proxy_protocol),
            max_header_bytes: keys::SERVER_MAX_HEADER_BYTES
                .number(self.max_header_bytes.map(|b| b.0))? as usize,
            max_request_body: keys::SERVER_MAX_REQUEST_BODY
                .number(self.max_request_body.map(|b| b.0))?,
            passthrough_buffer,
            body_buffer_total,
            body_read_timeout: keys::SERVER_BODY_READ_TIMEOUT.duration(self.body_read_timeout)?,
            idle_timeout: keys::SERVER_IDLE_TIMEOUT.duration(self.idle_timeout)?,
            send_timeout: keys::SERVER_SEND_TIMEOUT.duration(self.send_timeout)?,
            park_idle_after: Some(keys::SERVER_PARK_IDLE_AFTER.duration(self.park_idle_after)?)
                .filter(|after| !after.is_zero()),
        })
    }
}

impl RawWatch {
    fn validate(self) -> Result<WatchConfig, ConfigError> {
        Ok(WatchConfig {
            max_wait: keys::WATCH_MAX_WAIT.duration(self.max_wait)?,
            max_open: keys::WATCH_MAX_OPEN.count(self.max_open)?,
            max_open_per_credential: keys::WATCH_MAX_OPEN_PER_CREDENTIAL
                .count(self.max_open_per_credential)?,
            heartbeat: keys::WATCH_HEARTBEAT.duration(self.heartbeat)?,
            stream_buffer: keys::WATCH_STREAM_BUFFER.number(self.stream_buffer.map(|b| b.0))?,
            max_memory: keys::WATCH_MAX_MEMORY.number(self.max_memory.map(|b| b.0))?,
        })
    }
}

impl RawLog {
    fn validate(self) -> Result<LogConfig, ConfigError> {
        let hit_sample = self
            .access_hit_sample
            .unwrap_or_else(|| keys::LOG_ACCESS_HIT_SAMPLE.parsed());
        if !(0.0..=1.0).contains(&hit_sample) {
            return Err(ConfigError::Invalid {
                key: keys::LOG_ACCESS_HIT_SAMPLE.name,
                reason: format!("{hit_sample} is not a share from 0 to 1"),
            });
        }
        let fields = self
            .access_fields
            .unwrap_or_else(|| crate::access::Field::ALL.to_vec());
        if fields.is_empty() {
            return Err(ConfigError::Invalid {
                key: "log.access_fields",
                reason: "names no field: leave it out for all of them".to_owned(),
            });
        }
        let to = crate::access::AccessTarget::parse(&keys::LOG_ACCESS_TO.word(self.access_to));
        if let crate::access::AccessTarget::File(path) = &to
            && path.file_name().is_none()
        {
            return Err(ConfigError::Invalid {
                key: keys::LOG_ACCESS_TO.name,
                reason: format!("{} is not a file", path.display()),
            });
        }
        Ok(LogConfig {
            format: self.format.unwrap_or_default(),
            filter: keys::LOG_FILTER.word(self.filter),
            access: crate::access::AccessLogConfig {
                enabled: keys::LOG_ACCESS.flag(self.access),
                format: self.access_format.unwrap_or_default(),
                fields,
                query: keys::LOG_ACCESS_QUERY.flag(self.access_query),
                hit_sample,
                to,
            },
        })
    }
}

/// Validates the upstream's TLS roots by building the client configuration they make.
fn upstream_roots(roots: Roots, ca_file: Option<&Path>) -> Result<(), ConfigError> {
    tls::client_config(roots, ca_file)
        .map(drop)
        .map_err(|e| ConfigError::Invalid {
            key: if ca_file.is_some() {
                "upstream.ca_file"
            } else {
                "upstream.roots"
            },
            reason: e.to_string(),
        })
}

/// Validates `[tls]`: both files given, readable, and a certificate with its own key.
fn listener_tls(raw: Option<RawTls>) -> Result<Option<ListenerTls>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let missing = |key| ConfigError::Invalid {
        key,
        reason: "is required in [tls]".into(),
    };
    let files = ListenerTls {
        cert_file: raw.cert_file.ok_or_else(|| missing("tls.cert_file"))?,
        key_file: raw.key_file.ok_or_else(|| missing("tls.key_file"))?,
        reload_interval: keys::TLS_RELOAD_INTERVAL.duration(raw.reload_interval)?,
    };
    tls::load_certified_key(&files.cert_file, &files.key_file).map_err(|e| {
        let names_key = match &e {
            TlsError::Key { .. } => true,
            TlsError::Read { path, .. } | TlsError::Pem { path, .. } => *path == files.key_file,
            _ => false,
        };
        ConfigError::Invalid {
            key: if names_key {
                "tls.key_file"
            } else {
                "tls.cert_file"
            },
            reason: e.to_string(),
        }
    })?;
    Ok(Some(files))
}

/// Validates `[shared_cache]`: absent unless a Redis URL is given (file, env or flag).
fn shared_cache(
    raw: Option<RawSharedCache>,
    overrides: &Overrides,
    in_progress_ttl: Duration,
) -> Result<Option<SharedCacheConfig>, ConfigError> {
    let mut raw = raw.unwrap_or_default();
    let Some(topology) = redis::topology(
        overrides.redis_url.clone(),
        raw.redis_url.take(),
        raw.cluster.take(),
        raw.sentinel.take(),
    )?
    else {
        return Ok(None);
    };
    let fingerprint_secret = overrides
        .fingerprint_secret
        .clone()
        .or(raw.fingerprint_secret.take())
        .ok_or(ConfigError::Invalid {
            key: "shared_cache.fingerprint_secret",
            reason:
                "is required with the shared tier, the same on every replica, so they agree on key \
                     names (set it in the file or MJGATE_FINGERPRINT_SECRET)"
                    .into(),
        })?;
    if fingerprint_secret.len() < 16 {
        return Err(ConfigError::Invalid {
            key: "shared_cache.fingerprint_secret",
            reason: "must be at least 16 characters".into(),
        });
    }
    let tls = redis::tls_files(
        &topology,
        raw.ca_file.take(),
        raw.client_cert_file.take(),
        raw.client_key_file.take(),
    )?;
    let key_prefix = keys::SHARED_CACHE_KEY_PREFIX.word(raw.key_prefix);
    if key_prefix.contains(['{', '}']) {
        // Key names carry a hash tag (`{...}`) so a task's keys share a cluster slot; a brace in
        // the prefix would become the tag and put every key in one slot.
        return Err(ConfigError::Invalid {
            key: "shared_cache.key_prefix",
            reason: "must not contain `{` or `}` (key names carry their own hash tags)".into(),
        });
    }
    // At least 100ms: it is renewed at a third of its length.
    let lease_ttl = keys::SHARED_CACHE_LEASE_TTL.duration(raw.lease_ttl)?;
    let terminal_ttl = keys::SHARED_CACHE_TERMINAL_TTL.duration(raw.terminal_ttl)?;
    if terminal_ttl < in_progress_ttl {
        return Err(ConfigError::Invalid {
            key: "shared_cache.terminal_ttl",
            reason: "must not be shorter than cache.in_progress_ttl".into(),
        });
    }
    Ok(Some(SharedCacheConfig {
        topology,
        key_prefix,
        fingerprint_secret,
        terminal_ttl,
        timeout: keys::SHARED_CACHE_TIMEOUT.duration(raw.timeout)?,
        lease_ttl,
        poll_interval: keys::SHARED_CACHE_POLL_INTERVAL.duration(raw.poll_interval)?,
        retry_interval: keys::SHARED_CACHE_RETRY_INTERVAL.duration(raw.retry_interval)?,
        password: overrides.redis_password.clone().filter(|p| !p.is_empty()),
        tls,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_takes_defaults() {
        let c = Config::from_toml(
            "listen = \"127.0.0.1:9000\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[cache]\nin_progress_ttl = \"750ms\"\n",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.cache.in_progress_ttl, Duration::from_millis(750));
        assert_eq!(c.batch.max_ids, 500);
        assert_eq!(c.batch.max_body, 1 << 20);
    }

    #[test]
    fn overrides_beat_the_file() {
        let c = Config::from_toml(
            "listen = \"127.0.0.1:9000\"\n[upstream]\nurl = \"http://a.example\"\n",
            &Overrides {
                listen: Some("127.0.0.1:9001".parse().unwrap()),
                upstream: Some("http://b.example/api".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.upstream.url.authority(), "b.example");
    }

    #[test]
    fn the_shared_tier_is_off_without_a_redis_url_and_needs_a_secret_with_one() {
        let off = Config::from_toml("[upstream]\nurl = \"http://a\"\n", &Overrides::default());
        assert!(off.unwrap().shared_cache.is_none());
        let no_secret =
            "[upstream]\nurl = \"http://a\"\n[shared_cache]\nredis_url = \"redis://r:6379\"\n";
        let err = Config::from_toml(no_secret, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("shared_cache.fingerprint_secret"), "{err}");
        let from_env = Overrides {
            fingerprint_secret: Some("0123456789abcdef0123".into()),
            ..Overrides::default()
        };
        let on = Config::from_toml(no_secret, &from_env).unwrap();
        let shared = on.shared_cache.unwrap();
        assert_eq!(shared.terminal_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(shared.key_prefix, "mjgate:");
        let bad_url =
            "[upstream]\nurl = \"http://a\"\n[shared_cache]\nredis_url = \"http://u:pw@r\"\n";
        let err = Config::from_toml(bad_url, &from_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shared_cache.redis_url") && !err.contains("pw"),
            "{err}"
        );
    }

    #[test]
    fn the_redis_password_and_the_secret_stay_out_of_debug_output() {
        let text = "[upstream]\nurl = \"http://a\"\n[shared_cache]\nredis_url = \"redis://:hunter2@r:6379\"\nfingerprint_secret = \"swordfish-swordfish\"\n";
        let c = Config::from_toml(text, &Overrides::default()).unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("swordfish"),
            "{debug}"
        );
        assert!(debug.contains("redis://***@r:6379"), "{debug}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml(
            "[upstream]\nurl = \"http://a\"\n[cache]\nin_progres_ttl = \"3s\"\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("in_progres_ttl"), "{err}");
    }

    #[test]
    fn invalid_duration_is_named() {
        let err = Config::from_toml(
            "[upstream]\nurl = \"http://a\"\n[cache]\nin_progress_ttl = \"soon\"\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("in_progress_ttl"), "{err}");
    }

    #[test]
    fn zero_ttl_is_refused() {
        let err = Config::from_toml(
            "[upstream]\nurl = \"http://a\"\n[cache]\nin_progress_ttl = \"0s\"\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cache.in_progress_ttl"), "{err}");
    }

    #[test]
    fn connection_limits_are_bounded_both_ways() {
        for (value, bound) in [("0", "from 1 to 1000000"), ("2000000", "from 1 to 1000000")] {
            let err = Config::from_toml(
                &format!("[upstream]\nurl = \"http://a\"\n[server]\nmax_connections = {value}\n"),
                &Overrides::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("server.max_connections"), "{err}");
            assert!(err.contains(bound), "{err}");
        }
    }

    #[test]
    fn named_pools_take_the_keys_of_upstream_and_families_name_them() {
        let c = Config::from_toml(
            "[upstream]\nurl = \"http://a\"\n[upstreams.relay]\nurl = \"http://r\"\nmax_in_flight = 7\n\
             [upstreams.relay.probe]\ninterval = \"5s\"\n[families.suno]\nupstream = \"relay\"\n",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.upstreams.len(), 1);
        let (name, relay) = &c.upstreams[0];
        assert_eq!(name, "relay");
        assert_eq!(relay.max_in_flight, 7);
        assert_eq!(
            relay.members[0].name, "relay",
            "a lone url is a member named after its pool"
        );
        let probe = relay.probe.as_ref().unwrap();
        assert_eq!(
            (probe.path.as_str(), probe.interval),
            ("/", Duration::from_secs(5))
        );
        assert!(c.upstream.probe.is_none());
        assert_eq!(
            c.families.by_name("suno").unwrap().upstream(),
            Some("relay")
        );
        assert_eq!(c.families.by_name("midjourney").unwrap().upstream(), None);
        assert_eq!(c.all_members().count(), 2);
    }

    #[test]
    fn a_named_pool_is_checked_and_its_errors_name_its_table() {
        let refused = |text: &str| {
            Config::from_toml(
                &format!("[upstream]\nurl = \"http://a\"\n{text}"),
                &Overrides::default(),
            )
            .unwrap_err()
            .to_string()
        };
        let err = refused("[upstreams.relay]\nurl = \"http://r\"\nmax_in_flight = 0\n");
        assert!(
            err.contains("[upstreams.relay]") && err.contains("`max_in_flight`"),
            "{err}"
        );
        let err = refused("[families.suno]\nupstream = \"nowhere\"\n");
        assert!(
            err.contains("families.suno.upstream") && err.contains("nowhere"),
            "{err}"
        );
        let err = refused("[upstreams.default]\nurl = \"http://r\"\n");
        assert!(err.contains("not `default`"), "{err}");
        // Member names are unique across pools: metrics and the shared tier's records name them.
        let err = refused(
            "[upstreams.relay]\n[[upstreams.relay.members]]\nname = \"default\"\nurl = \"http://r\"\n",
        );
        assert!(err.contains("another pool"), "{err}");
        let err = refused(
            "[upstreams.relay]\nurl = \"http://r\"\n[upstreams.relay.probe]\npath = \"health\"\n",
        );
        assert!(err.contains("probe.path"), "{err}");
        // Two families on different pools may not claim one passthrough prefix.
        let err = refused(
            "[upstreams.relay]\nurl = \"http://r\"\n[families.mine]\nupstream = \"relay\"\n\
             status_routes = [\"/mj/mine/{id}\", \"/mj/other/{id}\"]\nstatus_at = [\"/s\"]\nid_at = [\"/id\"]\n",
        );
        assert!(err.contains("path prefix `/mj/`"), "{err}");
    }

    #[test]
    fn an_upstream_url_with_credentials_is_refused_without_echoing_them() {
        let err = Config::from_toml(
            "[upstream]\nurl = \"https://user:s3cret@example.com/api\"\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("upstream.url"), "{err}");
        assert!(err.contains("credentials"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn bad_upstream_scheme_is_named() {
        let err = Config::from_toml("[upstream]\nurl = \"ftp://a\"\n", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream.url"), "{err}");
    }

    #[test]
    fn values_that_would_overflow_a_timer_or_a_semaphore_are_refused_naming_the_key() {
        let huge = [
            ("cache", "in_progress_ttl", "\"1000y\""),
            ("upstream", "max_in_flight", "18446744073709551615"),
            ("server", "header_read_timeout", "\"300000000000y\""),
            ("upstream", "queue_timeout", "\"18446744073709551615s\""),
            (
                "upstream",
                "retry_after_default",
                "\"18446744073709551615s\"",
            ),
            ("upstream", "retry_after_max", "\"18446744073709551615s\""),
            ("cache", "max_stale", "\"18446744073709551615s\""),
            ("server", "body_read_timeout", "\"18446744073709551615s\""),
            ("server", "idle_timeout", "\"18446744073709551615s\""),
            ("watch", "heartbeat", "\"18446744073709551615s\""),
            ("upstream", "pool_idle_timeout", "\"18446744073709551615s\""),
        ];
        for (table, key, value) in huge {
            let text = format!("[upstream]\nurl = \"http://a\"\n[{table}]\n{key} = {value}\n")
                .replacen(
                    "[upstream]\nurl = \"http://a\"\n[upstream]\n",
                    "[upstream]\nurl = \"http://a\"\n",
                    1,
                );
            let err = Config::from_toml(&text, &Overrides::default())
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{table}.{key}")), "{text}: {err}");
        }
    }

    #[test]
    fn the_word_defaults_are_the_ones_the_types_default_to() {
        let base = "[upstream]\nurl = \"http://a\"\n";
        let implicit = Config::from_toml(base, &Overrides::default()).unwrap();
        let explicit = Config::from_toml(
            &format!(
                "{base}roots = \"{}\"\n[log]\nformat = \"{}\"\n",
                keys::UPSTREAM_ROOTS.default,
                keys::LOG_FORMAT.default
            ),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(implicit.upstream.roots, explicit.upstream.roots);
        assert_eq!(implicit.log.format, explicit.log.format);
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../config/mjgate.toml");
        let c = Config::from_toml(text, &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.upstream.url.authority(), "crazyrouter.com");
        assert_eq!(c.cache.in_progress_ttl, Duration::from_secs(3));
    }
}
