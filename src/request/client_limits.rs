//! Per-address limits: a request rate and a number of open connections per client address, so one
//! misbehaving host cannot take every slot (nginx's `limit_req` and `limit_conn`, keyed by the real
//! client address).
//!
//! The rate is GCRA (the generic cell rate algorithm): each address has a theoretical arrival time
//! that every admitted request pushes on by one interval (`1 / per_client_rps`); a request that
//! would land more than `per_client_burst - 1` intervals ahead of now is refused with `429` and a
//! `Retry-After` of when it would have been admitted. One atomic per address, no lock on the path.
//! The address is the client after `server.trusted_proxies` (or the PROXY protocol's source).
//!
//! Connections are counted per address at the connection's start (its peer, or the PROXY
//! protocol's source); a trusted proxy's own address is never limited, since it carries many
//! clients. Both tables are bounded: idle addresses are forgotten after a minute, and at most
//! [`MAX_ADDRESSES`] are tracked (the least recently seen go first).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Addresses tracked at once, each table.
pub const MAX_ADDRESSES: u64 = 200_000;

/// The limits as configured; zero turns one off. Reloadable: the tables stay, the limits change.
#[derive(Debug)]
pub struct ClientLimits {
    rps: AtomicU32,
    burst: AtomicU32,
    max_connections: AtomicU32,
    epoch: Instant,
    rates: moka::sync::Cache<IpAddr, Arc<AtomicU64>>,
    connections: Mutex<std::collections::HashMap<IpAddr, u32>>,
}

/// Whether a request may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// Refused: retry after this many seconds.
    Limited(u64),
}

impl ClientLimits {
    pub fn new(rps: u32, burst: u32, max_connections: u32) -> Arc<Self> {
        let limits = ClientLimits {
            rps: AtomicU32::new(0),
            burst: AtomicU32::new(0),
            max_connections: AtomicU32::new(0),
            epoch: Instant::now(),
            rates: moka::sync::Cache::builder()
                .max_capacity(MAX_ADDRESSES)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            connections: Mutex::new(std::collections::HashMap::new()),
        };
        limits.set(rps, burst, max_connections);
        Arc::new(limits)
    }

    /// A reload's limits.
    pub fn set(&self, rps: u32, burst: u32, max_connections: u32) {
        self.rps.store(rps, Ordering::Relaxed);
        self.burst.store(burst.max(1), Ordering::Relaxed);
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
    }

    /// Whether the rate limit is on (what the hit path looks at first).
    #[inline]
    pub fn rate_limited(&self) -> bool {
        self.rps.load(Ordering::Relaxed) != 0
    }

    /// Admits one request from `client`, or says when it may come back.
    pub fn admit(&self, client: IpAddr) -> Verdict {
        let rps = self.rps.load(Ordering::Relaxed);
        if rps == 0 {
            return Verdict::Admitted;
        }
        let interval = 1_000_000_000 / u64::from(rps);
        // A burst of n is n requests at once: the n-th lands (n - 1) intervals ahead.
        let tolerance = interval * u64::from(self.burst.load(Ordering::Relaxed) - 1);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let tat = self
            .rates
            .get_with(client, || Arc::new(AtomicU64::new(now)));
        let mut seen = tat.load(Ordering::Relaxed);
        loop {
            let from = seen.max(now);
            if from - now > tolerance {
                // Admitted again once the arrival time is back within the burst.
                let wait = from - now - tolerance;
                return Verdict::Limited(wait.div_ceil(1_000_000_000).max(1));
            }
            match tat.compare_exchange_weak(
                seen,
                from + interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Verdict::Admitted,
                Err(current) => seen = current,
            }
        }
    }

    /// Opens a connection from `client`; `None` when it has its limit open already. The guard
    /// closes it.
    pub fn connect(self: &Arc<Self>, client: IpAddr) -> Option<ConnectionSlot> {
        let max = self.max_connections.load(Ordering::Relaxed);
        if max == 0 {
            return Some(ConnectionSlot { held: None });
        }
        let mut open = self.connections.lock();
        if open.len() as u64 >= MAX_ADDRESSES && !open.contains_key(&client) {
            // Full of addresses: limit nobody rather than remember without bound.
            return Some(ConnectionSlot { held: None });
        }
        let count = open.entry(client).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            held: Some((Arc::clone(self), client)),
        })
    }
}

/// One open connection, counted against its address until dropped.
pub struct ConnectionSlot {
    held: Option<(Arc<ClientLimits>, IpAddr)>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some((limits, client)) = self.held.take() {
            let mut open = limits.connections.lock();
            if let Some(count) = open.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&client);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_holds_per_address() {
        let limits = ClientLimits::new(1, 5, 0);
        for _ in 0..5 {
            assert_eq!(limits.admit(ip(1)), Verdict::Admitted);
        }
        let Verdict::Limited(after) = limits.admit(ip(1)) else {
            panic!("the sixth request within a second is over the burst");
        };
        assert_eq!(after, 1);
        // Another address has its own allowance.
        assert_eq!(limits.admit(ip(2)), Verdict::Admitted);
    }

    #[test]
    fn no_rate_admits_everything_and_a_reload_turns_it_on() {
        let limits = ClientLimits::new(0, 1, 0);
        assert!((0..10_000).all(|_| limits.admit(ip(1)) == Verdict::Admitted));
        limits.set(10, 1, 0);
        assert_eq!(limits.admit(ip(1)), Verdict::Admitted);
        assert!(matches!(limits.admit(ip(1)), Verdict::Limited(1)));
    }

    #[test]
    fn connections_are_counted_per_address_and_freed_when_dropped() {
        let limits = ClientLimits::new(0, 1, 2);
        let a = limits.connect(ip(1)).unwrap();
        let _b = limits.connect(ip(1)).unwrap();
        assert!(limits.connect(ip(1)).is_none());
        assert!(limits.connect(ip(2)).is_some());
        drop(a);
        assert!(limits.connect(ip(1)).is_some());
    }
}
