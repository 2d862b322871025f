//! Batch queries (a family's batch route, `POST` with `{"ids": [...]}`: Midjourney's
//! `list-by-condition`, Suno's `/suno/fetch`) served from the same per-task cache and flights as single
//! fetches: the upstream is asked only for the ids nobody has.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::body::ResponseBody;
use crate::cache::conditional::etag_of;
use crate::cache::response::{PRIVATE, compact_header};
use crate::cache::status::CACHE_STATUS;
use crate::cache::status::CacheStatus;
use crate::cache::{CacheKey, CachedTask, KeyBuf, Lookup};
use crate::credential::CredentialFingerprint;
use crate::error::RequestError;
use crate::family::{Batch, Classified, Family, FamilyId, TaskRef, raw_at};
use crate::fetch::collapse::{Flight, Landing, Role};
use crate::fetch::{Fetcher, Landed, Served, failure_status, passed_response};
use crate::metrics::{Outcome, RouteLabel};
use crate::shared::{self, Claim, Lease};
use crate::task::{TaskClass, TaskId};
use crate::upstream::content_coding::is_identity;
use crate::upstream::pool::MemberId;
use crate::upstream::{BufferedCall, BufferedReply, ClientInfo, UpstreamError};
use crate::work::WorkKind;

/// What a `list-by-condition` body asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchQuery<'a> {
    /// Only `ids`: served from the cache. Ids are valid task ids, unique, in first-seen order.
    Ids(Vec<Cow<'a, str>>),
    /// Other condition fields: passed through uncached.
    Other,
}

/// Why a batch body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadBatch {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("`ids` is missing")]
    MissingIds,
    #[error("`ids` must be an array of strings")]
    IdsNotStrings,
    #[error("`ids` has {count} entries, more than the maximum of {max}")]
    TooManyIds { count: usize, max: usize },
    #[error("`ids[{index}]`: {reason}")]
    BadId {
        index: usize,
        reason: crate::task::InvalidTaskId,
    },
}

impl<'a> BatchQuery<'a> {
    /// Parses a batch body; `ids` may hold at most `max_ids` entries (duplicates included). Fields in
    /// `ignored` may come with `ids` (Suno's `action`); any other makes it a query the cache cannot
    /// answer.
    pub fn parse(body: &'a [u8], max_ids: usize, ignored: &[String]) -> Result<Self, BadBatch> {
        let fields: HashMap<String, &RawValue> = match serde_json::from_slice(body) {
            Ok(fields) => fields,
            Err(e) if e.is_data() => return Err(BadBatch::NotAnObject),
            Err(e) => return Err(BadBatch::Json(e.to_string())),
        };
        if fields
            .keys()
            .any(|key| key != "ids" && !ignored.iter().any(|i| i == key))
        {
            return Ok(BatchQuery::Other);
        }
        let raw_ids = fields.get("ids").ok_or(BadBatch::MissingIds)?;
        let Ids(ids) = serde_json::from_str(raw_ids.get()).map_err(|_| BadBatch::IdsNotStrings)?;
        if ids.len() > max_ids {
            return Err(BadBatch::TooManyIds {
                count: ids.len(),
                max: max_ids,
            });
        }
        let mut seen = HashSet::with_capacity(ids.len());
        let mut unique = Vec::with_capacity(ids.len());
        for (index, id) in ids.into_iter().enumerate() {
            TaskId::parse(&id).map_err(|reason| BadBatch::BadId { index, reason })?;
            if seen.insert(id.clone()) {
                unique.push(id);
            }
        }
        Ok(BatchQuery::Ids(unique))
    }
}

/// `ids` as serde reads it: borrowed from the body unless a string has escapes.
#[derive(serde::Deserialize)]
struct Ids<'a>(#[serde(borrow)] Vec<Cow<'a, str>>);

/// How one id of a batch is being answered.
enum Source {
    /// From the cache.
    Cached(Arc<CachedTask>),
    /// From a flight: this batch's own upstream call or another request's.
    Flight(Landing<Landed>),
}

