//! Every numeric config key once: its default and the range it must fall in. The validators read
//! their defaults and bounds from here, `docs/configuration.md` shows them, and `config/mjgate.toml`
//! sets them; `tests/gateway/docs.rs` checks both against this table, so a default is written in one
//! place.
//!
//! The ranges are what the gateway can run with: a TTL of a thousand years overflows the cache's
//! timers, an in-flight ceiling of 2^64 a semaphore, a head timeout of 300 billion years every
//! connection's clock. Each bound is wide enough for any deployment and narrow enough that nothing
//! downstream can overflow.

use std::time::Duration;

use super::ConfigError;

/// What a key holds, with its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Duration(Duration),
    /// Bytes (written `64KiB`).
    Size(u64),
    Count(u64),
}

/// One numeric key: its dotted name, default, and inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    pub default: Value,
    pub min: Value,
    pub max: Value,
}

const fn ms(n: u64) -> Value {
    Value::Duration(Duration::from_millis(n))
}
const fn secs(n: u64) -> Value {
    Value::Duration(Duration::from_secs(n))
}
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
const fn size(n: u64) -> Value {
    Value::Size(n)
}
const fn count(n: u64) -> Value {
    Value::Count(n)
}
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A pool member's keys (`[[upstream.members]]`), outside [`ALL`]: an array of tables has no one
/// dotted name for the shipped config to set.
pub const UPSTREAM_MEMBER_WEIGHT: Key = Key {
    name: "upstream.members.weight",
    default: count(1),
    min: count(1),
    max: count(1_000),
};
pub const UPSTREAM_MEMBER_MAX_RUNNING: Key = Key {
    name: "upstream.members.max_running",
    default: count(0),
    min: count(0),
    max: count(1_000_000),
};

macro_rules! keys {
    ($($id:ident = $name:literal, $default:expr, $min:expr, $max:expr;)*) => {
        $(pub const $id: Key = Key { name: $name, default: $default, min: $min, max: $max };)*
        /// Every key of this table, in the order of the reference.
        pub const ALL: &[Key] = &[$($id),*];
    };
}

