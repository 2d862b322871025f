//! When a failed delivery is tried again: exponential backoff from a couple of seconds, capped, with
//! jitter so that a receiver coming back up is not hit by every pending event in the same second, and
//! given up once the event is older than its allowed age.

use std::time::Duration;

/// The retry schedule of one kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The wait before the first retry (before jitter).
    pub first: Duration,
    /// The longest wait between two attempts.
    pub cap: Duration,
    /// How long after the event happened it is still worth delivering.
    pub max_age: Duration,
}

impl Default for Schedule {
    /// The defaults of `webhooks.first_retry`, `max_retry_interval` and `max_age`.
    fn default() -> Self {
        use crate::config::keys;
        Schedule {
            first: keys::WEBHOOKS_FIRST_RETRY.default_duration(),
            cap: keys::WEBHOOKS_MAX_RETRY_INTERVAL.default_duration(),
            max_age: keys::WEBHOOKS_MAX_AGE.default_duration(),
        }
    }
}

impl Schedule {
    /// The wait after failed attempt number `attempt` (1 for the first), given `unit` in `[0, 1)` from
    /// a random source: between half and all of `first * 2^(attempt-1)`, at most `cap`. `None` when an
    /// event `age` old would be past `max_age` by then: give it up.
    pub fn next(&self, attempt: u32, age: Duration, unit: f64) -> Option<Duration> {
        let exponent = attempt.saturating_sub(1).min(30);
        let full = self.first.saturating_mul(1u32 << exponent).min(self.cap);
        let wait = full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        (age.saturating_add(wait) <= self.max_age).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_seconds_to_the_cap_with_jitter() {
        let schedule = Schedule::default();
        let at = |attempt, unit| schedule.next(attempt, Duration::ZERO, unit).unwrap();
        assert_eq!(
            at(1, 1.0),
            Duration::from_secs(2),
            "the first retry within seconds"
        );
        assert_eq!(at(1, 0.0), Duration::from_secs(1));
        assert_eq!(at(2, 1.0), Duration::from_secs(4));
        assert_eq!(at(5, 1.0), Duration::from_secs(32));
        assert_eq!(at(20, 1.0), Duration::from_secs(3600), "capped");
        assert_eq!(at(u32::MAX, 1.0), Duration::from_secs(3600));
        assert!(at(3, 0.3) > at(3, 0.2), "jitter spreads retries");
    }

    #[test]
    fn an_event_is_given_up_past_its_age() {
        let schedule = Schedule {
            max_age: Duration::from_secs(60),
            ..Schedule::default()
        };
        assert!(schedule.next(1, Duration::from_secs(50), 1.0).is_some());
        assert_eq!(schedule.next(1, Duration::from_secs(59), 1.0), None);
        assert_eq!(schedule.next(8, Duration::ZERO, 1.0), None, "256 s > 60 s");
    }
}