/// Where each id of a batch gets its answer, decided before anything is awaited.
struct Plan<'a> {
    /// Per id, in request order: its source, and the stale answer to fall back on if that fails.
    sources: Vec<(Source, Option<Arc<CachedTask>>)>,
    /// The flights this batch leads: their ids go upstream.
    flights: Vec<(TaskId<'a>, Flight<Landed>)>,
    /// The statuses of refreshes that failed moments ago, whose stale answers stand in.
    held: Vec<u16>,
    /// Ids answered from the cache.
    cached: usize,
}

/// How a batch was served, counted as its answers came in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    ids: usize,
    /// From this replica's cache.
    cached: usize,
    /// Ids this batch led that another replica's answer (in the shared tier) settled.
    shared: usize,
    /// Ids this batch led (called the upstream or the shared tier for).
    led: usize,
    /// A failed refresh's status, when a stale answer stood in for at least one id.
    stale: Option<u16>,
}

impl Tally {
    /// The batch's `Cache-Status` (and so its metric label): stale when any id was, a hit when all
    /// came from the cache, shared when the rest came from other replicas, partial when some did,
    /// collapsed when every id was another request's flight, else a stored miss.
    fn status(self) -> CacheStatus {
        if let Some(fwd_status) = self.stale {
            CacheStatus::Stale { fwd_status }
        } else if self.cached == self.ids {
            CacheStatus::Hit { ttl: None }
        } else if self.cached + self.shared == self.ids {
            CacheStatus::Shared
        } else if self.cached + self.shared > 0 {
            CacheStatus::Partial
        } else if self.led == 0 {
            CacheStatus::Collapsed
        } else {
            CacheStatus::Miss {
                stored: true,
                fwd_status: None,
            }
        }
    }

    /// The upstream status the access log names: the failed refresh's, or 200 when this batch's own
    /// call answered.
    fn upstream_status(self) -> Option<u16> {
        self.stale.or((self.led > self.shared).then_some(200))
    }
}

impl Fetcher {
    /// The tasks of a batch query by `ids` of `family`, each from the cache or a flight, the ids
    /// nobody has asked of the upstream in calls of at most `batch.upstream_chunk`: one envelope back,
    /// in request order. `path` and `headers` are the client's, forwarded on those calls.
    pub async fn batch(
        self: &Arc<Self>,
        path: &str,
        headers: &HeaderMap,
        family: FamilyId,
        ids: &[TaskId<'_>],
        client: ClientInfo,
    ) -> Served {
        let fingerprint = self.fingerprinter.fingerprint(headers);
        let plan = self.plan(&fingerprint, family, ids);
        let Plan {
            sources,
            flights,
            held,
            cached,
        } = plan;
        let led = flights.len();
        self.metrics
            .task_lookups(family, Outcome::Hit, cached as u64);
        self.metrics.task_lookups(family, Outcome::Miss, led as u64);
        self.metrics.task_lookups(
            family,
            Outcome::Collapsed,
            (sources.len() - cached - led) as u64,
        );
        self.launch_batch_calls(path, headers, fingerprint, client, family, flights);
        let waiting = (sources.len() > cached + led).then(|| self.metrics.collapse_waiter());
        let mut tally = Tally {
            ids: ids.len(),
            cached,
            led,
            stale: held.first().copied(),
            ..Tally::default()
        };
        let tasks = match self
            .collect(&fingerprint, family, ids, sources, &mut tally)
            .await
        {
            Ok(tasks) => tasks,
            Err(served) => return served,
        };
        // Kept files' links as this client reaches the gateway (see `Fetcher::for_client`).
        let tasks: Vec<Arc<CachedTask>> = match self.keeper() {
            Some(keeper) => tasks
                .into_iter()
                .map(|task| {
                    keeper
                        .rebased(&task, family, headers, client.tls)
                        .unwrap_or(task)
                })
                .collect(),
            None => tasks,
        };
        drop(waiting);
        let status = tally.status();
        let families = self.families.load();
        let Some(spec) = families.get(family).batch() else {
            return Served::error(RequestError::Internal("the family has no batch route"));
        };
        Served::cached(
            batch_response(spec, &tasks, status),
            status,
            tally.upstream_status(),
        )
    }

    /// Looks every id up: fresh in the cache, held stale after a failed refresh, or joined to a
    /// flight (led by this batch when nobody else is fetching it).
    fn plan<'a>(
        &self,
        fingerprint: &CredentialFingerprint,
        family: FamilyId,
        ids: &[TaskId<'a>],
    ) -> Plan<'a> {
        let mut plan = Plan {
            sources: Vec::with_capacity(ids.len()),
            flights: Vec::new(),
            held: Vec::new(),
            cached: 0,
        };
        for &id in ids {
            let key = KeyBuf::new(fingerprint, TaskRef { family, id });
            let stale = match self.cache.lookup(key.as_bytes()) {
                Lookup::Fresh { task, .. } => {
                    plan.sources.push((Source::Cached(task), None));
                    plan.cached += 1;
                    continue;
                }
                other => other.stale(),
            };
            if let Some(stale) = &stale
                && let Some(status) = self.cache.refresh_deferred(key.as_bytes())
            {
                // A refresh failed moments ago: the stale answer stands in without a new call.
                plan.held.push(status);
                plan.sources.push((Source::Cached(Arc::clone(stale)), None));
                plan.cached += 1;
                continue;
            }
            match self.flights.join(key.as_bytes()) {
                Role::Follower(landing) => plan.sources.push((Source::Flight(landing), stale)),
                Role::Leader(flight) => {
                    // As for a fetch: a flight that landed since our lookup left its answer in the cache.
                    if let Lookup::Fresh { task, .. } = self.cache.lookup(key.as_bytes()) {
                        flight.land(Landed::Stored(Arc::clone(&task)));
                        plan.sources.push((Source::Cached(task), None));
                        plan.cached += 1;
                    } else {
                        plan.sources.push((Source::Flight(flight.landing()), stale));
                        plan.flights.push((id, flight));
                    }
                }
            }
        }
        plan
    }