keys! {
    UPSTREAM_CONNECT_TIMEOUT = "upstream.connect_timeout", secs(5), ms(1), secs(10 * MINUTE);
    UPSTREAM_REQUEST_TIMEOUT = "upstream.request_timeout", secs(30), ms(1), secs(HOUR);
    UPSTREAM_SUBMIT_TIMEOUT = "upstream.submit_timeout", secs(120), ms(1), secs(HOUR);
    UPSTREAM_POOL_IDLE_TIMEOUT = "upstream.pool_idle_timeout", secs(90), ms(1), secs(DAY);
    UPSTREAM_POOL_MAX_IDLE_PER_HOST = "upstream.pool_max_idle_per_host", count(64), count(0), count(100_000);
    UPSTREAM_MAX_BODY = "upstream.max_body", size(8 * MIB), size(KIB), size(GIB);
    UPSTREAM_MAX_IN_FLIGHT = "upstream.max_in_flight", count(256), count(1), count(1_000_000);
    UPSTREAM_MAX_IN_FLIGHT_PER_CREDENTIAL = "upstream.max_in_flight_per_credential", count(32), count(1), count(1_000_000);
    UPSTREAM_MAX_RPS = "upstream.max_rps", count(0), count(0), count(10_000_000);
    UPSTREAM_MAX_RPS_PER_CREDENTIAL = "upstream.max_rps_per_credential", count(0), count(0), count(10_000_000);
    UPSTREAM_QUEUE_TIMEOUT = "upstream.queue_timeout", secs(1), ms(0), secs(10 * MINUTE);
    UPSTREAM_RETRY_AFTER_DEFAULT = "upstream.retry_after_default", secs(5), ms(1), secs(DAY);
    UPSTREAM_RETRY_AFTER_MAX = "upstream.retry_after_max", secs(60), ms(1), secs(DAY);
    UPSTREAM_BREAKER_FAILURES = "upstream.breaker_failures", count(5), count(1), count(1_000_000);
    UPSTREAM_BREAKER_COOLDOWN = "upstream.breaker_cooldown", secs(5), ms(1), secs(DAY);
    UPSTREAM_RUNNING_TTL = "upstream.running_ttl", secs(HOUR), secs(1), secs(7 * DAY);
    UPSTREAM_QUEUE_WAIT = "upstream.queue_wait", secs(0), ms(0), secs(10 * MINUTE);
    UPSTREAM_PROBE_INTERVAL = "upstream.probe.interval", secs(10), ms(100), secs(HOUR);
    UPSTREAM_PROBE_TIMEOUT = "upstream.probe.timeout", secs(2), ms(10), secs(MINUTE);
    CACHE_IN_PROGRESS_TTL = "cache.in_progress_ttl", secs(3), ms(1), secs(DAY);
    CACHE_MAX_MEMORY = "cache.max_memory", size(256 * MIB), size(64 * KIB), size(1024 * GIB);
    CACHE_MAX_STALE = "cache.max_stale", secs(5 * MINUTE), ms(0), secs(30 * DAY);
    CACHE_NOT_FOUND_TTL = "cache.not_found_ttl", secs(1), ms(0), secs(DAY);
    BATCH_MAX_BODY = "batch.max_body", size(MIB), size(64), size(64 * MIB);
    BATCH_MAX_IDS = "batch.max_ids", count(500), count(1), count(100_000);
    BATCH_UPSTREAM_CHUNK = "batch.upstream_chunk", count(100), count(1), count(100_000);
    SERVER_SHUTDOWN_GRACE = "server.shutdown_grace", secs(30), ms(0), secs(DAY);
    SERVER_HEADER_READ_TIMEOUT = "server.header_read_timeout", secs(10), ms(1), secs(HOUR);
    SERVER_MAX_CONNECTIONS = "server.max_connections", count(10_000), count(1), count(1_000_000);
    SERVER_PER_CLIENT_RPS = "server.per_client_rps", count(0), count(0), count(10_000_000);
    SERVER_PER_CLIENT_BURST = "server.per_client_burst", count(50), count(1), count(10_000_000);
    SERVER_PER_CLIENT_CONNECTIONS = "server.per_client_connections", count(0), count(0), count(1_000_000);
    SERVER_MAX_HEADER_BYTES = "server.max_header_bytes", size(64 * KIB), size(8 * KIB), size(16 * MIB);
    SERVER_MAX_REQUEST_BODY = "server.max_request_body", size(32 * MIB), size(KIB), size(64 * GIB);
    SERVER_PASSTHROUGH_BUFFER = "server.passthrough_buffer", size(64 * KIB), size(0), size(4 * GIB - 1);
    SERVER_BODY_BUFFER_TOTAL = "server.body_buffer_total", size(64 * MIB), size(0), size(1024 * GIB);
    SERVER_BODY_READ_TIMEOUT = "server.body_read_timeout", secs(30), ms(1), secs(DAY);
    SERVER_IDLE_TIMEOUT = "server.idle_timeout", secs(60), ms(1), secs(7 * DAY);
    SERVER_SEND_TIMEOUT = "server.send_timeout", secs(60), ms(1), secs(DAY);
    SERVER_PARK_IDLE_AFTER = "server.park_idle_after", ms(250), ms(0), secs(DAY);
    TLS_RELOAD_INTERVAL = "tls.reload_interval", secs(10), ms(100), secs(DAY);
    WATCH_MAX_WAIT = "watch.max_wait", secs(60), ms(1), secs(DAY);
    WATCH_MAX_OPEN = "watch.max_open", count(10_000), count(1), count(10_000_000);
    WATCH_MAX_OPEN_PER_CREDENTIAL = "watch.max_open_per_credential", count(1_000), count(1), count(10_000_000);
    WATCH_HEARTBEAT = "watch.heartbeat", secs(15), ms(1), secs(HOUR);
    TRACE_OTLP_TIMEOUT = "trace.otlp_timeout", secs(10), ms(1), secs(10 * MINUTE);
    WATCH_STREAM_BUFFER = "watch.stream_buffer", size(64 * MIB), size(MIB), size(1024 * GIB);
    WATCH_MAX_MEMORY = "watch.max_memory", size(64 * MIB), size(0), size(1024 * GIB);
    SHARED_CACHE_TERMINAL_TTL = "shared_cache.terminal_ttl", secs(7 * DAY), ms(1), secs(365 * DAY);
    SHARED_CACHE_TIMEOUT = "shared_cache.timeout", ms(250), ms(1), secs(10 * MINUTE);
    SHARED_CACHE_LEASE_TTL = "shared_cache.lease_ttl", secs(5), ms(100), secs(DAY);
    SHARED_CACHE_POLL_INTERVAL = "shared_cache.poll_interval", ms(100), ms(1), secs(10 * MINUTE);
    SHARED_CACHE_RETRY_INTERVAL = "shared_cache.retry_interval", secs(1), ms(1), secs(HOUR);
    IDEMPOTENCY_TTL = "idempotency.ttl", secs(DAY), secs(1), secs(30 * DAY);
    IDEMPOTENCY_MAX_MEMORY = "idempotency.max_memory", size(64 * MIB), size(MIB), size(1024 * GIB);
    IDEMPOTENCY_MAX_KEYS_PER_CREDENTIAL = "idempotency.max_keys_per_credential", count(10_000), count(1), count(100_000_000);
    WEBHOOKS_FIRST_RETRY = "webhooks.first_retry", secs(2), ms(1), secs(DAY);
    WEBHOOKS_MAX_RETRY_INTERVAL = "webhooks.max_retry_interval", secs(HOUR), ms(1), secs(7 * DAY);
    WEBHOOKS_MAX_AGE = "webhooks.max_age", secs(DAY), ms(1), secs(30 * DAY);
    WEBHOOKS_TIMEOUT = "webhooks.timeout", secs(10), ms(1), secs(10 * MINUTE);
    WEBHOOKS_MAX_IN_FLIGHT = "webhooks.max_in_flight", count(512), count(1), count(1_000_000);
    WEBHOOKS_MAX_PENDING = "webhooks.max_pending", count(10_000), count(1), count(10_000_000);
    WEBHOOKS_MAX_PENDING_PER_CREDENTIAL = "webhooks.max_pending_per_credential", count(1_000), count(1), count(10_000_000);
    WEBHOOKS_MAX_MEMORY = "webhooks.max_memory", size(256 * MIB), size(MIB), size(1024 * GIB);
    ARTIFACTS_MAX_DISK = "artifacts.max_disk", size(10 * GIB), size(MIB), size(1024 * 1024 * GIB);
    ARTIFACTS_MAX_FILE = "artifacts.max_file", size(512 * MIB), size(KIB), size(64 * GIB);
    ARTIFACTS_TIMEOUT = "artifacts.timeout", secs(5 * MINUTE), ms(1), secs(DAY);
    ARTIFACTS_IDLE_TIMEOUT = "artifacts.idle_timeout", secs(30), ms(1), secs(HOUR);
}

