//! Many upstreams behind one gateway: the members of the pool (`[[upstream.members]]`), which one
//! takes each submit, and which one owns each task.
//!
//! A task exists only on the member that created it, and its id is chosen by that member in the
//! submit's answer, so no hash of a later request can find it: the gateway remembers the owner of
//! every task whose submit it forwarded. A task it never saw (made before it started, or forgotten
//! past [`OWNERS_REMEMBERED`]) is looked for on every member at once by the caller, and the member
//! that knows it is remembered from then on.
//!
//! Each member is a whole [`Upstream`]: its own connection pool, ceilings, 429 backoff and breaker,
//! so one member's trouble slows nothing routed to the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Upstream;
use crate::config::{MemberConfig, Policy, UpstreamConfig};
use crate::family::FamilyId;
use crate::metrics::Metrics;
use crate::tls::TlsError;

/// Task owners remembered, least recently used forgotten first (about 100 bytes each). A forgotten
/// owner costs one concurrent lookup on its task's next fetch, never a wrong answer.
pub const OWNERS_REMEMBERED: u64 = 1_000_000;

/// A member's number in the pool.
pub type MemberId = usize;

/// One upstream instance.
pub struct Member {
    pub name: String,
    pub upstream: Upstream,
    weight: u32,
    max_running: usize,
    /// Its tasks not yet seen finished, with when they were submitted (each forgotten past
    /// `upstream.running_ttl`, so a task nobody polls to the end does not hold its place).
    running: Mutex<HashMap<TaskKey, Instant>>,
}

type TaskKey = (FamilyId, Box<str>);

impl Member {
    /// Its running tasks, those past `ttl` dropped first.
    fn running(&self, ttl: Duration) -> usize {
        let mut running = self.running.lock();
        running.retain(|_, since| since.elapsed() < ttl);
        running.len()
    }

    /// Whether it takes a submit now: under its running limit, its breaker closed.
    fn open_for_submits(&self, running: usize) -> bool {
        (self.max_running == 0 || running < self.max_running)
            && !self.upstream.protection().breaker().is_open()
    }
}

/// Why no member took a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMember {
    /// Every member is at its running-task limit.
    AllBusy,
    /// Every member that is not busy is down (breaker open) or was tried and failed to connect.
    AllDown,
}

/// The members, the submit policy, and the task owners.
pub struct Pool {
    members: Box<[Member]>,
    policy: Policy,
    running_ttl: Duration,
    /// For `round-robin`, and the weighted draw's counter.
    turn: AtomicUsize,
    owners: moka::sync::Cache<TaskKey, MemberId>,
}

