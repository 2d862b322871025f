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

use super::{Upstream, UpstreamError};
use crate::config::{Config, MemberConfig, Policy, UpstreamConfig};
use crate::credential::CredentialFingerprint;
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
    running: Mutex<Running>,
    /// Submits sent to it and not answered yet: they count as running, so concurrent submits cannot
    /// overshoot `max_running` before the first of them is answered.
    pending: AtomicUsize,
}

#[derive(Default)]
struct Running {
    /// Each with when it was submitted, and by whom (only its submitter's not-found frees it).
    tasks: HashMap<TaskKey, (Instant, CredentialFingerprint)>,
    /// When tasks past the TTL were last dropped (at most once a second: a sweep is a full pass).
    swept: Option<Instant>,
}

type TaskKey = (FamilyId, Box<str>);

impl Member {
    /// Its running tasks and submits in flight, those past `ttl` dropped first.
    fn load(&self, ttl: Duration) -> usize {
        let mut running = self.running.lock();
        if running
            .swept
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            running.tasks.retain(|_, (since, _)| since.elapsed() < ttl);
            running.swept = Some(Instant::now());
        }
        running.tasks.len() + self.pending.load(Ordering::Relaxed)
    }

    /// Most tasks it runs at once; 0: no limit.
    pub fn max_running(&self) -> usize {
        self.max_running
    }

    fn has_room(&self, load: usize) -> bool {
        self.max_running == 0 || load < self.max_running
    }

    /// Whether it takes a submit now: under its running limit, its breaker closed.
    fn open_for_submits(&self, load: usize) -> bool {
        self.has_room(load) && !self.upstream.protection().breaker().is_open()
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

/// Every pool: the default one (`[upstream]`: passthrough, and every family that names no other)
/// and the named ones (`[upstreams.<name>]`), each a [`Pool`] of its own members, policy and owners.
pub struct Pools {
    default: Arc<Pool>,
    named: Vec<(String, Arc<Pool>)>,
    metrics: Arc<Metrics>,
}

impl Pools {
    /// Every pool's members' clients; fails only when TLS roots cannot be loaded.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, TlsError> {
        let pool = |upstream: &UpstreamConfig| {
            Pool::new(
                upstream,
                config.server.max_request_body,
                Arc::clone(&metrics),
            )
            .map(Arc::new)
        };
        Ok(Pools {
            default: pool(&config.upstream)?,
            named: config
                .upstreams
                .iter()
                .map(|(name, upstream)| Ok((name.clone(), pool(upstream)?)))
                .collect::<Result<_, TlsError>>()?,
            metrics,
        })
    }

    /// The default pool (`[upstream]`).
    pub fn default_pool(&self) -> &Arc<Pool> {
        &self.default
    }

    /// The pool named `name`; `None` (a family that names none) is the default pool. A name no
    /// pool has is the default too: the config was checked, so only a family a reload added could
    /// name one, and the reload refuses it.
    pub fn get(&self, name: Option<&str>) -> &Arc<Pool> {
        name.and_then(|name| self.named.iter().find(|(n, _)| n == name))
            .map_or(&self.default, |(_, pool)| pool)
    }

    /// Every pool with its name, the default (`default`) first.
    pub fn all(&self) -> impl Iterator<Item = (&str, &Arc<Pool>)> {
        std::iter::once(("default", &self.default))
            .chain(self.named.iter().map(|(name, pool)| (name.as_str(), pool)))
    }

    /// More than one member in all: an upstream's health is then the gateway's readiness.
    pub fn is_many(&self) -> bool {
        self.all()
            .map(|(_, pool)| pool.members().len())
            .sum::<usize>()
            > 1
    }

    /// The member named `name`, in whichever pool (names are unique across pools).
    pub fn upstream_named(&self, name: &str) -> Option<Upstream> {
        self.all().find_map(|(_, pool)| {
            let member = pool.named(name)?;
            Some(pool.member(member).upstream.clone())
        })
    }

    /// Whether every member of every pool has its breaker open: no submit can go anywhere.
    pub fn all_down(&self) -> bool {
        self.all().all(|(_, pool)| pool.all_down())
    }

    /// Sets the per-member gauges (at scrape time), and the overall circuit gauge: open only when
    /// every member's is.
    pub fn export(&self) {
        let mut all_open = true;
        for (_, pool) in self.all() {
            all_open &= pool.export();
        }
        self.metrics.set_circuit_open(all_open);
    }
}

