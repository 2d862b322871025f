//! The fetch core: the one thing that turns "(credential, task) please" into an answer. A fresh cache
//! entry, else one collapsed call ([`collapse`]) through the shared tier to the upstream, classified
//! and stored, with a stale answer standing in when the call fails. Batches ([`batch`]) are served per
//! id from the same cache and flights.

pub mod batch;
pub mod collapse;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap};
use http::{Method, Response, StatusCode};

use crate::artifacts::keeper::Keeper;
use crate::body::ResponseBody;
use crate::cache::response::{compact_header, task_response};
use crate::cache::status::{CACHE_STATUS, CacheStatus};
use crate::cache::{CacheKey, CachedTask, KeyBuf, Lookup, TaskCache};
use crate::config::Config;
use crate::credential::{CredentialFingerprint, Fingerprinter};
use crate::error::RequestError;
use crate::family::{Families, FamilyId, LiveFamilies, TaskRef};
use crate::metrics::{Metrics, Outcome, RouteLabel};
use crate::shared::{self, Claim, Freshness, SharedCache};
use crate::task::{TaskClass, TaskId};
use crate::upstream::content_coding::is_identity;
use crate::upstream::pool::{MemberId, Place, Pool, Pools};
use crate::upstream::{BufferedCall, BufferedReply, ClientInfo, Upstream, UpstreamError};
use crate::work::{Work, WorkKind};
use collapse::{Abandoned, Collapser, Flight, Role};

/// The result of one upstream call for one task, as handed to every request collapsed on it.
#[derive(Clone, Debug)]
pub enum Landed {
    /// The upstream's task object for that id; it is in the cache.
    Stored(Arc<CachedTask>),
    /// An upstream answer that is not that task's object (404, empty body, router error, ...): passed on
    /// as is, never stored.
    Passed(Arc<BufferedReply>),
    /// No usable upstream answer: the client gets 502 or 504; nothing is stored.
    Failed(UpstreamError),
    /// A batch call's answer did not include this id (unknown, or not the caller's).
    NotReturned,
    /// Another replica's answer, found in the shared tier; it is in the cache now too.
    Shared(Arc<CachedTask>),
}

/// What became of an upstream's callback with a task's state.
pub enum CalledBack {
    /// Stored under its key: watchers should hear of it.
    Stored(CacheKey, Arc<CachedTask>),
    /// The task is finished in the cache already: a finished state is final, the callback is
    /// acknowledged and ignored (an upstream's callbacks may arrive out of order).
    AlreadyFinished,
    /// Not that task's answer (another id, not a task object).
    NotThatTask,
}

/// A handler's answer and what the request's metrics and log line say about it.
pub struct Served {
    pub response: Response<ResponseBody>,
    /// How a cached route served it (its `Cache-Status` and its metric label); `None` for what is
    /// not a cached route or was refused before the cache.
    pub cache: Option<CacheStatus>,
    /// The status of the upstream answer this response came from, if one did.
    pub upstream_status: Option<u16>,
}

impl Served {
    /// An answer of a cached route, served as `cache` says.
    pub fn cached(
        response: Response<ResponseBody>,
        cache: CacheStatus,
        upstream_status: Option<u16>,
    ) -> Self {
        Served {
            response,
            cache: Some(cache),
            upstream_status,
        }
    }

    /// A stored task as the answer, its `Cache-Status` header and its label from the one `cache`.
    pub fn task(
        task: &Arc<CachedTask>,
        cache: CacheStatus,
        with_age: bool,
        upstream_status: Option<u16>,
    ) -> Self {
        Served::cached(task_response(task, cache, with_age), cache, upstream_status)
    }

    /// An upstream answer forwarded untouched.
    pub fn forwarded(response: Response<ResponseBody>, upstream_status: u16) -> Self {
        Served {
            response,
            cache: None,
            upstream_status: Some(upstream_status),
        }
    }

    /// An answer the gateway makes up: `error`, through its one rescue
    /// ([`RequestError::into_response`]).
    pub fn error(error: impl Into<RequestError>) -> Self {
        Served::bypass(error.into().into_response())
    }