/// A key that holds a switch or a word, with its default as the file writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
}

pub const LISTEN: Setting = Setting {
    name: "listen",
    default: "127.0.0.1:8080",
};
pub const UPSTREAM_ROOTS: Setting = Setting {
    name: "upstream.roots",
    default: "webpki",
};
pub const CACHE_GZIP: Setting = Setting {
    name: "cache.gzip",
    default: "true",
};
pub const LOG_FORMAT: Setting = Setting {
    name: "log.format",
    default: "pretty",
};
pub const LOG_FILTER: Setting = Setting {
    name: "log.filter",
    default: "info",
};
pub const LOG_ACCESS: Setting = Setting {
    name: "log.access",
    default: "false",
};
pub const LOG_ACCESS_FORMAT: Setting = Setting {
    name: "log.access_format",
    default: "json",
};
pub const LOG_ACCESS_QUERY: Setting = Setting {
    name: "log.access_query",
    default: "false",
};
pub const LOG_ACCESS_HIT_SAMPLE: Setting = Setting {
    name: "log.access_hit_sample",
    default: "1.0",
};
pub const LOG_ACCESS_TO: Setting = Setting {
    name: "log.access_to",
    default: "log",
};
pub const TRACE_SERVICE_NAME: Setting = Setting {
    name: "trace.service_name",
    default: "mjgate",
};
pub const TRACE_SAMPLE_RATIO: Setting = Setting {
    name: "trace.sample_ratio",
    default: "1.0",
};
pub const TRACE_OTLP_PROTOCOL: Setting = Setting {
    name: "trace.otlp_protocol",
    default: "http/protobuf",
};
pub const SERVER_PROXY_PROTOCOL: Setting = Setting {
    name: "server.proxy_protocol",
    default: "false",
};
pub const SHARED_CACHE_KEY_PREFIX: Setting = Setting {
    name: "shared_cache.key_prefix",
    default: "mjgate:",
};
pub const IDEMPOTENCY_ENABLED: Setting = Setting {
    name: "idempotency.enabled",
    default: "true",
};
pub const IDEMPOTENCY_REQUIRE: Setting = Setting {
    name: "idempotency.require",
    default: "false",
};
pub const WEBHOOKS_ALLOW_PRIVATE: Setting = Setting {
    name: "webhooks.allow_private",
    default: "false",
};
pub const WEBHOOKS_FINISHED_ONLY: Setting = Setting {
    name: "webhooks.finished_only",
    default: "false",
};

