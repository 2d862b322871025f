//! What keeps the upstream's load bounded and polite, whatever clients do: ceilings on calls in flight
//! and per second (overall and per credential), a backoff per credential after a `429`, and a circuit
//! breaker that fails fast while the upstream refuses connections.
//!
//! Every upstream call is admitted here first and reports back here after. A call over a ceiling waits
//! at most `upstream.queue_timeout` and is then refused, so nothing ever queues without bound.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UpstreamConfig;
use crate::credential::CredentialFingerprint;

/// Credentials tracked before idle ones are swept from the per-credential tables.
const SWEEP_AT: usize = 4096;

/// Why a call was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The upstream answered `429` for this credential; calls resume after the delay.
    #[error("upstream rate limit for this credential: retry in {}s", seconds(*.0))]
    Backoff(Duration),
    /// The upstream has been refusing connections; it is probed again after the delay.
    #[error("upstream unreachable (circuit open): retry in {}s", seconds(*.0))]
    CircuitOpen(Duration),
    /// A ceiling on upstream calls was reached and did not free up in time.
    #[error("upstream call ceiling reached: retry in {}s", seconds(*.0))]
    Overloaded(Duration),
}

impl Refusal {
    pub fn retry_after(&self) -> Duration {
        match *self {
            Refusal::Backoff(d) | Refusal::CircuitOpen(d) | Refusal::Overloaded(d) => d,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Backoff(_) => "backoff",
            Refusal::CircuitOpen(_) => "circuit_open",
            Refusal::Overloaded(_) => "overloaded",
        }
    }
}

/// Whole seconds, rounded up, at least 1: the `Retry-After` value for a delay.
pub fn seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0).max(u64::from(delay.is_zero()))
}

/// How an admitted call ended, as far as protection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// The upstream answered with this status.
    Answered(u16),
    /// No connection could be made (refused, connect timeout, TLS certificate refused): counts toward
    /// opening the breaker, the one thing it exists for.
    Unreachable,
    /// A connection was made but no complete answer came: a timeout, or the connection closed or
    /// broke mid-call. Not counted while the circuit is closed: one path of the upstream that hangs
    /// up (an early `413` to a large upload, say) is no outage, and a client could trigger it at will.
    /// A probe that ends this way reopens the circuit.
    NoAnswer,
    /// The client's own request body failed: says nothing about the upstream, so it never counts
    /// toward opening the breaker, and a probe that ends this way is handed to the next call.
    ClientFault,
    /// Anything else (an answer too large to cache): neither success nor a connection failure.
    Other,
}

/// Which budget of upstream slots a call draws on. Passthrough calls stream a client's body and may be
/// held by a client that sends slowly, so they have a budget of their own below the global ceiling:
/// however passthrough traffic behaves, task fetches and batches (what the gateway is for) keep
/// `max_in_flight - max_in_flight_passthrough` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Fetches, batches, watch polls: answers the cache needs.
    Cached,
    /// Everything forwarded untouched.
    Passthrough,
}

/// Permission to make one upstream call; frees its slots when dropped.
pub struct Admitted {
    _lane: Option<OwnedSemaphorePermit>,
    _global: OwnedSemaphorePermit,
    _credential: OwnedSemaphorePermit,
    /// This call is the breaker's probe: its end decides whether the circuit closes.
    probe: Option<Arc<Breaker>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // A probe that never reported (its caller went away) must not leave the breaker waiting for ever.
        if let Some(breaker) = self.probe.take() {
            breaker.probe_abandoned();
        }
    }
}

/// GCRA: a token bucket kept as one "theoretical arrival time".
#[derive(Debug, Clone, Copy)]
struct RateCell {
    tat: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    interval: Duration,
    /// How far ahead of schedule a burst may run.
    tolerance: Duration,
}

impl Rate {
    fn per_second(rps: u32) -> Option<Self> {
        (rps > 0).then(|| {
            let interval = Duration::from_secs(1) / rps;
            Rate {
                interval,
                tolerance: interval * rps.saturating_sub(1),
            }
        })
    }

    /// Reserves the next slot: `Ok(wait)` when it comes within `max_wait`, else `Err(retry_after)`.
    fn reserve(
        &self,
        cell: &mut RateCell,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let tat = cell.tat.max(now);
        let wait = tat
            .saturating_duration_since(now)
            .saturating_sub(self.tolerance);
        if wait > max_wait {
            return Err(wait);
        }
        cell.tat = tat + self.interval;
        Ok(wait)
    }
}