    /// Not a cached route, or refused before the cache.
    pub fn bypass(response: Response<ResponseBody>) -> Self {
        Served {
            response,
            cache: None,
            upstream_status: None,
        }
    }

    /// The metric and log label.
    pub fn outcome(&self) -> Outcome {
        self.cache.map_or(Outcome::Bypass, |cache| cache.outcome())
    }
}

/// The fetch core's state, shared by every request, batch and watch poller.
pub struct Fetcher {
    /// The upstream members, and which one owns each task.
    pools: Arc<Pools>,
    cache: TaskCache,
    /// Task lookups in the air, by cache key, whether a fetch or a batch started them.
    flights: Arc<Collapser<Landed>>,
    fingerprinter: Fingerprinter,
    /// The Redis tier between the cache and the upstream, when `[shared_cache]` is configured.
    shared: Option<SharedCache>,
    metrics: Arc<Metrics>,
    /// Most ids sent in one upstream batch call (`batch.upstream_chunk`).
    upstream_chunk: usize,
    /// The task APIs: how to read each one's answers.
    families: LiveFamilies,
    /// Everything spawned on behalf of requests, here and in the handlers and watchers above.
    work: Work,
    /// `[artifacts]`: finished tasks' files kept and their answers linked to them; `None` when off.
    keeper: Option<Arc<Keeper>>,
}

