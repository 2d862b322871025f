//! The RFC 9211 `Cache-Status` header the gateway adds to cached routes, and the outcome it names, which
//! also labels logs and metrics.

use std::sync::LazyLock;
use std::time::Duration;

use http::HeaderValue;

use crate::metrics::Outcome;

/// The RFC 9211 header every answer from a cached route carries.
pub static CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// How a cached-route request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache. `ttl` is the freshness left, `None` for a terminal task.
    Hit { ttl: Option<Duration> },
    /// Missing here, served from the shared tier (another replica's upstream call): RFC 9211 `hit`
    /// with `detail=shared`.
    Shared,
    /// This request's upstream call produced the answer; `stored` when it went into the cache.
    Miss {
        stored: bool,
        fwd_status: Option<u16>,
    },
    /// Another request's upstream call produced the answer.
    Collapsed,
    /// A batch served partly from the cache and partly from the upstream.
    Partial,
    /// A stale answer served because refreshing it failed with `fwd_status` (RFC 9211 `fwd=stale`).
    Stale { fwd_status: u16 },
}

impl CacheStatus {
    /// The metric and log label this status stands for: one value yields both the header and the
    /// label, so the two never disagree.
    pub fn outcome(&self) -> Outcome {
        match self {
            CacheStatus::Hit { .. } => Outcome::Hit,
            CacheStatus::Shared => Outcome::Shared,
            CacheStatus::Miss { .. } => Outcome::Miss,
            CacheStatus::Collapsed => Outcome::Collapsed,
            CacheStatus::Partial => Outcome::Partial,
            CacheStatus::Stale { .. } => Outcome::Stale,
        }
    }

    pub fn header_value(&self) -> HeaderValue {
        match *self {
            CacheStatus::Hit { ttl: None } => HeaderValue::from_static("mjgate; hit"),
            CacheStatus::Hit { ttl: Some(ttl) } => match HIT_TTL.get(ttl.as_secs() as usize) {
                Some(value) => value.clone(),
                None => header(format!("mjgate; hit; ttl={}", ttl.as_secs())),
            },
            CacheStatus::Shared => HeaderValue::from_static("mjgate; hit; detail=shared"),
            CacheStatus::Miss { stored: true, .. } => {
                HeaderValue::from_static("mjgate; fwd=uri-miss; stored")
            }
            CacheStatus::Miss {
                stored: false,
                fwd_status: Some(status),
            } => header(format!("mjgate; fwd=uri-miss; fwd-status={status}")),
            CacheStatus::Miss {
                stored: false,
                fwd_status: None,
            } => HeaderValue::from_static("mjgate; fwd=uri-miss"),
            CacheStatus::Collapsed => HeaderValue::from_static("mjgate; fwd=uri-miss; collapsed"),
            CacheStatus::Partial => HeaderValue::from_static("mjgate; fwd=partial; stored"),
            CacheStatus::Stale { fwd_status } => {
                header(format!("mjgate; fwd=stale; fwd-status={fwd_status}"))
            }
        }
    }
}

/// Values built once, so the hit path clones a shared buffer instead of formatting and allocating.
const PREBUILT: usize = 3600;
static HIT_TTL: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    (0..PREBUILT)
        .map(|ttl| header(format!("mjgate; hit; ttl={ttl}")))
        .collect()
});
static AGES: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| (0..PREBUILT as u64).map(HeaderValue::from).collect());

/// The `Age` header for `seconds`.
pub fn age_header(seconds: u64) -> HeaderValue {
    match AGES.get(seconds as usize) {
        Some(value) => value.clone(),
        None => HeaderValue::from(seconds),
    }
}

fn header(text: String) -> HeaderValue {
    // Built from digits and fixed ASCII only, so always a valid header value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("mjgate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_follow_rfc_9211() {
        let v = |s: CacheStatus| s.header_value().to_str().unwrap().to_owned();
        assert_eq!(v(CacheStatus::Hit { ttl: None }), "mjgate; hit");
        assert_eq!(
            v(CacheStatus::Hit {
                ttl: Some(Duration::from_millis(2900))
            }),
            "mjgate; hit; ttl=2"
        );
        assert_eq!(
            v(CacheStatus::Miss {
                stored: true,
                fwd_status: Some(200)
            }),
            "mjgate; fwd=uri-miss; stored"
        );
        assert_eq!(
            v(CacheStatus::Miss {
                stored: false,
                fwd_status: Some(404)
            }),
            "mjgate; fwd=uri-miss; fwd-status=404"
        );
        assert_eq!(v(CacheStatus::Collapsed), "mjgate; fwd=uri-miss; collapsed");
        assert_eq!(v(CacheStatus::Partial), "mjgate; fwd=partial; stored");
        assert_eq!(
            v(CacheStatus::Hit {
                ttl: Some(Duration::from_secs(7200))
            }),
            "mjgate; hit; ttl=7200",
            "beyond the prebuilt values"
        );
        assert_eq!(v(CacheStatus::Shared), "mjgate; hit; detail=shared");
        assert_eq!(age_header(0), "0");
        assert_eq!(age_header(3599), "3599");
        assert_eq!(age_header(86_400), "86400");
        assert_eq!(
            v(CacheStatus::Stale { fwd_status: 503 }),
            "mjgate; fwd=stale; fwd-status=503"
        );
    }
}