#[derive(Debug)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everything else fails fast until it reports.
    HalfOpen,
}

/// The circuit breaker: opens after `threshold` consecutive connection failures, for `cooldown`.
pub struct Breaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    fn state(&self) -> MutexGuard<'_, BreakerState> {
        self.state.lock()
    }

    /// `Ok(true)` admits the probe of a half-open circuit; `Ok(false)` a normal call.
    fn admit(&self, now: Instant) -> Result<bool, Refusal> {
        let mut state = self.state();
        match *state {
            BreakerState::Closed { .. } => Ok(false),
            BreakerState::Open { until } if now < until => Err(Refusal::CircuitOpen(until - now)),
            BreakerState::Open { .. } => {
                *state = BreakerState::HalfOpen;
                Ok(true)
            }
            BreakerState::HalfOpen => Err(Refusal::CircuitOpen(Duration::from_secs(1))),
        }
    }

    fn record(&self, end: CallEnd, probe: bool, now: Instant) {
        let mut state = self.state();
        match (end, &mut *state) {
            (CallEnd::Unreachable, BreakerState::Closed { failures }) => {
                *failures += 1;
                if *failures >= self.threshold {
                    tracing::warn!(cooldown = ?self.cooldown, "upstream unreachable: circuit open");
                    *state = BreakerState::Open {
                        until: now + self.cooldown,
                    };
                }
            }
            (CallEnd::Unreachable, _) if probe => {
                *state = BreakerState::Open {
                    until: now + self.cooldown,
                };
            }
            (CallEnd::NoAnswer, _) if probe => {
                *state = BreakerState::Open {
                    until: now + self.cooldown,
                };
            }
            (CallEnd::Answered(_), BreakerState::Closed { failures }) => *failures = 0,
            (CallEnd::Answered(_), _) if probe => {
                tracing::info!("upstream answered the probe: circuit closed");
                *state = BreakerState::Closed { failures: 0 };
            }
            // A probe that says nothing about the upstream: the next call probes instead. Left
            // half-open, the circuit would refuse every call for ever.
            (CallEnd::ClientFault | CallEnd::Other, BreakerState::HalfOpen) if probe => {
                *state = BreakerState::Open { until: now };
            }
            _ => {}
        }
    }

    /// What an active health check found: an answer closes the circuit (the member is back
    /// without a client's request as the trial); no answer counts as a connection failure, and
    /// keeps an open circuit open for another cooldown.
    pub(super) fn probed(&self, up: bool, now: Instant) {
        let mut state = self.state();
        match (&mut *state, up) {
            (BreakerState::Closed { failures }, true) => *failures = 0,
            (_, true) => {
                tracing::info!("upstream answered the health check: circuit closed");
                *state = BreakerState::Closed { failures: 0 };
            }
            (BreakerState::Closed { failures }, false) => {
                *failures += 1;
                if *failures >= self.threshold {
                    tracing::warn!(cooldown = ?self.cooldown, "upstream failed its health checks: circuit open");
                    *state = BreakerState::Open {
                        until: now + self.cooldown,
                    };
                }
            }
            // A half-open circuit's trial call is out: it reports for itself.
            (BreakerState::HalfOpen, false) => {}
            (BreakerState::Open { until }, false) => *until = (*until).max(now + self.cooldown),
        }
    }

    fn probe_abandoned(&self) {
        let mut state = self.state();
        if matches!(*state, BreakerState::HalfOpen) {
            *state = BreakerState::Open {
                until: Instant::now(),
            };
        }
    }

    /// Whether calls are being refused right now.
    pub fn is_open(&self) -> bool {
        match *self.state() {
            BreakerState::Open { until } => Instant::now() < until,
            _ => false,
        }
    }

    /// Closed: the last calls (or health checks) got answers. An open circuit whose cooldown has
    /// passed is not closed: it lets one trial through, but nothing has answered yet.
    pub fn is_closed(&self) -> bool {
        matches!(*self.state(), BreakerState::Closed { .. })
    }

    /// `closed`, `open`, or `half-open` (cooled down or trying, and not yet answered).
    pub fn label(&self) -> &'static str {
        match *self.state() {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { until } if Instant::now() < until => "open",
            _ => "half-open",
        }
    }
}