impl Fetcher {
    /// Builds the core for `config`. With a shared tier it needs a Tokio runtime (for the tier's
    /// listener and probe) and fails only on a Redis URL the client cannot parse or TLS roots that
    /// cannot be loaded.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, crate::Error> {
        let families = LiveFamilies::new(config.families.clone());
        let (shared, fingerprinter) = match &config.shared_cache {
            Some(shared_config) => {
                let freshness = Freshness {
                    terminal: shared_config.terminal_ttl,
                    in_progress: config.cache.in_progress_ttl,
                    not_found: config.cache.not_found_ttl,
                };
                // A lease holder's call may queue, then run to its deadline; waiting any longer
                // than that (plus one lease, for a dead holder's to expire) means something is wrong.
                let max_wait = config.upstream.queue_timeout
                    + config.upstream.request_timeout
                    + shared_config.lease_ttl;
                let shared = SharedCache::new(
                    shared_config,
                    freshness,
                    max_wait,
                    config.upstream.max_body,
                    Arc::clone(&metrics),
                    families.clone(),
                )?;
                let fingerprinter =
                    Fingerprinter::from_secret(shared_config.fingerprint_secret.as_bytes());
                (Some(shared), fingerprinter)
            }
            None => (None, Fingerprinter::random()),
        };
        let cache = TaskCache::new(&config.cache, Arc::clone(&metrics));
        if let Some(shared) = &shared {
            // Another replica's purge: this one's copies go too.
            let (cache, families) = (cache.clone(), families.clone());
            shared.on_purge(Arc::new(move |announced: &[u8]| {
                if let Some(scope) = crate::shared::PurgeScope::decode(announced)
                    .as_ref()
                    .and_then(|scope| scope.local(&families.load()))
                {
                    cache.purge(&scope);
                }
            }));
        }
        let work = Work::new(&metrics);
        let keeper = Keeper::new(
            config,
            cache.clone(),
            work.clone(),
            shared.clone(),
            families.clone(),
            Arc::clone(&metrics),
        )?
        .map(Arc::new);
        Ok(Fetcher {
            pools: Arc::new(Pools::new(config, Arc::clone(&metrics))?),
            cache,
            flights: Collapser::new(flight_bound(config)),
            fingerprinter,
            shared,
            work,
            keeper,
            metrics,
            upstream_chunk: config.batch.upstream_chunk,
            families,
        })
    }

    pub fn cache(&self) -> &TaskCache {
        &self.cache
    }

    pub fn fingerprinter(&self) -> &Fingerprinter {
        &self.fingerprinter
    }

    /// The default pool's first member: anything not tied to a task or a family goes to it.
    pub fn upstream(&self) -> &Upstream {
        self.pools.default_pool().default_member()
    }

    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// The pool `family`'s requests go to (`families.<name>.upstream`).
    pub fn pool_of(&self, family: FamilyId) -> &Arc<Pool> {
        self.pools.get(self.families.load().get(family).upstream())
    }

    /// The pool a passthrough request for `path` goes to: the one of the family that claims the
    /// longest prefix of it (nested prefixes: the innermost), else the default pool.
    pub fn pool_for_path(&self, path: &str) -> &Arc<Pool> {
        let families = self.families.load();
        // Every family competes, those on the default pool too: `/v1/video/generations/...` is
        // video-generations' even when video-query (`/v1/video/`) goes elsewhere.
        let claimed = families
            .live()
            .filter_map(|family| Some((family.claims(path)?, family.upstream())))
            .max_by_key(|(len, _)| *len);
        self.pools.get(claimed.and_then(|(_, pool)| pool))
    }

    /// The families in force now.
    #[inline]
    pub fn families(&self) -> arc_swap::Guard<Arc<Families>> {
        self.families.load()
    }

    /// The handle every holder of the families shares, for a reload to swap them.
    pub fn live_families(&self) -> &LiveFamilies {
        &self.families
    }

    /// The tracker every task spawned on behalf of requests goes through.
    pub fn work(&self) -> &Work {
        &self.work
    }

    /// The Redis tier, when configured.
    pub fn shared(&self) -> Option<&SharedCache> {
        self.shared.as_ref()
    }

    /// The kept result files, when `[artifacts]` is on.
    pub fn keeper(&self) -> Option<&Arc<Keeper>> {
        self.keeper.as_ref()
    }

    /// A stored answer as the client that sent `headers` gets it: a finished one whose files wait
    /// for a client's `Host` gets them kept now; links to kept files stored under another name the
    /// gateway is reached by are rebased to this client's. Costs two branches on answers without
    /// kept files.
    #[inline]
    pub(crate) fn for_client(
        &self,
        task: Arc<CachedTask>,
        key: &KeyBuf,
        family: FamilyId,
        headers: &HeaderMap,
        tls: bool,
    ) -> Arc<CachedTask> {
        let Some(keeper) = &self.keeper else {
            return task;
        };
        let task = if task.files_pending() {
            self.stored(&key.to_key(), family, task, Some((headers, tls)))
        } else {
            task
        };
        if task.files_base.is_none() {
            return task;
        }
        keeper.rebased(&task, family, headers, tls).unwrap_or(task)
    }

    /// `task` was stored for `key`: a finished one gets its result files kept (for the client that
    /// sent `headers`, over TLS or not, when one did).
    /// What to serve of it: `task`, or its rewritten entry when its links were swapped at once (a
    /// lazy family's).
    pub(crate) fn stored(
        &self,
        key: &CacheKey,
        family: FamilyId,
        task: Arc<CachedTask>,
        client: Option<(&HeaderMap, bool)>,
    ) -> Arc<CachedTask> {
        if let Some(keeper) = &self.keeper
            && task.is_finished()
        {
            let base = client.and_then(|(headers, tls)| keeper.base_for(headers, tls));
            if let Some(linked) = keeper.finished(key, family, &task, base) {
                return linked;
            }
        }
        task
    }

    /// A task's status (`GET` on a family's status route; `path` is what the upstream is asked): a
    /// fresh cache entry, else one collapsed upstream call; a stale entry stands in if that call fails.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        path: &str,
        headers: &HeaderMap,
        task: TaskRef<'_>,
        client: ClientInfo,
    ) -> Served {
        let fingerprint = self.fingerprinter.fingerprint(headers);
        let key = KeyBuf::new(&fingerprint, task);
        let family = task.family;
        let stale = match self.cache.lookup(key.as_bytes()) {
            Lookup::Fresh { task, ttl } => {
                self.metrics.task_lookups(family, Outcome::Hit, 1);
                let task = self.for_client(task, &key, family, headers, client.tls);
                return Served::task(&task, CacheStatus::Hit { ttl }, true, None);
            }
            other => other.stale(),
        };
        if let Some(stale) = &stale
            && let Some(fwd_status) = self.cache.refresh_deferred(key.as_bytes())
        {
            return serve_stale(stale, fwd_status);
        }
        // A flight started by a batch lands `NotReturned` for ids its answer left out; a fetch then asks
        // the upstream itself, to pass on the upstream's own not-found answer. Twice at most.
        for _ in 0..2 {
            let flight = match self.flights.join(key.as_bytes()) {
                Role::Follower(landing) => {
                    let waiting = self.metrics.collapse_waiter();
                    let landed = landing.wait().await;
                    drop(waiting);
                    match landed {
                        Ok(Landed::NotReturned) => continue,
                        Ok(landed) => {
                            self.metrics.task_lookups(family, Outcome::Collapsed, 1);
                            self.defer_refresh_if_failed(key.as_bytes(), &landed, stale.is_some());
                            return landed_response(landed, true, stale.as_ref());
                        }
                        Err(abandoned) => {
                            return Served::bypass(RequestError::from(abandoned).into_response());
                        }
                    }
                }
                Role::Leader(flight) => flight,
            };
            // The previous flight for this key may have landed between our lookup and our join: its
            // answer is in the cache now, and calling the upstream again would break "one call per TTL".
            if let Lookup::Fresh { task, ttl } = self.cache.lookup(key.as_bytes()) {
                flight.land(Landed::Stored(Arc::clone(&task)));
                self.metrics.task_lookups(family, Outcome::Hit, 1);
                let task = self.for_client(task, &key, family, headers, client.tls);
                return Served::task(&task, CacheStatus::Hit { ttl }, true, None);
            }
            self.metrics.task_lookups(family, Outcome::Miss, 1);
            let landed = self
                .lead(flight, path, headers, fingerprint, client, task)
                .await;
            return match landed {
                Ok(landed) => {
                    self.defer_refresh_if_failed(key.as_bytes(), &landed, stale.is_some());
                    landed_response(landed, false, stale.as_ref())
                }
                Err(abandoned) => Served::bypass(RequestError::from(abandoned).into_response()),
            };
        }
        not_returned()
    }

    /// Makes the upstream call `flight` leads, in a task of its own so that the other waiters still
    /// get it if this client goes away, and waits for it. The task keeps this request's span, so its
    /// log lines carry the leader's request id.
    async fn lead(
        self: &Arc<Self>,
        flight: Flight<Landed>,
        path: &str,
        headers: &HeaderMap,
        fingerprint: CredentialFingerprint,
        client: ClientInfo,
        task: TaskRef<'_>,
    ) -> Result<Landed, Abandoned> {
        let landing = flight.landing();
        let fetcher = Arc::clone(self);
        let path = path.to_owned();
        let headers = headers.clone();
        let (family, id) = (task.family, task.id.as_str().to_owned());
        self.work.spawn(WorkKind::Fetch, async move {
            let key = flight.key().clone();
            let landed = fetcher
                .fetch_upstream(&path, &headers, fingerprint, client, (family, &id), key)
                .await;
            flight.land(landed);
        });
        landing.wait().await
    }

    /// After a failed refresh with a stale answer to stand in, defers the next refresh for one TTL.
    pub(crate) fn defer_refresh_if_failed(&self, key: &[u8], landed: &Landed, has_stale: bool) {
        if has_stale && let Some(status) = failure_status(landed) {
            self.cache.defer_refresh(key, status);
        }
    }

    /// Asks the shared tier for one task, else calls the upstream (under the tier's lease) and stores
    /// the answer if it is that task's object, or briefly if it says there is no such task.
    async fn fetch_upstream(
        &self,
        path: &str,
        headers: &HeaderMap,
        fingerprint: CredentialFingerprint,
        client: ClientInfo,
        (family, id): (FamilyId, &str),
        key: CacheKey,
    ) -> Landed {
        let lease = match &self.shared {
            Some(shared) => match shared.claim(&key).await {
                Claim::Found(task) => {
                    let held = self.cache.insert(key.clone(), task);
                    let held = self.stored(&key, family, held, Some((headers, client.tls)));
                    return Landed::Shared(held);
                }
                Claim::Lead(lease) => lease,
            },
            None => None,
        };
        let call = BufferedCall {
            route: RouteLabel::Fetch,
            credential: &fingerprint,
            method: Method::GET,
            path_and_query: path,
            headers,
            client,
            body: Bytes::new(),
        };
        let reply = shared::under_lease(lease.as_slice(), self.call_owner(call, family, id)).await;
        let landed = match reply {
            Err(e) => {
                e.log();
                Landed::Failed(e)
            }
            Ok(reply) => match self.entry_for(&reply, family, id) {
                Some(task) => {
                    let held = self.cache.insert(key.clone(), Arc::clone(&task));
                    if let Some(shared) = &self.shared
                        && Arc::ptr_eq(&held, &task)
                    {
                        shared.publish(&[(&key, &task)]).await;
                    }
                    Landed::Stored(self.stored(&key, family, held, Some((headers, client.tls))))
                }
                None => Landed::Passed(Arc::new(reply)),
            },
        };
        if let Some(lease) = lease {
            lease.release().await;
        }
        landed
    }

    /// Calls the member that owns task `id`; for a task of a pool no submit here made (or one
    /// forgotten), every member at once, the first answer that is the task winning (and its member
    /// remembered). Not-found from all is the first member's not-found.
    async fn call_owner(
        &self,
        call: BufferedCall<'_>,
        family: FamilyId,
        id: &str,
    ) -> Result<BufferedReply, UpstreamError> {
        if let Some(owner) = self.known_owner(family, id).await {
            let pool = self.pool_of(family);
            let credential = *call.credential;
            let reply = pool
                .member(owner)
                .upstream
                .call_buffered(call)
                .await
                .map_err(|e| pool.blame(owner, e));
            // Only a pool that counts running tasks reads the answer for them: a lone upstream's
            // fetch pays no second parse.
            if let Ok(reply) = &reply
                && pool.places_submits()
            {
                self.note_finished(reply, family, id);
                if self
                    .families
                    .load()
                    .get(family)
                    .is_not_found(reply.status.as_u16(), &reply.body)
                {
                    pool.gone(family, id, &credential);
                }
            }
            return reply;
        }
        let pool = self.pool_of(family);
        let mut asked: futures_util::stream::FuturesUnordered<_> = pool
            .members()
            .iter()
            .enumerate()
            .map(|(member, m)| {
                let call = call.clone();
                async move { (member, m.upstream.call_buffered(call).await) }
            })
            .collect();
        let mut first: Option<(MemberId, Result<BufferedReply, UpstreamError>)> = None;
        while let Some((member, reply)) = futures_util::StreamExt::next(&mut asked).await {
            if let Ok(answer) = &reply
                && self
                    .entry_for(answer, family, id)
                    .is_some_and(|task| task.is_task())
            {
                pool.remember(family, id, member);
                if let Some(shared) = &self.shared {
                    shared
                        .set_owner(family, id, &pool.member(member).name)
                        .await;
                }
                self.metrics
                    .members
                    .owner_lookups
                    .with_label_values(&[pool.member(member).name.as_str(), "found"])
                    .inc();
                self.note_finished(answer, family, id);
                return reply;
            }
            // Kept in member order: the first member's answer stands for "nowhere".
            if first.as_ref().is_none_or(|(m, _)| member < *m) {
                first = Some((member, reply));
            }
        }
        self.metrics
            .members
            .owner_lookups
            .with_label_values(&["none", "nowhere"])
            .inc();
        first.map_or_else(
            || {
                Err(UpstreamError::unreachable(
                    "no upstream member",
                    "the pool is empty",
                ))
            },
            |(member, reply)| reply.map_err(|e| pool.blame(member, e)),
        )
    }

    /// The member a follow-up naming task `id` (an action's parent, a download) goes to: its owner,
    /// looked for on every member (with the client's credential, on the status route under `mode`)
    /// when unknown; `None` when no member knows it.
    pub(crate) async fn member_for(
        &self,
        family: FamilyId,
        mode: &str,
        id: &str,
        headers: &HeaderMap,
        client: ClientInfo,
    ) -> Option<MemberId> {
        if let Some(owner) = self.known_owner(family, id).await {
            return Some(owner);
        }
        let path = self
            .families
            .load()
            .status_path(family, mode, TaskId::parse(id).ok()?)?;
        let fingerprint = self.fingerprinter.fingerprint(headers);
        let call = BufferedCall {
            route: RouteLabel::Fetch,
            credential: &fingerprint,
            method: Method::GET,
            path_and_query: &path,
            headers,
            client,
            body: Bytes::new(),
        };
        let _ = self.call_owner(call, family, id).await;
        self.pool_of(family).owner(family, id)
    }

    /// A submit placed on a member made task `id` of `family`: that member owns it from now on.
    pub(crate) async fn owned(
        &self,
        family: FamilyId,
        id: &str,
        place: Place<'_>,
        submitter: CredentialFingerprint,
    ) {
        if let Some(shared) = self
            .shared
            .as_ref()
            .filter(|_| self.pool_of(family).is_pool())
        {
            shared.set_owner(family, id, place.name()).await;
        }
        place.made(family, id, submitter);
    }

    /// The owner of task `id`: remembered here, else as another replica recorded it in Redis.
    async fn known_owner(&self, family: FamilyId, id: &str) -> Option<MemberId> {
        let pool = self.pool_of(family);
        if let Some(owner) = pool.owner(family, id) {
            return Some(owner);
        }
        let shared = self.shared.as_ref()?;
        let owner = pool.named(&shared.owner(family, id).await?)?;
        pool.remember(family, id, owner);
        Some(owner)
    }

    /// A finished answer frees its task's place under its member's running limit.
    fn note_finished(&self, reply: &BufferedReply, family: FamilyId, id: &str) {
        if reply.status == StatusCode::OK
            && let Some(classified) = self.families.load().get(family).classify(&reply.body, id)
            && classified.class == TaskClass::Terminal
        {
            self.pool_of(family).finished(family, id);
        }
    }

    /// Stores a task's answer an upstream called back with (webhooks' callbacks in) under the
    /// credential its callback token was issued to, as if a fetch had brought it, and shares it.
    pub(crate) async fn store_called_back(
        &self,
        fingerprint: &CredentialFingerprint,
        task: TaskRef<'_>,
        answer: &BufferedReply,
    ) -> CalledBack {
        let Some(stored) = self
            .entry_for(answer, task.family, task.id.as_str())
            .filter(|stored| stored.is_task())
        else {
            return CalledBack::NotThatTask;
        };
        let key = KeyBuf::new(fingerprint, task).to_key();
        let held = self.cache.insert(key.clone(), Arc::clone(&stored));
        if !Arc::ptr_eq(&held, &stored) {
            return CalledBack::AlreadyFinished;
        }
        if let Some(shared) = &self.shared {
            shared.publish(&[(&key, &stored)]).await;
        }
        let stored = self.stored(&key, task.family, stored, None);
        CalledBack::Stored(key, stored)
    }

    /// The cache entry `reply` makes, if it is a storable answer for task `id` of `family`: that
    /// task's answer, or one of the API's "no such task" answers.
    fn entry_for(
        &self,
        reply: &BufferedReply,
        family: FamilyId,
        id: &str,
    ) -> Option<Arc<CachedTask>> {
        if !is_identity(&reply.headers) {
            return None;
        }
        let families = self.families.load();
        let family = families.get(family);
        let content_type = reply.headers.get(CONTENT_TYPE).map(compact_header);
        // Copies, not slices: the upstream's bytes may share a connection's read buffer, which a
        // long-lived entry would otherwise pin (and the memory budget would not see).
        if reply.status == StatusCode::OK
            && let Some(classified) = family.classify(&reply.body, id)
        {
            let body = Bytes::copy_from_slice(&reply.body);
            let span = family.task_span(&body);
            let mut task = CachedTask::new(body, content_type, classified.class)
                .keep_until(classified.keep_until);
            if let Some(span) = span {
                task = task.task_at(span);
            }
            return Some(Arc::new(task));
        }
        family
            .is_not_found(reply.status.as_u16(), &reply.body)
            .then(|| {
                let body = Bytes::copy_from_slice(&reply.body);
                Arc::new(CachedTask::not_found(reply.status, body, content_type))
            })
    }
}