    /// Waits for every source in order and gathers the tasks to answer with. `Err` is the answer
    /// instead: an upstream error that no stale answer can stand in for.
    async fn collect(
        &self,
        fingerprint: &CredentialFingerprint,
        family: FamilyId,
        ids: &[TaskId<'_>],
        sources: Vec<(Source, Option<Arc<CachedTask>>)>,
        tally: &mut Tally,
    ) -> Result<Vec<Arc<CachedTask>>, Served> {
        let families = self.families.load_full();
        let rules = families.get(family);
        let mut tasks = Vec::with_capacity(sources.len());
        for (index, (source, stale)) in sources.into_iter().enumerate() {
            let landed = match source {
                Source::Cached(task) => Landed::Stored(task),
                Source::Flight(landing) => match landing.wait().await {
                    Ok(landed) => landed,
                    Err(abandoned) => {
                        return Err(Served::bypass(
                            RequestError::from(abandoned).into_response(),
                        ));
                    }
                },
            };
            if let (Some(status), Some(stale)) = (failure_status(&landed), stale) {
                let id = ids[index];
                let key = KeyBuf::new(fingerprint, TaskRef { family, id });
                self.defer_refresh_if_failed(key.as_bytes(), &landed, true);
                tally.stale = Some(status);
                tasks.push(stale);
                continue;
            }
            match landed {
                // A "no such task" answer means the id is not visible: absent, as the upstream does.
                Landed::Stored(task) | Landed::Shared(task) if !task.is_task() => {}
                Landed::Stored(task) => tasks.push(task),
                Landed::Shared(task) => {
                    tally.shared += 1;
                    tasks.push(task);
                }
                Landed::NotReturned => {}
                Landed::Passed(reply) if means_absent(rules, &reply) => {}
                Landed::Passed(reply) => {
                    let status = reply.status.as_u16();
                    let not_stored = CacheStatus::Miss {
                        stored: false,
                        fwd_status: Some(status),
                    };
                    let response = passed_response(&reply, not_stored);
                    return Err(Served::cached(response, not_stored, Some(status)));
                }
                Landed::Failed(e) => {
                    let not_stored = CacheStatus::Miss {
                        stored: false,
                        fwd_status: None,
                    };
                    let mut response = RequestError::Upstream(e).into_response();
                    response
                        .headers_mut()
                        .insert(CACHE_STATUS.clone(), not_stored.header_value());
                    return Err(Served::cached(response, not_stored, None));
                }
            }
        }
        Ok(tasks)
    }

    /// Sends the ids this batch leads upstream, in concurrent calls of at most `batch.upstream_chunk` ids,
    /// each in a task of its own so the flights land whatever happens to this client.
    fn launch_batch_calls(
        self: &Arc<Self>,
        path: &str,
        headers: &HeaderMap,
        fingerprint: CredentialFingerprint,
        client: ClientInfo,
        family: FamilyId,
        flights: Vec<(TaskId<'_>, Flight<Landed>)>,
    ) {
        let mut flights = flights.into_iter().peekable();
        while flights.peek().is_some() {
            let chunk: Vec<(String, Flight<Landed>)> = flights
                .by_ref()
                .take(self.upstream_chunk)
                .map(|(id, flight)| (id.as_str().to_owned(), flight))
                .collect();
            let fetcher = Arc::clone(self);
            let path = path.to_owned();
            let headers = headers.clone();
            // In the request's span, like a fetch's flight: its log lines carry the request id.
            self.work.spawn(WorkKind::BatchChunk, async move {
                fetcher
                    .batch_call(&path, &headers, fingerprint, client, family, chunk)
                    .await;
            });
        }
    }

    /// Settles `chunk` from the shared tier where another replica has the answer, then makes one
    /// upstream `list-by-condition` call for the rest, under their leases.
    async fn batch_call(
        &self,
        path: &str,
        headers: &HeaderMap,
        fingerprint: CredentialFingerprint,
        client: ClientInfo,
        family: FamilyId,
        chunk: Vec<(String, Flight<Landed>)>,
    ) {
        let call = BatchCall {
            path,
            headers,
            fingerprint,
            client,
            family,
        };
        let Some(shared) = &self.shared else {
            return self.batch_upstream(call, chunk, Vec::new()).await;
        };
        let keys: Vec<CacheKey> = chunk.iter().map(|(_, f)| f.key().clone()).collect();
        let claims = shared.claim_many(&keys).await;
        let mut remaining = Vec::with_capacity(chunk.len());
        let mut leases = Vec::new();
        for ((id, flight), claim) in chunk.into_iter().zip(claims) {
            match claim {
                Claim::Found(task) => {
                    let held = self.cache.insert(flight.key().clone(), task);
                    let held = self.stored(flight.key(), family, held, Some((headers, client.tls)));
                    flight.land(Landed::Shared(held));
                }
                Claim::Lead(lease) => {
                    leases.extend(lease);
                    remaining.push((id, flight));
                }
            }
        }
        if !remaining.is_empty() {
            self.batch_upstream(call, remaining, leases).await;
        }
    }

    /// One upstream `list-by-condition` call for `chunk`; stores (and shares) each returned task, lands
    /// every flight, then gives up `leases`.
    async fn batch_upstream(
        &self,
        call: BatchCall<'_>,
        chunk: Vec<(String, Flight<Landed>)>,
        leases: Vec<Lease>,
    ) {
        let BatchCall {
            path,
            headers,
            fingerprint,
            client,
            family,
        } = call;
        let families = self.families.load_full();
        let family = families.get(family);
        let mut headers = headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let pool = self.pool_of(family.id());
        let call = |ids: &[&str], member: MemberId| {
            let body = Bytes::from(serde_json::json!({ "ids": ids }).to_string());
            let headers = &headers;
            let fingerprint = &fingerprint;
            async move {
                pool.member(member)
                    .upstream
                    .call_buffered(BufferedCall {
                        route: RouteLabel::Batch,
                        credential: fingerprint,
                        method: Method::POST,
                        path_and_query: path,
                        headers,
                        client,
                        body,
                    })
                    .await
                    .map_err(|e| pool.blame(member, e))
            }
        };
        // By owner: each member is asked for its own tasks; the ids no submit here made go to every
        // member, and each lands with the answer of the member that returned it.
        let mut owned: Vec<Vec<(String, Flight<Landed>)>> =
            (0..pool.members().len()).map(|_| Vec::new()).collect();
        let mut unknown = Vec::new();
        for (id, flight) in chunk {
            match pool.owner(family.id(), &id) {
                Some(member) => owned[member].push((id, flight)),
                None => unknown.push((id, flight)),
            }
        }
        // Owners another replica recorded, in one round trip.
        if let Some(shared) = self.shared.as_ref().filter(|_| !unknown.is_empty()) {
            let ids: Vec<&str> = unknown.iter().map(|(id, _)| id.as_str()).collect();
            let recorded = shared.owners(family.id(), &ids).await;
            let mut still = Vec::with_capacity(unknown.len());
            for ((id, flight), name) in unknown.into_iter().zip(recorded) {
                match name.and_then(|name| pool.named(&name)) {
                    Some(member) => {
                        pool.remember(family.id(), &id, member);
                        owned[member].push((id, flight));
                    }
                    None => still.push((id, flight)),
                }
            }
            unknown = still;
        }
        let calls = owned
            .into_iter()
            .enumerate()
            .filter(|(_, chunk)| !chunk.is_empty())
            .map(|(member, chunk)| async move {
                let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
                let reply = call(&ids, member).await;
                vec![(reply, chunk)]
            });
        let unknown = async {
            if unknown.is_empty() {
                return Vec::new();
            }
            let ids: Vec<&str> = unknown.iter().map(|(id, _)| id.as_str()).collect();
            let replies = futures_util::future::join_all(
                (0..pool.members().len()).map(|member| call(&ids, member)),
            )
            .await;
            self.assign_to_finders(family, replies, unknown).await
        };
        let (landings, unknown) = shared::under_lease(&leases, async {
            futures_util::future::join(futures_util::future::join_all(calls), unknown).await
        })
        .await;
        let mut stored = Vec::new();
        for (reply, chunk) in landings.into_iter().flatten().chain(unknown) {
            match reply {
                Err(e) => {
                    e.log();
                    for (_, flight) in chunk {
                        flight.land(Landed::Failed(e.clone()));
                    }
                }
                Ok(reply) => stored.extend(self.land_batch_reply(
                    family,
                    reply,
                    chunk,
                    (&headers, client.tls),
                )),
            }
        }
        if let Some(shared) = &self.shared {
            let answers: Vec<(&CacheKey, &CachedTask)> =
                stored.iter().map(|(key, task)| (key, &**task)).collect();
            shared.publish(&answers).await;
        }
        futures_util::future::join_all(leases.into_iter().map(Lease::release)).await;
    }

    /// Pairs each id every member was asked for with the answer of the first member (in pool order)
    /// that returned it, remembering that member as its owner; ids no member returned go with the
    /// first member's answer (its "not returned", or its error).
    async fn assign_to_finders(
        &self,
        family: &Family,
        replies: Vec<Result<BufferedReply, UpstreamError>>,
        chunk: Vec<(String, Flight<Landed>)>,
    ) -> Vec<MemberLanding> {
        let found: Vec<Option<HashMap<String, Item>>> = replies
            .iter()
            .map(|reply| {
                let reply = reply.as_ref().ok()?;
                (reply.status == StatusCode::OK && is_identity(&reply.headers))
                    .then(|| split_tasks(family, &reply.body))
                    .flatten()
            })
            .collect();
        let pool = self.pool_of(family.id());
        let mut assigned: Vec<Vec<(String, Flight<Landed>)>> =
            replies.iter().map(|_| Vec::new()).collect();
        let mut found_owners = Vec::new();
        let mut nowhere = 0;
        for (id, flight) in chunk {
            let finder = found
                .iter()
                .position(|tasks| tasks.as_ref().is_some_and(|t| t.contains_key(&id)));
            if let Some(member) = finder {
                pool.remember(family.id(), &id, member);
                found_owners.push((id.clone(), member));
                self.metrics
                    .members
                    .owner_lookups
                    .with_label_values(&[pool.member(member).name.as_str(), "found"])
                    .inc();
            } else {
                nowhere += 1;
            }
            assigned[finder.unwrap_or(0)].push((id, flight));
        }
        self.metrics
            .members
            .owner_lookups
            .with_label_values(&["none", "nowhere"])
            .inc_by(nowhere);
        if let Some(shared) = self.shared.as_ref().filter(|_| !found_owners.is_empty()) {
            let named: Vec<(&str, &str)> = found_owners
                .iter()
                .map(|(id, member)| (id.as_str(), pool.member(*member).name.as_str()))
                .collect();
            shared.set_owners(family.id(), &named).await;
        }
        replies
            .into_iter()
            .zip(assigned)
            .filter(|(_, chunk)| !chunk.is_empty())
            .collect()
    }

    /// Lands every flight of `chunk` from one upstream batch answer, storing the tasks it holds;
    /// the tasks stored, to share.
    fn land_batch_reply(
        &self,
        family: &Family,
        reply: BufferedReply,
        chunk: Vec<(String, Flight<Landed>)>,
        client: (&HeaderMap, bool),
    ) -> Vec<(CacheKey, Arc<CachedTask>)> {
        let mut stored = Vec::new();
        let tasks = (reply.status == StatusCode::OK && is_identity(&reply.headers))
            .then(|| split_tasks(family, &reply.body))
            .flatten();
        match tasks {
            // A 2xx that is not the family's batch answer (an HTML page, a router's error
            // object, an error envelope): no usable answer. Passing it on would read as "none
            // of these ids exist"; it is a 502 (or a stale answer) instead.
            None if reply.status.is_success() => {
                let error = UpstreamError::unreachable(
                    "the upstream's batch answer was not a list of tasks",
                    format!("status {}, {} bytes", reply.status, reply.body.len()),
                );
                error.log();
                for (_, flight) in chunk {
                    flight.land(Landed::Failed(error.clone()));
                }
            }
            // An error status (a 4xx, a 5xx, a 429): passed on, nothing stored.
            None => {
                let reply = Arc::new(reply);
                for (_, flight) in chunk {
                    flight.land(Landed::Passed(Arc::clone(&reply)));
                }
            }
            Some(mut tasks) => {
                let content_type = reply.headers.get(CONTENT_TYPE).map(compact_header);
                for (id, flight) in chunk {
                    match tasks.remove(id.as_str()) {
                        Some(item) => {
                            if item.class() == TaskClass::Terminal {
                                self.pool_of(family.id()).finished(family.id(), &id);
                            }
                            let task = Arc::new(item.into_task(content_type.clone()));
                            let held = self.cache.insert(flight.key().clone(), Arc::clone(&task));
                            if Arc::ptr_eq(&held, &task) {
                                stored.push((flight.key().clone(), task));
                            }
                            let held = self.stored(flight.key(), family.id(), held, Some(client));
                            flight.land(Landed::Stored(held));
                        }
                        None => flight.land(Landed::NotReturned),
                    }
                }
            }
        }
        stored
    }
}

/// One member's batch answer and the flights it lands.
type MemberLanding = (
    Result<BufferedReply, UpstreamError>,
    Vec<(String, Flight<Landed>)>,
);

/// One task of an upstream batch answer, as a status answer of its family would carry it.
pub struct Item {
    body: Bytes,
    span: std::ops::Range<usize>,
    classified: Classified,
}

impl Item {
    fn into_task(self, content_type: Option<HeaderValue>) -> CachedTask {
        CachedTask::new(self.body, content_type, self.classified.class)
            .keep_until(self.classified.keep_until)
            .task_at(self.span)
    }

    pub fn class(&self) -> TaskClass {
        self.classified.class
    }

    /// The status answer this item is stored as.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Splits an upstream batch answer into its tasks, by id, each wrapped as the family's status answer.
/// `None` when the answer holds no array where the family's batch says (a router's error object, a
/// `"data": null`... is that: no tasks, but also nothing to trust). Items that are not tasks are skipped.
pub fn split_tasks(family: &Family, body: &[u8]) -> Option<HashMap<String, Item>> {
    let batch = family.batch()?;
    let raw = raw_at(body, &batch.items_at)?;
    // new-api answers `"data": null` when none of the ids is the caller's; an error envelope has a
    // null there too, so only the family's own empty answer means "none found".
    if raw == "null" {
        return batch.is_empty_answer(body).then(HashMap::new);
    }
    let items: Vec<&RawValue> = serde_json::from_str(raw).ok()?;
    let mut tasks = HashMap::with_capacity(items.len());
    for item in items {
        let Ok(value) = serde_json::from_str::<Value>(item.get()) else {
            continue;
        };
        let Some((id, classified)) = family.classify_item(&value, batch) else {
            continue;
        };
        // The item's own bytes, copied: a cached task must not pin the whole batch answer in memory.
        let (wrapped, span) = family.wrap_task(item.get().as_bytes());
        tasks.insert(
            id,
            Item {
                body: Bytes::from(wrapped),
                span,
                classified,
            },
        );
    }
    Some(tasks)
}

/// Whether a passed-on answer for one id means "absent" in a batch: the family's "no such task"
/// shapes (as fetches recognise them), or a 2xx that is not that task's object. Anything else, a real
/// `400` among them, is an error the batch passes on.
fn means_absent(family: &Family, reply: &BufferedReply) -> bool {
    reply.status.is_success() || family.is_not_found(reply.status.as_u16(), &reply.body)
}

/// The family's batch answer around the tasks' objects, in order.
fn batch_response(
    spec: &Batch,
    tasks: &[Arc<CachedTask>],
    status: CacheStatus,
) -> Response<ResponseBody> {
    let len = tasks
        .iter()
        .map(|t| t.task_bytes().len() + 1)
        .sum::<usize>();
    let mut items = BytesMut::with_capacity(len);
    for (i, task) in tasks.iter().enumerate() {
        if i > 0 {
            items.put_u8(b',');
        }
        items.put_slice(task.task_bytes());
    }
    let body = Bytes::from(spec.answer(&items, tasks.len()));
    // A tag over the returned tasks: unchanged while every one of them is.
    let etag = etag_of(&body);
    let mut response = Response::new(ResponseBody::full(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(http::header::ETAG, etag);
    headers.insert(http::header::CACHE_CONTROL, PRIVATE.clone());
    headers.insert(CACHE_STATUS.clone(), status.header_value());
    response
}

/// What one upstream batch call is made with.
struct BatchCall<'a> {
    path: &'a str,
    headers: &'a HeaderMap,
    fingerprint: CredentialFingerprint,
    client: ClientInfo,
    family: FamilyId,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(query: BatchQuery<'_>) -> Vec<String> {
        match query {
            BatchQuery::Ids(ids) => ids.into_iter().map(Cow::into_owned).collect(),
            BatchQuery::Other => panic!("expected ids"),
        }
    }

    #[test]
    fn parses_ids_in_order_without_duplicates() {
        let q = BatchQuery::parse(br#"{"ids":["b","a","b","c"]}"#, 10, &[]).unwrap();
        assert_eq!(ids(q), ["b", "a", "c"]);
        assert!(ids(BatchQuery::parse(br#"{"ids":[]}"#, 10, &[]).unwrap()).is_empty());
        assert_eq!(
            ids(BatchQuery::parse(br#"{"ids":["a\u0062"]}"#, 10, &[]).unwrap()),
            ["ab"],
            "escaped ids are decoded"
        );
    }

    #[test]
    fn other_conditions_pass_through() {
        assert_eq!(
            BatchQuery::parse(br#"{"ids":["a"],"status":"SUCCESS"}"#, 10, &[]),
            Ok(BatchQuery::Other)
        );
        assert_eq!(
            BatchQuery::parse(br#"{"status":"SUCCESS"}"#, 10, &[]),
            Ok(BatchQuery::Other)
        );
    }

    #[test]
    fn refuses_each_kind_of_bad_body() {
        let parse = |body: &'static [u8]| BatchQuery::parse(body, 3, &[]);
        assert!(matches!(parse(b"{\"ids\":"), Err(BadBatch::Json(_))));
        assert!(matches!(parse(b"not json"), Err(BadBatch::Json(_))));
        assert_eq!(parse(b"[1,2]"), Err(BadBatch::NotAnObject));
        assert_eq!(parse(b"\"ids\""), Err(BadBatch::NotAnObject));
        assert_eq!(parse(b"{}"), Err(BadBatch::MissingIds));
        assert_eq!(parse(br#"{"ids":"a"}"#), Err(BadBatch::IdsNotStrings));
        assert_eq!(parse(br#"{"ids":[1]}"#), Err(BadBatch::IdsNotStrings));
        assert_eq!(parse(br#"{"ids":null}"#), Err(BadBatch::IdsNotStrings));
        assert_eq!(
            parse(br#"{"ids":["a","b","c","d"]}"#),
            Err(BadBatch::TooManyIds { count: 4, max: 3 })
        );
        assert!(matches!(
            parse(br#"{"ids":["ok","bad/id"]}"#),
            Err(BadBatch::BadId { index: 1, .. })
        ));
    }

    #[test]
    fn splits_an_upstream_array_by_id() {
        let body = br#"[{"id":"a","status":"SUCCESS"} , {"id":"b","status":"IN_PROGRESS","x":[1,{"y":2}]},7,{"no":"id"},["c","SUCCESS"]]"#;
        let families = crate::family::Families::builtin();
        let mj = families.by_name("midjourney").unwrap();
        let tasks = split_tasks(mj, body).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks["a"].body(), br#"{"id":"a","status":"SUCCESS"}"#);
        assert_eq!(tasks["a"].class(), TaskClass::Terminal);
        assert_eq!(
            tasks["b"].body(),
            br#"{"id":"b","status":"IN_PROGRESS","x":[1,{"y":2}]}"#,
            "the upstream's own bytes"
        );
        assert_eq!(tasks["b"].class(), TaskClass::InProgress);
        assert!(split_tasks(mj, br#"{"code":4}"#).is_none());
    }

    #[test]
    fn splits_a_suno_answer_into_status_answers() {
        let families = crate::family::Families::builtin();
        let suno = families.by_name("suno").unwrap();
        let body = br#"{"code":"success","message":"","data":[{"task_id":"a","status":"SUCCESS"},{"task_id":"b","status":"queued"}]}"#;
        let tasks = split_tasks(suno, body).unwrap();
        assert_eq!(
            tasks["a"].body(),
            br#"{"code":"success","message":"","data":{"task_id":"a","status":"SUCCESS"}}"#
        );
        assert_eq!(tasks["a"].class(), TaskClass::Terminal);
        assert_eq!(tasks["b"].class(), TaskClass::InProgress);
        let none = br#"{"code":"success","message":"","data":null}"#;
        assert!(
            split_tasks(suno, none).unwrap().is_empty(),
            "none of the ids found"
        );
        assert!(split_tasks(suno, br#"{"code":"error","data":"x"}"#).is_none());
    }

    #[test]
    fn ignored_fields_keep_a_batch_cacheable() {
        let action = ["action".to_owned()];
        let q = BatchQuery::parse(br#"{"ids":["a"],"action":"MUSIC"}"#, 10, &action).unwrap();
        assert_eq!(ids(q), ["a"]);
        assert_eq!(
            BatchQuery::parse(br#"{"ids":["a"],"action":"MUSIC"}"#, 10, &[]),
            Ok(BatchQuery::Other)
        );
    }

    #[test]
    fn a_batch_is_named_by_where_its_ids_came_from() {
        let tally = |cached, shared, led, stale| Tally {
            ids: 4,
            cached,
            shared,
            led,
            stale,
        };
        let outcome = |t: Tally| t.status().outcome();
        assert_eq!(outcome(tally(4, 0, 0, None)), Outcome::Hit);
        assert_eq!(outcome(tally(2, 2, 2, None)), Outcome::Shared);
        assert_eq!(outcome(tally(1, 0, 3, None)), Outcome::Partial);
        assert_eq!(outcome(tally(0, 1, 3, None)), Outcome::Partial);
        assert_eq!(outcome(tally(0, 0, 0, None)), Outcome::Collapsed);
        assert_eq!(outcome(tally(0, 0, 4, None)), Outcome::Miss);
        assert_eq!(
            outcome(tally(4, 0, 0, Some(503))),
            Outcome::Stale,
            "stale wins"
        );
        assert_eq!(tally(0, 0, 4, None).upstream_status(), Some(200));
        assert_eq!(
            tally(0, 4, 4, None).upstream_status(),
            None,
            "Redis answered"
        );
        assert_eq!(tally(4, 0, 0, Some(429)).upstream_status(), Some(429));
        assert_eq!(
            tally(1, 0, 3, None).status().header_value(),
            CacheStatus::Partial.header_value()
        );
    }
}