pub const ARTIFACTS_ENABLED: Setting = Setting {
    name: "artifacts.enabled",
    default: "true",
};
pub const ARTIFACTS_DIR: Setting = Setting {
    name: "artifacts.dir",
    default: "artifacts",
};
pub const ARTIFACTS_ALLOW_PRIVATE: Setting = Setting {
    name: "artifacts.allow_private",
    default: "false",
};
pub const ARTIFACTS_S3_REGION: Setting = Setting {
    name: "artifacts.s3.region",
    default: "us-east-1",
};
pub const ARTIFACTS_S3_PATH_STYLE: Setting = Setting {
    name: "artifacts.s3.path_style",
    default: "false",
};

/// Every switch and word key, for the reference's test.
pub const SETTINGS: &[Setting] = &[
    LISTEN,
    UPSTREAM_ROOTS,
    CACHE_GZIP,
    LOG_FORMAT,
    LOG_FILTER,
    LOG_ACCESS,
    LOG_ACCESS_FORMAT,
    LOG_ACCESS_QUERY,
    LOG_ACCESS_HIT_SAMPLE,
    LOG_ACCESS_TO,
    SERVER_PROXY_PROTOCOL,
    TRACE_SERVICE_NAME,
    TRACE_SAMPLE_RATIO,
    TRACE_OTLP_PROTOCOL,
    SHARED_CACHE_KEY_PREFIX,
    IDEMPOTENCY_ENABLED,
    IDEMPOTENCY_REQUIRE,
    WEBHOOKS_ALLOW_PRIVATE,
    WEBHOOKS_FINISHED_ONLY,
    ARTIFACTS_ENABLED,
    ARTIFACTS_DIR,
    ARTIFACTS_ALLOW_PRIVATE,
    ARTIFACTS_S3_REGION,
    ARTIFACTS_S3_PATH_STYLE,
];

impl Setting {
    /// A switch's value: `value`, else the default.
    pub fn flag(&self, value: Option<bool>) -> bool {
        value.unwrap_or(self.default == "true")
    }

    /// A word's value: `value`, else the default.
    pub fn word(&self, value: Option<String>) -> String {
        value.unwrap_or_else(|| self.default.to_owned())
    }

    /// The default read as `T` (the table's own defaults always parse: its test says so).
    pub fn parsed<T: std::str::FromStr + Default>(&self) -> T {
        self.default.parse().unwrap_or_default()
    }
}