/// Upstream protection, shared by every call.
pub struct Protection {
    in_flight: Arc<Semaphore>,
    /// Passthrough's own share of `in_flight` (see [`Lane`]).
    passthrough_in_flight: Arc<Semaphore>,
    per_credential_in_flight: usize,
    credential_slots: Mutex<HashMap<CredentialFingerprint, Arc<Semaphore>>>,
    rate: Option<Rate>,
    rate_cell: Mutex<RateCell>,
    per_credential_rate: Option<Rate>,
    credential_rates: Mutex<HashMap<CredentialFingerprint, RateCell>>,
    queue_timeout: Duration,
    /// Per credential: no calls before this instant (set by a `429`).
    backoff: Mutex<HashMap<CredentialFingerprint, Instant>>,
    retry_after_default: Duration,
    retry_after_max: Duration,
    breaker: Arc<Breaker>,
}

impl Protection {
    pub fn new(config: &UpstreamConfig) -> Self {
        let now = Instant::now();
        Protection {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            passthrough_in_flight: Arc::new(Semaphore::new(config.max_in_flight_passthrough)),
            per_credential_in_flight: config.max_in_flight_per_credential,
            credential_slots: Mutex::default(),
            rate: Rate::per_second(config.max_rps),
            rate_cell: Mutex::new(RateCell { tat: now }),
            per_credential_rate: Rate::per_second(config.max_rps_per_credential),
            credential_rates: Mutex::default(),
            queue_timeout: config.queue_timeout,
            backoff: Mutex::default(),
            retry_after_default: config.retry_after_default,
            retry_after_max: config.retry_after_max,
            breaker: Arc::new(Breaker {
                state: Mutex::new(BreakerState::Closed { failures: 0 }),
                threshold: config.breaker_failures,
                cooldown: config.breaker_cooldown,
            }),
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Admits one call for `credential` on `lane`, waiting at most `upstream.queue_timeout` for a
    /// ceiling.
    pub async fn admit(
        &self,
        credential: &CredentialFingerprint,
        lane: Lane,
    ) -> Result<Admitted, Refusal> {
        let now = Instant::now();
        let probe = self.breaker.admit(now)?;
        // From here on a refusal must give the probe back, which dropping `probe_guard` does.
        let probe_guard = ProbeGuard(probe.then(|| Arc::clone(&self.breaker)));
        if let Some(until) = self.backoff.lock().get(credential).copied()
            && now < until
        {
            return Err(Refusal::Backoff(until - now));
        }
        let deadline = now + self.queue_timeout;
        let mut wait = Duration::ZERO;
        if let Some(rate) = self.rate {
            wait = wait.max(
                rate.reserve(&mut self.rate_cell.lock(), now, self.queue_timeout)
                    .map_err(Refusal::Overloaded)?,
            );
        }
        if let Some(rate) = self.per_credential_rate {
            let mut cells = self.credential_rates.lock();
            if cells.len() >= SWEEP_AT {
                cells.retain(|_, cell| cell.tat > now);
            }
            let cell = cells.entry(*credential).or_insert(RateCell { tat: now });
            wait = wait.max(
                rate.reserve(cell, now, self.queue_timeout)
                    .map_err(Refusal::Overloaded)?,
            );
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let credential_slots = self.credential_semaphore(credential);
        let overloaded = Refusal::Overloaded(Duration::from_secs(1));
        let lane = match lane {
            Lane::Cached => None,
            Lane::Passthrough => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let slots = Arc::clone(&self.passthrough_in_flight).acquire_owned();
                Some(
                    tokio::time::timeout(remaining, slots)
                        .await
                        .map_err(|_| overloaded)?
                        .map_err(|_| overloaded)?,
                )
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let global = tokio::time::timeout(remaining, Arc::clone(&self.in_flight).acquire_owned())
            .await
            .map_err(|_| overloaded)?
            .map_err(|_| overloaded)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let credential = tokio::time::timeout(remaining, credential_slots.acquire_owned())
            .await
            .map_err(|_| overloaded)?
            .map_err(|_| overloaded)?;
        Ok(Admitted {
            _lane: lane,
            _global: global,
            _credential: credential,
            probe: probe_guard.into_inner(),
        })
    }

    fn credential_semaphore(&self, credential: &CredentialFingerprint) -> Arc<Semaphore> {
        let mut slots = self.credential_slots.lock();
        if slots.len() >= SWEEP_AT {
            // Only idle credentials (every permit free, nobody else holding the semaphore) are swept.
            let full = self.per_credential_in_flight;
            slots.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < full);
        }
        Arc::clone(
            slots
                .entry(*credential)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_credential_in_flight))),
        )
    }