/// The longest a request waits on a collapsed call: the leader's call may wait on another replica's
/// lease (`queue_timeout + request_timeout + lease_ttl` at most), then queue and run itself; a second
/// beyond both means the leader is stuck, and the waiter is told so (`504`).
fn flight_bound(config: &Config) -> std::time::Duration {
    let call = config.upstream.queue_timeout + config.upstream.request_timeout;
    let lease = config
        .shared_cache
        .as_ref()
        .map_or(std::time::Duration::ZERO, |shared| call + shared.lease_ttl);
    call + lease + std::time::Duration::from_secs(1)
}

/// The answer for a landed flight, for a request that took part in it: `collapsed` when it waited
/// on another request's call. When the flight failed and `stale` holds an answer within
/// `cache.max_stale`, that answer is served.
fn landed_response(landed: Landed, collapsed: bool, stale: Option<&Arc<CachedTask>>) -> Served {
    if let (Some(fwd_status), Some(stale)) = (failure_status(&landed), stale) {
        return serve_stale(stale, fwd_status);
    }
    let status_for = |stored: bool, fwd_status: Option<u16>| {
        if collapsed {
            CacheStatus::Collapsed
        } else {
            CacheStatus::Miss { stored, fwd_status }
        }
    };
    match landed {
        Landed::Stored(task) => {
            let upstream_status = Some(task.status().as_u16());
            Served::task(&task, status_for(true, None), false, upstream_status)
        }
        Landed::Shared(task) if !collapsed => Served::task(&task, CacheStatus::Shared, true, None),
        Landed::Shared(task) => Served::task(&task, CacheStatus::Collapsed, true, None),
        Landed::Passed(reply) => {
            let upstream_status = reply.status.as_u16();
            let status = status_for(false, Some(upstream_status));
            Served::cached(
                passed_response(&reply, status),
                status,
                Some(upstream_status),
            )
        }
        Landed::Failed(e) => {
            let status = status_for(false, None);
            let mut response = RequestError::Upstream(e).into_response();
            response
                .headers_mut()
                .insert(CACHE_STATUS.clone(), status.header_value());
            Served::cached(response, status, None)
        }
        // Only batch calls land this, and fetches re-join rather than answer with it.
        Landed::NotReturned => not_returned(),
    }
}