/// The members, the submit policy, and the task owners.
pub struct Pool {
    members: Box<[Member]>,
    policy: Policy,
    running_ttl: Duration,
    queue_wait: Duration,
    /// A member under a running limit, or more than one member: submits are placed by [`Pool::place`].
    places_submits: bool,
    /// For `round-robin`, and the weighted draw's counter.
    turn: AtomicUsize,
    /// Held while a member is chosen and its place taken, so two submits never take the last place.
    choosing: Mutex<()>,
    /// Woken when a place frees (a task seen finished, a submit that made nothing).
    freed: tokio::sync::Notify,
    owners: moka::sync::Cache<TaskKey, MemberId>,
    probe: Option<crate::config::ProbeConfig>,
    metrics: Arc<Metrics>,
}

/// A place on a member taken for one submit: counted against its running limit until dropped, or
/// turned into the running task the submit made ([`Place::made`]).
pub struct Place<'p> {
    pool: &'p Pool,
    member: MemberId,
}

impl Place<'_> {
    pub fn member(&self) -> MemberId {
        self.member
    }

    pub fn upstream(&self) -> &Upstream {
        &self.pool.members[self.member].upstream
    }

    pub fn name(&self) -> &str {
        &self.pool.members[self.member].name
    }

    /// The submit made task `id` of `family`: owned by this member and running there.
    pub fn made(self, family: FamilyId, id: &str, submitter: CredentialFingerprint) {
        self.pool.submitted(family, id, self.member, submitter);
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.pool.members[self.member]
            .pending
            .fetch_sub(1, Ordering::Relaxed);
        self.pool.freed.notify_waiters();
    }
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
                    upstream: Upstream::new(
                        &own,
                        &member.name,
                        max_request_body,
                        Arc::clone(&metrics),
                    )?,
                    weight: member.weight.max(1),
                    max_running: member.max_running,
                    running: Mutex::default(),
                    pending: AtomicUsize::new(0),
                })
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        let places_submits = members.len() > 1 || members.iter().any(|m| m.max_running > 0);
        Ok(Pool {
            members: members.into_boxed_slice(),
            policy: config.policy,
            running_ttl: config.running_ttl,
            queue_wait: config.queue_wait,
            places_submits,
            turn: AtomicUsize::new(0),
            choosing: Mutex::new(()),
            freed: tokio::sync::Notify::new(),
            owners: moka::sync::Cache::builder()
                .max_capacity(OWNERS_REMEMBERED)
                .build(),
            probe: config.probe.clone(),
            metrics,
        })
    }

    /// The first member: passthrough requests go to it.
    pub fn default_member(&self) -> &Upstream {
        &self.members[0].upstream
    }

    /// `error`, from member `member`: with more than one member, said of it by name (the client
    /// learns which member failed; a pool of one stays as it always was).
    pub fn blame(&self, member: MemberId, error: UpstreamError) -> UpstreamError {
        match self.is_pool() {
            true => error.at_member(&self.members[member].upstream.name),
            false => error,
        }
    }

    /// Its active health check, if it has one.
    pub fn probe(&self) -> Option<&crate::config::ProbeConfig> {
        self.probe.as_ref()
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

    /// Whether submits are placed on a member by the policy (and counted against running limits),
    /// rather than simply forwarded to the only member.
    #[inline]
    pub fn places_submits(&self) -> bool {
        self.places_submits
    }

    /// The member that owns `id` of `family`, if known.
    pub fn owner(&self, family: FamilyId, id: &str) -> Option<MemberId> {
        if !self.is_pool() {
            return Some(0);
        }
        self.owners.get(&(family, Box::from(id)))
    }

    /// Remembers that `member` knows task `id` (a lookup found it there, or another replica said so).
    pub fn remember(&self, family: FamilyId, id: &str, member: MemberId) {
        if self.is_pool() && member < self.members.len() {
            self.owners.insert((family, Box::from(id)), member);
        }
    }

    /// The member named `name`, if there is one.
    pub fn named(&self, name: &str) -> Option<MemberId> {
        self.members.iter().position(|m| m.name == name)
    }

    /// A submit `member` accepted made task `id`: owned by it, and running there until seen finished.
    pub fn submitted(
        &self,
        family: FamilyId,
        id: &str,
        member: MemberId,
        submitter: CredentialFingerprint,
    ) {
        let key: TaskKey = (family, Box::from(id));
        if self.places_submits {
            self.members[member]
                .running
                .lock()
                .tasks
                .insert(key.clone(), (Instant::now(), submitter));
        }
        if self.is_pool() {
            self.owners.insert(key, member);
        }
    }

    /// Task `id` was seen finished: its place under its member's running limit is free.
    pub fn finished(&self, family: FamilyId, id: &str) {
        self.free(family, id, None);
    }

    /// Its owner answered not-found for task `id` to `credential`: a member that restarted and lost
    /// its tasks frees their places at their submitter's next poll. Another credential's not-found
    /// (tasks are private to the key that made them) frees nothing.
    pub fn gone(&self, family: FamilyId, id: &str, credential: &CredentialFingerprint) {
        self.free(family, id, Some(credential));
    }

    fn free(&self, family: FamilyId, id: &str, asked_by: Option<&CredentialFingerprint>) {
        if !self.places_submits {
            return;
        }
        let key: TaskKey = (family, Box::from(id));
        let owner = if self.is_pool() {
            self.owners.get(&key)
        } else {
            Some(0)
        };
        let Some(owner) = owner else { return };
        let removed = {
            let mut running = self.members[owner].running.lock();
            let theirs = running
                .tasks
                .get(&key)
                .is_some_and(|(_, submitter)| asked_by.is_none_or(|asker| asker == submitter));
            theirs && running.tasks.remove(&key).is_some()
        };
        if removed {
            self.freed.notify_waiters();
        }
    }

    /// Tasks running on `member` now, submits in flight to it included.
    pub fn running(&self, member: MemberId) -> usize {
        self.members[member].load(self.running_ttl)
    }

    /// Whether every member is down (readiness, with a pool): its circuit open; or, with a probe,
    /// not closed (a cooled-down member is up only once a check answers). Without a probe a
    /// cooled-down member counts as up: the next submit is its trial, and a gateway that called
    /// itself unready until then would get no submit to try with.
    pub fn all_down(&self) -> bool {
        self.members.iter().all(|m| {
            let breaker = m.upstream.protection().breaker();
            breaker.is_open() || (self.probe.is_some() && !breaker.is_closed())
        })
    }

    /// Sets the per-member gauges (at scrape time); whether every member's circuit is open.
    fn export(&self) -> bool {
        let mut all_open = true;
        for (id, member) in self.members.iter().enumerate() {
            let open = member.upstream.protection().breaker().is_open();
            all_open &= open;
            let label = [member.name.as_str()];
            self.metrics
                .members
                .running
                .with_label_values(&label)
                .set(self.running(id) as i64);
            self.metrics
                .members
                .circuit_open
                .with_label_values(&label)
                .set(i64::from(open));
        }
        all_open
    }

    /// A place for a submit: [`Pool::pick`], waiting up to `upstream.queue_wait` for one to free
    /// while every member is at its running limit.
    pub async fn place(
        &self,
        tried: &[MemberId],
        only: Option<MemberId>,
    ) -> Result<Place<'_>, NoMember> {
        let deadline = tokio::time::Instant::now() + self.queue_wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.pick(tried, only) {
                Err(NoMember::AllBusy) if tokio::time::Instant::now() < deadline => {
                    // Places also free by `running_ttl` expiry, which wakes nobody: look again
                    // each second.
                    let wake = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
                    let _ = tokio::time::timeout_at(wake, freed).await;
                }
                picked => return picked,
            }
        }
    }

    /// The member to take a submit, by `upstream.policy`, skipping those `tried` already, those at
    /// their running limit, and those whose breaker is open; its place taken. With `only`, that
    /// member or none (an action goes to the owner of the task it acts on).
    pub fn pick(&self, tried: &[MemberId], only: Option<MemberId>) -> Result<Place<'_>, NoMember> {
        let _choosing = self.choosing.lock();
        let mut any_free = false;
        let mut open: Vec<(MemberId, usize)> = Vec::with_capacity(self.members.len());
        for (id, member) in self.members.iter().enumerate() {
            if only.is_some_and(|only| only != id) {
                continue;
            }
            let load = member.load(self.running_ttl);
            any_free |= member.has_room(load);
            if !tried.contains(&id) && member.open_for_submits(load) {
                open.push((id, load));
            }
        }
        if open.is_empty() {
            let reason = if any_free {
                NoMember::AllDown
            } else {
                NoMember::AllBusy
            };
            return Err(reason);
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
        self.members[chosen].pending.fetch_add(1, Ordering::Relaxed);
        Ok(Place {
            pool: self,
            member: chosen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBMITTER: CredentialFingerprint = CredentialFingerprint::from_bytes([7; 16]);
    use crate::config::{Config, Overrides};

    fn pool(policy: &str, members: &[(&str, u32, usize)]) -> Pool {
        pool_waiting(policy, "0s", members)
    }

    fn pool_waiting(policy: &str, queue_wait: &str, members: &[(&str, u32, usize)]) -> Pool {
        let mut text =
            format!("[upstream]\npolicy = \"{policy}\"\nqueue_wait = \"{queue_wait}\"\n");
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
            let place = pool.pick(&[], None).unwrap();
            counts[place.member()] += 1;
            place.made(F, &format!("t{n}"), SUBMITTER);
        }
        assert_eq!(counts, [2, 2, 2]);
        assert_eq!(pool.pick(&[], None).err(), Some(NoMember::AllBusy));
        assert!(!pool.all_down(), "full, not down");
        pool.finished(F, "t0");
        let freed = pool.owner(F, "t0").unwrap();
        assert_eq!(
            pool.pick(&[], None).map(|p| p.member()).ok(),
            Some(freed),
            "the freed place"
        );
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_a_tried_member_is_skipped() {
        let pool = pool("round-robin", &[("a", 1, 0), ("b", 5, 0), ("c", 1, 0)]);
        let picks: Vec<MemberId> = (0..6)
            .map(|_| pool.pick(&[], None).unwrap().member())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let next = pool.pick(&[0, 1, 2], None).err();
        assert_eq!(next, Some(NoMember::AllDown), "every member tried");
        assert_ne!(pool.pick(&[0], None).unwrap().member(), 0);
    }

    #[test]
    fn weighted_spreads_in_proportion_to_weight() {
        let pool = pool("weighted", &[("a", 1, 0), ("b", 3, 0)]);
        let heavy = (0..4000)
            .filter(|_| pool.pick(&[], None).unwrap().member() == 1)
            .count();
        // 3000 expected; the bound is many standard deviations (27) wide.
        assert!((2700..3300).contains(&heavy), "{heavy}");
    }

    #[test]
    fn submits_in_flight_hold_their_places_so_a_limit_is_never_overshot() {
        let pool = pool("least-busy", &[("a", 1, 1), ("b", 1, 1)]);
        let first = pool.pick(&[], None).unwrap();
        let second = pool.pick(&[], None).unwrap();
        assert_ne!(first.member(), second.member(), "one place each");
        assert_eq!(
            pool.pick(&[], None).err(),
            Some(NoMember::AllBusy),
            "both answers pending"
        );
        let member = first.member();
        drop(first);
        let again = pool.pick(&[], None).unwrap();
        assert_eq!(
            again.member(),
            member,
            "a submit that made nothing gives its place back"
        );
        again.made(F, "t", SUBMITTER);
        assert_eq!(pool.running(member), 1);
        assert_eq!(pool.pick(&[], None).err(), Some(NoMember::AllBusy));
        let other = 1 - member;
        assert_eq!(
            pool.pick(&[], Some(member)).err(),
            Some(NoMember::AllBusy),
            "an action for a full member's task waits for that member"
        );
        assert!(pool.pick(&[], Some(other)).is_err(), "b's place is pending");
    }

    #[tokio::test]
    async fn a_submit_waits_for_a_place_up_to_queue_wait() {
        let pool = Arc::new(pool_waiting("least-busy", "1m", &[("a", 1, 1)]));
        pool.pick(&[], None).unwrap().made(F, "t", SUBMITTER);
        let waiting = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.place(&[], None).await.map(|p| p.member()).ok() })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        pool.finished(F, "t");
        assert_eq!(waiting.await.unwrap(), Some(0));

        let impatient = pool_waiting("least-busy", "0s", &[("a", 1, 1)]);
        impatient.pick(&[], None).unwrap().made(F, "t", SUBMITTER);
        assert_eq!(
            impatient.place(&[], None).await.err(),
            Some(NoMember::AllBusy)
        );
    }

    #[test]
    fn owners_are_remembered_per_family_and_one_member_owns_everything() {
        let many = pool("least-busy", &[("a", 1, 0), ("b", 1, 0)]);
        many.submitted(F, "x", 1, SUBMITTER);
        assert_eq!(many.named("b"), Some(1));
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