impl Pool {
    /// Every member's client; fails only when TLS roots cannot be loaded.
    pub fn new(
        config: &UpstreamConfig,
        max_request_body: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TlsError> {
        let members = config
            .members
            .iter()
            .map(|member: &MemberConfig| {
                let mut own = config.clone();
                own.url = member.url.clone();
                Ok(Member {
                    name: member.name.clone(),
                    upstream: Upstream::new(&own, max_request_body, Arc::clone(&metrics))?,
                    weight: member.weight.max(1),
                    max_running: member.max_running,
                    running: Mutex::default(),
                })
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        Ok(Pool {
            members: members.into_boxed_slice(),
            policy: config.policy,
            running_ttl: config.running_ttl,
            turn: AtomicUsize::new(0),
            owners: moka::sync::Cache::builder()
                .max_capacity(OWNERS_REMEMBERED)
                .build(),
        })
    }

    /// The first member: passthrough requests go to it.
    pub fn default_member(&self) -> &Upstream {
        &self.members[0].upstream
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, id: MemberId) -> &Member {
        &self.members[id]
    }

    /// More than one member: follow-ups need their owner.
    #[inline]
    pub fn is_pool(&self) -> bool {
        self.members.len() > 1
    }

    /// The member that owns `id` of `family`, if known.
    pub fn owner(&self, family: FamilyId, id: &str) -> Option<MemberId> {
        if !self.is_pool() {
            return Some(0);
        }
        self.owners.get(&(family, Box::from(id)))
    }

    /// Remembers that `member` knows task `id` (a lookup found it there).
    pub fn remember(&self, family: FamilyId, id: &str, member: MemberId) {
        if self.is_pool() {
            self.owners.insert((family, Box::from(id)), member);
        }
    }

    /// A submit `member` accepted made task `id`: owned by it, and running there until seen finished.
    pub fn submitted(&self, family: FamilyId, id: &str, member: MemberId) {
        let key: TaskKey = (family, Box::from(id));
        self.members[member]
            .running
            .lock()
            .insert(key.clone(), Instant::now());
        if self.is_pool() {
            self.owners.insert(key, member);
        }
    }

    /// Task `id` was seen finished: its place under its member's running limit is free.
    pub fn finished(&self, family: FamilyId, id: &str) {
        let key: TaskKey = (family, Box::from(id));
        let owner = if self.is_pool() {
            self.owners.get(&key)
        } else {
            Some(0)
        };
        if let Some(owner) = owner {
            self.members[owner].running.lock().remove(&key);
        }
    }

    /// Tasks running on `member` now.
    pub fn running(&self, member: MemberId) -> usize {
        self.members[member].running(self.running_ttl)
    }

    /// Whether any member takes submits now (readiness).
    pub fn takes_submits(&self) -> bool {
        (0..self.members.len()).any(|m| self.members[m].open_for_submits(self.running(m)))
    }

    /// The member to take a submit, by `upstream.policy`, skipping those `tried` already, those at
    /// their running limit, and those whose breaker is open.
    pub fn pick(&self, tried: &[MemberId]) -> Result<MemberId, NoMember> {
        let mut any_free = false;
        let mut open: Vec<(MemberId, usize)> = Vec::with_capacity(self.members.len());
        for (id, member) in self.members.iter().enumerate() {
            let running = member.running(self.running_ttl);
            if member.max_running == 0 || running < member.max_running {
                any_free = true;
            }
            if !tried.contains(&id) && member.open_for_submits(running) {
                open.push((id, running));
            }
        }
        if open.is_empty() {
            return Err(if any_free {
                NoMember::AllDown
            } else {
                NoMember::AllBusy
            });
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let chosen = match self.policy {
            Policy::RoundRobin => {
                // The next member after the last one chosen, among those open.
                let n = self.members.len();
                (0..n)
                    .map(|step| (turn + step) % n)
                    .find(|m| open.iter().any(|(id, _)| id == m))
                    .unwrap_or(open[0].0)
            }
            Policy::LeastBusy => {
                // Fewest running per unit of weight (compared without division), then the heavier.
                open.iter()
                    .copied()
                    .min_by(|&(a, ra), &(b, rb)| {
                        let (wa, wb) = (
                            u64::from(self.members[a].weight),
                            u64::from(self.members[b].weight),
                        );
                        (ra as u64 * wb)
                            .cmp(&(rb as u64 * wa))
                            .then(wb.cmp(&wa))
                            .then(a.cmp(&b))
                    })
                    .map_or(open[0].0, |(id, _)| id)
            }
            Policy::Weighted => {
                let total: u64 = open
                    .iter()
                    .map(|&(id, _)| u64::from(self.members[id].weight))
                    .sum();
                let mut draw = rand::random::<u64>() % total.max(1);
                open.iter()
                    .find(|&&(id, _)| {
                        let weight = u64::from(self.members[id].weight);
                        if draw < weight {
                            true
                        } else {
                            draw -= weight;
                            false
                        }
                    })
                    .map_or(open[0].0, |&(id, _)| id)
            }
        };
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn pool(policy: &str, members: &[(&str, u32, usize)]) -> Pool {
        let mut text = format!("[upstream]\npolicy = \"{policy}\"\n");
        for (i, (name, weight, max_running)) in members.iter().enumerate() {
            text.push_str(&format!(
                "[[upstream.members]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{}\"\n\
                 weight = {weight}\nmax_running = {max_running}\n",
                9 + i
            ));
        }
        let config = Config::from_toml(&text, &Overrides::default()).unwrap();
        let metrics = Arc::new(Metrics::new(1 << 20, &config.families));
        Pool::new(&config.upstream, 1 << 20, metrics).unwrap()
    }

    const F: FamilyId = FamilyId(0);

    #[test]
    fn least_busy_fills_the_emptiest_member_and_skips_a_full_one() {
        let pool = pool("least-busy", &[("a", 1, 2), ("b", 1, 2), ("c", 1, 2)]);
        let mut counts = [0; 3];
        for n in 0..6 {
            let member = pool.pick(&[]).unwrap();
            counts[member] += 1;
            pool.submitted(F, &format!("t{n}"), member);
        }
        assert_eq!(counts, [2, 2, 2]);
        assert_eq!(pool.pick(&[]), Err(NoMember::AllBusy));
        assert!(!pool.takes_submits());
        pool.finished(F, "t0");
        let freed = pool.owner(F, "t0").unwrap();
        assert_eq!(pool.pick(&[]), Ok(freed), "the freed place");
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_a_tried_member_is_skipped() {
        let pool = pool("round-robin", &[("a", 1, 0), ("b", 5, 0), ("c", 1, 0)]);
        let picks: Vec<MemberId> = (0..6).map(|_| pool.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let next = pool.pick(&[0, 1, 2]);
        assert_eq!(next, Err(NoMember::AllDown), "every member tried");
        assert_ne!(pool.pick(&[0]).unwrap(), 0);
    }

    #[test]
    fn weighted_spreads_in_proportion_to_weight() {
        let pool = pool("weighted", &[("a", 1, 0), ("b", 3, 0)]);
        let heavy = (0..4000).filter(|_| pool.pick(&[]).unwrap() == 1).count();
        // 3000 expected; the bound is many standard deviations (27) wide.
        assert!((2700..3300).contains(&heavy), "{heavy}");
    }

    #[test]
    fn owners_are_remembered_per_family_and_one_member_owns_everything() {
        let many = pool("least-busy", &[("a", 1, 0), ("b", 1, 0)]);
        many.submitted(F, "x", 1);
        assert_eq!(many.owner(F, "x"), Some(1));
        assert_eq!(many.owner(FamilyId(1), "x"), None, "another family's x");
        assert_eq!(many.owner(F, "y"), None);
        many.remember(F, "y", 0);
        assert_eq!(many.owner(F, "y"), Some(0));
        let one = Config::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n",
            &Overrides::default(),
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new(1 << 20, &one.families));
        let one = Pool::new(&one.upstream, 1 << 20, metrics).unwrap();
        assert_eq!(one.owner(F, "anything"), Some(0));
        assert_eq!(one.members()[0].name, "default");
    }
}