/// A fetch that only ever found its task missing from batch answers: 502, as an unusable upstream answer.
fn not_returned() -> Served {
    Served::bypass(
        RequestError::Upstream(UpstreamError::unreachable(
            "the task was not in the upstream's answer",
            "a batch answer left the id out",
        ))
        .into_response(),
    )
}

/// A stale answer standing in for a failed refresh, marked RFC 9211 `fwd=stale`.
fn serve_stale(stale: &Arc<CachedTask>, fwd_status: u16) -> Served {
    Served::task(
        stale,
        CacheStatus::Stale { fwd_status },
        true,
        Some(fwd_status),
    )
}

/// The status a failed flight stands for, when a stale answer should replace it: the gateway's own
/// error status, or an upstream `429` or `5xx`.
pub(crate) fn failure_status(landed: &Landed) -> Option<u16> {
    match landed {
        Landed::Failed(e) => Some(e.status().as_u16()),
        Landed::Passed(reply) if reply.status == StatusCode::TOO_MANY_REQUESTS => Some(429),
        Landed::Passed(reply) if reply.status.is_server_error() => Some(reply.status.as_u16()),
        _ => None,
    }
}

/// An upstream answer passed on as it came (status, headers, body), marked with `status`.
pub(crate) fn passed_response(
    reply: &BufferedReply,
    status: CacheStatus,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(reply.body.clone()));
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers.clone();
    response.headers_mut().remove(http::header::CONTENT_LENGTH);
    response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), status.header_value());
    response
}
