//! Request collapsing: concurrent misses for one key make one upstream call, and every waiter gets its result.
//!
//! The first request for a key becomes the leader and receives a [`Flight`]; later ones receive a
//! [`Landing`] on that flight. The flight is meant to be moved into a task of its own, so it runs to the
//! end whatever happens to the client that started it. Its outcomes, named as Pingora's cache lock names
//! them:
//! - landed: [`Flight::land`] hands every waiter the value (success or an error result);
//! - dangling: the flight was dropped without landing (its task panicked or was cancelled); waiters get
//!   [`Abandoned::Dangling`] at once instead of hanging, and the key is free for a new leader;
//! - timed out: a waiter waits at most the collapser's bound (longer than any call the leader can
//!   make), then gets [`Abandoned::Timeout`]: no wait is unbounded, whatever the leader does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use tokio::sync::watch;

use crate::cache::CacheKey;

/// The flight a waiter was attached to ended without a result for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Abandoned {
    /// The leader went away without landing (its task panicked or was cancelled).
    #[error("the upstream fetch this request waited on was abandoned")]
    Dangling,
    /// The flight did not land within the wait's bound.
    #[error("the upstream fetch this request waited on took longer than {0:?}")]
    Timeout(std::time::Duration),
}

/// The flights in the air, by key.
pub struct Collapser<T> {
    /// One slot per key with a flight in the air. A slot is removed by its own flight's `Drop`, after the
    /// flight has landed (so a request arriving between the cache write and the removal finds the cache
    /// entry or the landed value, never nothing). The lock is never held across an await.
    inflight: Mutex<HashMap<CacheKey, InFlight<T>>>,
    next_flight: AtomicU64,
    /// The longest anyone waits for a flight to land.
    bound: std::time::Duration,
}

struct InFlight<T> {
    flight: u64,
    landing: watch::Receiver<Option<T>>,
}

/// What joining a key made of the caller.
pub enum Role<T> {
    /// No flight was in the air: the caller must make the call and land the flight.
    Leader(Flight<T>),
    /// A flight was in the air: the caller waits for it.
    Follower(Landing<T>),
}

/// The leader's obligation to produce a value for one key.
pub struct Flight<T> {
    collapser: Arc<Collapser<T>>,
    key: CacheKey,
    id: u64,
    sender: watch::Sender<Option<T>>,
}

/// A waiter's view of a flight, and how long it waits at most.
pub struct Landing<T>(watch::Receiver<Option<T>>, std::time::Duration);

impl<T: Clone> Collapser<T> {
    /// A collapser whose waiters wait at most `bound` for a flight to land.
    pub fn new(bound: std::time::Duration) -> Arc<Self> {
        Arc::new(Collapser {
            inflight: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            bound,
        })
    }

    /// Joins the flight for `key`, starting one if none is in the air.
    pub fn join(self: &Arc<Self>, key: &[u8]) -> Role<T> {
        let mut inflight = self.inflight.lock();
        if let Some(slot) = inflight.get(key) {
            return Role::Follower(Landing(slot.landing.clone(), self.bound));
        }
        let (sender, landing) = watch::channel(None);
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let key = CacheKey::from_bytes(key);
        inflight.insert(
            key.clone(),
            InFlight {
                flight: id,
                landing,
            },
        );
        Role::Leader(Flight {
            collapser: Arc::clone(self),
            key,
            id,
            sender,
        })
    }

    /// Flights in the air now.
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }
}

impl<T> Flight<T> {
    /// A landing on this flight, for the leader's own client.
    pub fn landing(&self) -> Landing<T> {
        Landing(self.sender.subscribe(), self.collapser.bound)
    }

    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Hands `value` to every waiter, then frees the key.
    pub fn land(self, value: T) {
        self.sender.send_replace(Some(value));
    }
}

impl<T> Drop for Flight<T> {
    fn drop(&mut self) {
        let mut inflight = self.collapser.inflight.lock();
        if inflight
            .get(&self.key)
            .is_some_and(|slot| slot.flight == self.id)
        {
            inflight.remove(&self.key);
        }
    }
}

impl<T: Clone> Landing<T> {
    /// Waits for the flight to land, at most the collapser's bound.
    pub async fn wait(mut self) -> Result<T, Abandoned> {
        let bound = self.1;
        match tokio::time::timeout(bound, self.0.wait_for(Option::is_some)).await {
            Ok(Ok(value)) => value.clone().ok_or(Abandoned::Dangling),
            Ok(Err(_)) => Err(Abandoned::Dangling),
            Err(_) => Err(Abandoned::Timeout(bound)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let c = Collapser::<u32>::new(std::time::Duration::from_secs(5));
        let Role::Leader(flight) = c.join(b"k") else {
            panic!("first joiner leads")
        };
        let followers: Vec<_> = (0..10)
            .map(|_| match c.join(b"k") {
                Role::Follower(l) => tokio::spawn(l.wait()),
                Role::Leader(_) => panic!("second joiner must follow"),
            })
            .collect();
        let own = flight.landing();
        flight.land(7);
        assert_eq!(own.wait().await.unwrap(), 7);
        for f in followers {
            assert_eq!(f.await.unwrap().unwrap(), 7);
        }
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_flight_releases_its_waiters_and_its_key() {
        let c = Collapser::<u32>::new(std::time::Duration::from_secs(5));
        let Role::Leader(flight) = c.join(b"k") else {
            panic!()
        };
        let Role::Follower(landing) = c.join(b"k") else {
            panic!()
        };
        drop(flight);
        assert_eq!(landing.wait().await, Err(Abandoned::Dangling));
        assert!(matches!(c.join(b"k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_panicking_leader_task_does_not_strand_waiters() {
        let c = Collapser::<u32>::new(std::time::Duration::from_secs(5));
        let Role::Leader(flight) = c.join(b"k") else {
            panic!()
        };
        let landing = flight.landing();
        let task = tokio::spawn(async move {
            let _flight = flight;
            panic!("leader failed");
        });
        assert!(task.await.is_err());
        assert!(landing.wait().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_of_a_leader_that_never_lands_gives_up_at_its_bound() {
        let c = Collapser::<u32>::new(std::time::Duration::from_secs(5));
        let Role::Leader(_flight) = c.join(b"k") else {
            panic!()
        };
        let Role::Follower(landing) = c.join(b"k") else {
            panic!()
        };
        assert_eq!(
            landing.wait().await,
            Err(Abandoned::Timeout(std::time::Duration::from_secs(5)))
        );
    }

    #[test]
    fn distinct_keys_fly_independently() {
        let c = Collapser::<u32>::new(std::time::Duration::from_secs(5));
        let a = c.join(b"a");
        let b = c.join(b"b");
        assert!(matches!(a, Role::Leader(_)) && matches!(b, Role::Leader(_)));
    }
}