impl Key {
    /// A duration key's value: `value`, else the default; refused outside the range, naming the key.
    pub fn duration(&self, value: Option<Duration>) -> Result<Duration, ConfigError> {
        let (Value::Duration(default), Value::Duration(min), Value::Duration(max)) =
            (self.default, self.min, self.max)
        else {
            return Err(self.misdeclared());
        };
        let value = value.unwrap_or(default);
        if value < min || value > max {
            return Err(self.out_of_range());
        }
        Ok(value)
    }

    /// A duration key's default (zero for a key of another kind, which the table never has: its
    /// test says so).
    pub fn default_duration(&self) -> Duration {
        match self.default {
            Value::Duration(d) => d,
            _ => Duration::ZERO,
        }
    }

    /// A size or count key's value, as `duration` does it.
    pub fn number(&self, value: Option<u64>) -> Result<u64, ConfigError> {
        let (default, min, max) = match (self.default, self.min, self.max) {
            (Value::Size(d), Value::Size(lo), Value::Size(hi))
            | (Value::Count(d), Value::Count(lo), Value::Count(hi)) => (d, lo, hi),
            _ => return Err(self.misdeclared()),
        };
        let value = value.unwrap_or(default);
        if value < min || value > max {
            return Err(self.out_of_range());
        }
        Ok(value)
    }

    /// A count key's value as a `usize` (every range fits one).
    pub fn count(&self, value: Option<usize>) -> Result<usize, ConfigError> {
        let n = self.number(value.map(|v| v as u64))?;
        usize::try_from(n).map_err(|_| self.out_of_range())
    }

    /// The range as the reference and the error messages write it.
    pub fn range(&self) -> String {
        format!("{} to {}", self.min.text(), self.max.text())
    }

    fn out_of_range(&self) -> ConfigError {
        ConfigError::Invalid {
            key: self.name,
            reason: format!("must be from {}", self.range()),
        }
    }

    fn misdeclared(&self) -> ConfigError {
        ConfigError::Invalid {
            key: self.name,
            reason: "is declared with values of different kinds (a bug)".into(),
        }
    }
}

impl Value {
    /// As the config file and the reference write it: `3s`, `250ms`, `7d`, `64KiB`, `10000`.
    pub fn text(&self) -> String {
        match *self {
            Value::Duration(d) => duration_text(d),
            Value::Size(bytes) => size_text(bytes),
            Value::Count(n) => n.to_string(),
        }
    }
}

fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

fn size_text(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (unit, per) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes.is_multiple_of(per) {
            return format!("{}{unit}", bytes / per);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_within_its_range_and_every_key_is_of_one_kind() {
        for key in ALL {
            match key.default {
                Value::Duration(_) => {
                    key.duration(None).unwrap();
                }
                _ => {
                    key.number(None).unwrap();
                }
            }
        }
    }

    #[test]
    fn every_word_default_reads_as_its_key_takes_it() {
        assert!(LISTEN.default.parse::<std::net::SocketAddr>().is_ok());
        for flag in [
            CACHE_GZIP,
            LOG_ACCESS,
            WEBHOOKS_ALLOW_PRIVATE,
            WEBHOOKS_FINISHED_ONLY,
        ] {
            assert!(flag.default.parse::<bool>().is_ok(), "{}", flag.name);
        }
    }

    #[test]
    fn values_read_as_the_file_writes_them() {
        assert_eq!(duration_text(Duration::from_millis(250)), "250ms");
        assert_eq!(duration_text(Duration::from_secs(300)), "5m");
        assert_eq!(duration_text(Duration::from_secs(7 * DAY)), "7d");
        assert_eq!(size_text(64 * KIB), "64KiB");
        assert_eq!(size_text(4 * GIB - 1), "4294967295");
    }

    #[test]
    fn out_of_range_is_refused_naming_the_key() {
        let err = CACHE_IN_PROGRESS_TTL
            .duration(Some(Duration::from_secs(1000 * 365 * DAY)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cache.in_progress_ttl") && err.contains("1ms to 1d"),
            "{err}"
        );
        assert!(UPSTREAM_MAX_IN_FLIGHT.count(Some(usize::MAX)).is_err());
    }
}