    /// Reports how an admitted call ended; `headers` are the answer's, when there was one.
    pub fn record(
        &self,
        mut admitted: Admitted,
        credential: &CredentialFingerprint,
        end: CallEnd,
        headers: Option<&HeaderMap>,
    ) {
        let now = Instant::now();
        let probe = admitted.probe.take().is_some();
        self.breaker.record(end, probe, now);
        if end == CallEnd::Answered(429) {
            let delay = headers
                .and_then(|h| retry_after(h, SystemTime::now()))
                .unwrap_or(self.retry_after_default)
                .clamp(Duration::from_millis(100), self.retry_after_max);
            tracing::warn!(credential = %credential.short(), ?delay, "upstream answered 429: backing off");
            let mut backoff = self.backoff.lock();
            if backoff.len() >= SWEEP_AT {
                backoff.retain(|_, until| *until > now);
            }
            backoff.insert(*credential, now + delay);
        }
    }
}

/// Hands a half-open circuit's probe back if admission fails after the breaker let it through.
struct ProbeGuard(Option<Arc<Breaker>>);

impl ProbeGuard {
    fn into_inner(mut self) -> Option<Arc<Breaker>> {
        self.0.take()
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.take() {
            breaker.probe_abandoned();
        }
    }
}

/// The delay a `Retry-After` header asks for: delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::HeaderValue;

    fn protection(extra: &str) -> Protection {
        let config = Config::from_toml(
            &format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n{extra}"),
            &Default::default(),
        )
        .unwrap();
        Protection::new(&config.upstream)
    }

    fn fp(n: u8) -> CredentialFingerprint {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("k{n}")).unwrap(),
        );
        crate::credential::Fingerprinter::with_key([0; 32]).fingerprint(&h)
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            retry_after(&h, SystemTime::now()),
            Some(Duration::from_secs(7))
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_millis(1500)), 2);
        assert_eq!(seconds(Duration::from_secs(3)), 3);
        assert_eq!(seconds(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn a_429_backs_off_only_that_credential_and_caps_the_delay() {
        let p = protection("retry_after_max = \"10s\"\n");
        let admitted = p.admit(&fp(1), Lane::Cached).await.unwrap();
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        p.record(admitted, &fp(1), CallEnd::Answered(429), Some(&h));
        match p.admit(&fp(1), Lane::Cached).await {
            Err(Refusal::Backoff(d)) => {
                assert!(d <= Duration::from_secs(10) && d > Duration::from_secs(9))
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("admitted during backoff"),
        }
        assert!(
            p.admit(&fp(2), Lane::Cached).await.is_ok(),
            "other credentials are not affected"
        );
    }

    #[tokio::test]
    async fn the_breaker_opens_after_repeated_failures_and_closes_on_a_good_probe() {
        let p = protection("breaker_failures = 3\nbreaker_cooldown = \"50ms\"\n");
        for _ in 0..3 {
            let a = p.admit(&fp(1), Lane::Cached).await.unwrap();
            p.record(a, &fp(1), CallEnd::Unreachable, None);
        }
        assert!(matches!(
            p.admit(&fp(1), Lane::Cached).await,
            Err(Refusal::CircuitOpen(_))
        ));
        assert!(p.breaker().is_open());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let probe = p.admit(&fp(1), Lane::Cached).await.unwrap();
        assert!(
            matches!(
                p.admit(&fp(2), Lane::Cached).await,
                Err(Refusal::CircuitOpen(_))
            ),
            "one probe at a time"
        );
        p.record(probe, &fp(1), CallEnd::Answered(200), None);
        assert!(p.admit(&fp(2), Lane::Cached).await.is_ok());
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_and_an_abandoned_one_frees_the_next() {
        let p = protection("breaker_failures = 1\nbreaker_cooldown = \"30ms\"\n");
        let a = p.admit(&fp(1), Lane::Cached).await.unwrap();
        p.record(a, &fp(1), CallEnd::Unreachable, None);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let probe = p.admit(&fp(1), Lane::Cached).await.unwrap();
        p.record(probe, &fp(1), CallEnd::Unreachable, None);
        assert!(matches!(
            p.admit(&fp(1), Lane::Cached).await,
            Err(Refusal::CircuitOpen(_))
        ));
        tokio::time::sleep(Duration::from_millis(40)).await;
        drop(p.admit(&fp(1), Lane::Cached).await.unwrap()); // the probe's caller went away
        assert!(
            p.admit(&fp(1), Lane::Cached).await.is_ok(),
            "the next call probes"
        );
    }

    #[tokio::test]
    async fn in_flight_ceilings_wait_briefly_then_refuse() {
        let p = protection("max_in_flight_per_credential = 2\nqueue_timeout = \"50ms\"\n");
        let a = p.admit(&fp(1), Lane::Cached).await.unwrap();
        let _b = p.admit(&fp(1), Lane::Cached).await.unwrap();
        assert!(matches!(
            p.admit(&fp(1), Lane::Cached).await,
            Err(Refusal::Overloaded(_))
        ));
        assert!(
            p.admit(&fp(2), Lane::Cached).await.is_ok(),
            "another credential has its own slots"
        );
        drop(a);
        assert!(p.admit(&fp(1), Lane::Cached).await.is_ok());
    }

    #[tokio::test]
    async fn the_rate_ceiling_spaces_calls_and_refuses_beyond_the_wait() {
        let p = protection("max_rps = 10\nqueue_timeout = \"150ms\"\n");
        let key = fp(1);
        let results =
            futures_util::future::join_all((0..20).map(|_| p.admit(&key, Lane::Cached))).await;
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(Refusal::Overloaded(_))))
            .count();
        // A burst of 10, then one more per 100 ms that fits in the 150 ms wait; the rest refused.
        assert_eq!(admitted, 11);
        assert_eq!(refused, 9);
    }

    #[tokio::test]
    async fn client_faults_never_open_the_breaker() {
        let p = protection("breaker_failures = 2\n");
        for _ in 0..50 {
            let a = p.admit(&fp(1), Lane::Passthrough).await.unwrap();
            p.record(a, &fp(1), CallEnd::ClientFault, None);
        }
        assert!(!p.breaker().is_open());
        assert!(p.admit(&fp(2), Lane::Cached).await.is_ok());
    }

    #[tokio::test]
    async fn a_probe_that_times_out_reopens_and_one_the_client_broke_is_handed_on() {
        let p = protection("breaker_failures = 1\nbreaker_cooldown = \"30ms\"\n");
        let a = p.admit(&fp(1), Lane::Cached).await.unwrap();
        p.record(a, &fp(1), CallEnd::Unreachable, None);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let probe = p.admit(&fp(1), Lane::Cached).await.unwrap();
        p.record(probe, &fp(1), CallEnd::NoAnswer, None);
        assert!(p.breaker().is_open(), "no answer to the probe: open again");
        tokio::time::sleep(Duration::from_millis(40)).await;
        let probe = p.admit(&fp(1), Lane::Passthrough).await.unwrap();
        p.record(probe, &fp(1), CallEnd::ClientFault, None);
        let next = p.admit(&fp(2), Lane::Cached).await;
        assert!(
            next.is_ok(),
            "the next call probes, the circuit is not stuck half-open"
        );
        p.record(next.unwrap(), &fp(2), CallEnd::Answered(200), None);
        assert!(p.admit(&fp(3), Lane::Cached).await.is_ok(), "closed");
    }

    #[tokio::test]
    async fn passthrough_cannot_take_the_slots_cached_routes_need() {
        let p = protection(
            "max_in_flight = 4\nmax_in_flight_passthrough = 2\nqueue_timeout = \"30ms\"\n",
        );
        // Each under its own invented credential, as an attacker would.
        let _held: Vec<_> = [fp(1), fp(2)]
            .iter()
            .map(|c| p.admit(c, Lane::Passthrough))
            .collect::<futures_util::future::JoinAll<_>>()
            .await;
        assert!(matches!(
            p.admit(&fp(3), Lane::Passthrough).await,
            Err(Refusal::Overloaded(_))
        ));
        let a = p.admit(&fp(4), Lane::Cached).await;
        let b = p.admit(&fp(5), Lane::Cached).await;
        assert!(a.is_ok() && b.is_ok(), "cached routes keep their share");
    }
}
