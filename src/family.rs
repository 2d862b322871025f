//! Task APIs ("families") as data. A family is a description: its status routes, where the status and
//! the id sit in an answer, which values mean finished, what "no such task" looks like, when a finished
//! answer stops being good, and optionally a batch route. Midjourney is one such description; the
//! built-in ones live in `family/builtin.toml`, and operators add theirs under `[families.<name>]` in
//! the same shape. Nothing else in the gateway knows one task API from another.

pub mod expiry;
pub mod results;
mod route;
pub mod submit;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::task::{TaskClass, TaskId};
pub use route::{At, Matched, RouteKind};
pub use submit::{Submit, SubmitMatch};

/// The longest a family's `finished_ttl` may be (ten years: past it, timers overflow).
const MAX_FINISHED_TTL: Duration = Duration::from_secs(3650 * 86_400);

/// Most families one gateway serves: the family's number is one byte of every cache key.
pub const MAX_FAMILIES: usize = 64;

/// The built-in descriptions, parsed by the same code as an operator's.
const BUILTIN: &str = include_str!("family/builtin.toml");

/// Finished-with-success values every family without its own list uses (case-insensitive).
const SUCCESS: [&str; 5] = ["SUCCESS", "succeeded", "succeed", "completed", "complete"];
/// Finished-with-failure values every family without its own list uses (case-insensitive).
const FAILURE: [&str; 7] = [
    "FAILURE",
    "failed",
    "error",
    "CANCEL",
    "cancelled",
    "canceled",
    "expired",
];

/// A task of a family: what the cache, the flights and the watchers key on (the same id under two
/// families is two tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskRef<'a> {
    pub family: FamilyId,
    pub id: TaskId<'a>,
}

/// A family's number: its place in [`Families`], one byte of its cache keys and its metrics' index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FamilyId(pub u8);

impl FamilyId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// One family as written in TOML (built-in or `[families.<name>]`). Every key is optional so that an
/// operator can override one key of a built-in family; a new family must name its routes and statuses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilySpec {
    pub enabled: Option<bool>,
    /// Path templates with one `{id}` segment (`/suno/fetch/{id}`), or a path and a query parameter
    /// (`/v1/video/query?id={id}`).
    pub status_routes: Option<Vec<String>>,
    /// The gateway's own event-stream routes (Midjourney's `/mj/task/{id}/events`).
    pub events_routes: Option<Vec<String>>,
    /// A status route asked for `text/event-stream` is the task's event stream (default true).
    pub events_by_accept: Option<bool>,
    /// Routes that are a task's result file itself (`/v1/videos/{id}/content`), answered from the
    /// kept files: downloaded from the upstream once per credential and query, then served with
    /// ranges from the store.
    pub download_routes: Option<Vec<String>>,
    /// Routes may follow one mode segment (`/mj-fast/mj/task/{id}/fetch`).
    pub mode_prefix: Option<bool>,
    /// JSON pointers to the status, tried in order.
    pub status_at: Option<Vec<String>>,
    /// JSON pointers to the task id: an answer naming another id is not stored.
    pub id_at: Option<Vec<String>>,
    /// JSON pointers to the task's progress, tried in order: a webhook event is a change of status
    /// or of this (unset: of status only), not of any byte (new-api appends `?rand=` to running
    /// answers' URLs).
    pub progress_at: Option<Vec<String>>,
    pub success: Option<Vec<String>>,
    pub failure: Option<Vec<String>>,
    pub not_found: Option<Vec<NotFoundShape>>,
    /// JSON pointers to the moment a finished answer's result expires (Unix seconds or milliseconds,
    /// or RFC 3339).
    pub expires_at: Option<Vec<String>>,
    /// Read the expiry of signed URLs (`X-Amz-Date` + `X-Amz-Expires`, `Expires=`) in finished answers.
    pub signed_urls: Option<bool>,
    /// JSON pointers (a `*` segment for every element) to the result files' URLs in a finished answer.
    pub results: Option<Vec<String>>,
    /// When the files `results` names are kept: `eager` (downloaded when the task is stored
    /// finished; the default), `lazy` (when a client first asks for one: large videos few open), or
    /// `off` (the upstream's links stay).
    pub artifacts: Option<KeepFiles>,
    /// The longest a finished answer is kept (unset: until evicted or expired).
    #[serde(default, with = "humantime_serde")]
    pub finished_ttl: Option<Duration>,
    /// JSON pointer to the task object inside a status answer (`/data` in new-api's envelope).
    pub task_at: Option<String>,
    /// A status answer built around one task object (`{task}`), for tasks that arrive in a batch.
    pub task_answer: Option<String>,
    pub batch: Option<BatchSpec>,
    /// The family's submit routes: the requests that start a task (webhooks take their callback
    /// field over; idempotency keys apply to them).
    pub submit: Option<SubmitSpec>,
    /// The pool its requests go to (`[upstreams.<name>]`; unset: the default pool, `[upstream]`).
    /// Passthrough requests under the family's path prefix go there too.
    pub upstream: Option<String>,
}

/// When a family's result files are kept (`families.<name>.artifacts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepFiles {
    /// Downloaded as soon as the task is stored finished.
    #[default]
    Eager,
    /// Linked at once, downloaded when a client first opens the link.
    Lazy,
    /// Not kept: the answer keeps the upstream's links.
    Off,
}

/// A family's submits: which requests start a task, where the client's callback URL is in their
/// body, where the task id is in the upstream's answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitSpec {
    /// `POST` paths of the family's submits: exact, or ending in `/*` (one last segment of any name).
    pub routes: Option<Vec<String>>,
    /// The top-level field of a submit's JSON body holding the client's callback URL, if the API takes
    /// one.
    pub callback_field: Option<String>,
    /// JSON pointers to the task id in the upstream's answer to a submit.
    pub id_at: Option<Vec<String>>,
    /// A JSON pointer to what says whether the upstream took the task (Midjourney's `/code`) ...
    pub accepted_at: Option<String>,
    /// ... and the values that say it did (compared as text: `1`, `21`, `22`).
    pub accepted: Option<Vec<String>>,
    /// JSON pointers to a parent task in the submit's own body (Midjourney's `/taskId` of an action or
    /// a modal): with a pool, such a submit goes to the member that owns the parent.
    pub parent_at: Option<Vec<String>>,
}

/// One way the upstream says "no such task": a status, and optionally what the body is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotFoundShape {
    pub status: u16,
    /// The body contains this text (searched in its first 4 KiB).
    pub contains: Option<String>,
    /// The body is empty (or whitespace).
    #[serde(default)]
    pub empty: bool,
}

/// A family's batch route: `POST {route}` with `{"ids": [...]}`, answered per id from the cache.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    pub route: Option<String>,
    /// JSON pointer to the array of tasks in the upstream's batch answer (`""`: the answer is one).
    pub items_at: Option<String>,
    /// Request fields besides `ids` that do not change the answer (others make it passthrough).
    pub ignore_fields: Option<Vec<String>>,
    /// The answer around the tasks (`{items}`, a JSON array).
    pub answer: Option<String>,
    /// The answer when no task was found (default: `answer` around `[]`).
    pub answer_when_empty: Option<String>,
}

/// Why a family description was refused; `key` is the dotted config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct FamilyError {
    pub key: String,
    pub reason: String,
}

/// A validated family.
#[derive(Debug)]
pub struct Family {
    name: String,
    id: FamilyId,
    status_at: Vec<String>,
    id_at: Vec<String>,
    progress_at: Vec<String>,
    success: Vec<String>,
    failure: Vec<String>,
    not_found: Vec<NotFoundShape>,
    expires_at: Vec<String>,
    signed_urls: bool,
    results: Vec<results::ResultPointer>,
    finished_ttl: Option<Duration>,
    keep_files: KeepFiles,
    task_at: String,
    /// `task_answer` split around `{task}`.
    task_answer: (String, String),
    batch: Option<Batch>,
    submit: Option<Submit>,
    /// `upstream`: the named pool it goes to; `None`, the default pool.
    upstream: Option<String>,
    /// The longest path prefix, ending at a `/`, all its routes share (`/mj/`, `/suno/`,
    /// `/v1/videos/`): passthrough requests under it go to the family's pool.
    prefix: String,
}

/// A validated batch route.
#[derive(Debug)]
pub struct Batch {
    pub items_at: String,
    pub ignore_fields: Vec<String>,
    /// `answer` split around `{items}`.
    answer: (String, String),
    answer_when_empty: Option<String>,
    /// `answer_when_empty` parsed, to recognise the upstream's own "none found".
    empty_answer: Option<Value>,
    /// The family's `status_at` and `id_at` inside one item (with `task_at` taken off).
    item_status_at: Vec<String>,
    item_id_at: Vec<String>,
}

/// What a status answer says about its task, read once when it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub class: TaskClass,
    /// When a finished answer stops being servable: its result expires, or the family's cap.
    pub keep_until: Option<Instant>,
}

impl Family {
    /// The named pool this family's requests go to; `None`: the default pool.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// The path prefix its routes share (see [`routes_prefix`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The length of its prefix when `path` lies under it (`/v1/videos` itself too); `None`
    /// otherwise, and for a family whose routes share nothing but `/`.
    pub fn claims(&self, path: &str) -> Option<usize> {
        let prefix = self.prefix.as_str();
        let under = path.starts_with(prefix) || path == &prefix[..prefix.len() - 1];
        (prefix.len() > 1 && under).then_some(prefix.len())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> FamilyId {
        self.id
    }

    /// When this family's result files are kept.
    pub fn keep_files(&self) -> KeepFiles {
        self.keep_files
    }

    pub fn batch(&self) -> Option<&Batch> {
        self.batch.as_ref()
    }

    pub fn submit(&self) -> Option<&Submit> {
        self.submit.as_ref()
    }

    /// The class of a status value, compared case-insensitively; anything unknown is running.
    pub fn class_of(&self, status: &str) -> TaskClass {
        let listed = |values: &[String]| values.iter().any(|v| v.eq_ignore_ascii_case(status));
        if listed(&self.success) || listed(&self.failure) {
            TaskClass::Terminal
        } else {
            TaskClass::InProgress
        }
    }

    /// Classifies a `200` status answer fetched for `expected_id`, or `None` when it is not that task's
    /// answer (not a JSON object, another id, or neither an id nor a status: a router's error object).
    pub fn classify(&self, body: &[u8], expected_id: &str) -> Option<Classified> {
        let value = json_object(body)?;
        self.classify_value(&value, &self.status_at, &self.id_at, expected_id)
    }

    fn classify_value(
        &self,
        value: &Value,
        status_at: &[String],
        id_at: &[String],
        expected_id: &str,
    ) -> Option<Classified> {
        let id = first_text(value, id_at);
        if id.as_deref().is_some_and(|id| id != expected_id) {
            return None;
        }
        let class = match first_text(value, status_at) {
            Some(status) => self.class_of(&status),
            // An answer naming the task but no status yet (new-api right after a submit): running.
            None if id.is_some() => TaskClass::InProgress,
            None => return None,
        };
        let keep_until = (class == TaskClass::Terminal)
            .then(|| self.keep_until(value))
            .flatten();
        Some(Classified { class, keep_until })
    }

    /// The moment a finished answer stops being servable, if any: the earliest of its `expires_at`,
    /// its signed URLs' expiry and the family's `finished_ttl`.
    fn keep_until(&self, value: &Value) -> Option<Instant> {
        self.keep_until_from(value, Instant::now())
    }

    /// [`keep_until`](Self::keep_until) of a finished answer rewritten after it was stored at
    /// `stored_at` (its kept files now point at the gateway, whose links do not expire): what is
    /// still stated in it, and the family's cap counted from when it was first stored.
    pub fn rewritten_keep_until(&self, body: &[u8], stored_at: Instant) -> Option<Instant> {
        self.keep_until_from(&json_object(body)?, stored_at)
    }

    fn keep_until_from(&self, value: &Value, stored_at: Instant) -> Option<Instant> {
        let capped = self.finished_ttl.map(|ttl| stored_at + ttl);
        let stated = self
            .expires_at
            .iter()
            .filter_map(|pointer| value.pointer(pointer).and_then(expiry::moment))
            .chain(
                self.signed_urls
                    .then(|| expiry::signed_urls(value))
                    .flatten(),
            )
            .min()
            .map(expiry::instant_of);
        capped.into_iter().chain(stated).min()
    }

    /// The result files a status answer names (its `results` pointers, from the answer's root), each
    /// URL once. Empty for an answer that is not JSON.
    pub fn result_urls(&self, body: &[u8]) -> Vec<results::ResultUrl> {
        if self.results.is_empty() {
            return Vec::new();
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(answer) => results::result_urls(&self.results, &answer),
            Err(_) => Vec::new(),
        }
    }

    /// The task id a status answer names, if it names one.
    pub fn task_id_in(&self, body: &[u8]) -> Option<String> {
        first_text(&json_object(body)?, &self.id_at).map(std::borrow::Cow::into_owned)
    }

    /// What a change of an answer is measured by: its status and, where the family says where it is,
    /// its progress.
    pub fn state_of(&self, body: &[u8]) -> (Option<String>, Option<String>) {
        let Some(value) = json_object(body) else {
            return (None, None);
        };
        let text =
            |pointers: &[String]| first_text(&value, pointers).map(std::borrow::Cow::into_owned);
        (text(&self.status_at), text(&self.progress_at))
    }

    /// The status value of a status answer, if it has one.
    pub fn status_text(&self, body: &[u8]) -> Option<String> {
        first_text(&json_object(body)?, &self.status_at).map(std::borrow::Cow::into_owned)
    }

    /// Whether an answer that is not a task object is one of this API's "no such task" shapes.
    pub fn is_not_found(&self, status: u16, body: &[u8]) -> bool {
        self.not_found.iter().any(|shape| {
            shape.status == status
                && (!shape.empty || body.iter().all(u8::is_ascii_whitespace))
                && shape.contains.as_deref().is_none_or(|text| {
                    let head = &body[..body.len().min(4096)];
                    head.windows(text.len().max(1))
                        .any(|w| w == text.as_bytes())
                })
        })
    }

    /// The task object inside a status answer, as a range of its bytes (for batch answers), when the
    /// answer is a JSON object holding one at `task_at`.
    pub fn task_span(&self, body: &[u8]) -> Option<std::ops::Range<usize>> {
        if self.task_at.is_empty() {
            return Some(0..body.len());
        }
        let raw = raw_at(body, &self.task_at)?;
        let start = raw.as_ptr() as usize - body.as_ptr() as usize;
        Some(start..start + raw.len())
    }

    /// A status answer around one task object that arrived in a batch answer.
    pub fn wrap_task(&self, task: &[u8]) -> (Vec<u8>, std::ops::Range<usize>) {
        let (before, after) = &self.task_answer;
        let mut body = Vec::with_capacity(before.len() + task.len() + after.len());
        body.extend_from_slice(before.as_bytes());
        body.extend_from_slice(task);
        body.extend_from_slice(after.as_bytes());
        (body, before.len()..before.len() + task.len())
    }

    /// Classifies one task of a batch answer (its own id and status, inside the item).
    pub fn classify_item(&self, item: &Value, batch: &Batch) -> Option<(String, Classified)> {
        let id = first_text(item, &batch.item_id_at)?;
        let classified =
            self.classify_value(item, &batch.item_status_at, &batch.item_id_at, &id)?;
        Some((id.into_owned(), classified))
    }
}

impl Batch {
    /// Whether an upstream batch answer is this family's answer for "none found"
    /// (`answer_when_empty`, compared as JSON).
    pub fn is_empty_answer(&self, body: &[u8]) -> bool {
        let Some(empty) = &self.empty_answer else {
            return false;
        };
        serde_json::from_slice::<Value>(body).is_ok_and(|answer| answer == *empty)
    }

    /// The batch answer around `items` (the tasks, comma-separated, without brackets).
    pub fn answer(&self, items: &[u8], count: usize) -> Vec<u8> {
        if count == 0
            && let Some(empty) = &self.answer_when_empty
        {
            return empty.as_bytes().to_vec();
        }
        let (before, after) = &self.answer;
        let mut body = Vec::with_capacity(before.len() + items.len() + after.len() + 2);
        body.extend_from_slice(before.as_bytes());
        body.push(b'[');
        body.extend_from_slice(items);
        body.push(b']');
        body.extend_from_slice(after.as_bytes());
        body
    }
}

/// The first string (or number, as text) found at one of `pointers`.
fn first_text<'v>(value: &'v Value, pointers: &[String]) -> Option<std::borrow::Cow<'v, str>> {
    pointers
        .iter()
        .find_map(|pointer| match value.pointer(pointer)? {
            Value::String(text) => Some(std::borrow::Cow::Borrowed(text.as_str())),
            Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
            _ => None,
        })
}

/// `body` as a JSON value, if it is an object (serde would take an array for a struct, too).
pub fn json_object(body: &[u8]) -> Option<Value> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// The raw text of the value at `pointer` (object keys only) inside `body`.
pub fn raw_at<'b>(body: &'b [u8], pointer: &str) -> Option<&'b str> {
    let mut current: &serde_json::value::RawValue = serde_json::from_slice(body).ok()?;
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        let fields: BTreeMap<std::borrow::Cow<'_, str>, &serde_json::value::RawValue> =
            serde_json::from_str(current.get()).ok()?;
        current = fields.get(token.as_str())?;
    }
    Some(current.get())
}

/// Every family the gateway serves, in number order, and the route table over them.
#[derive(Clone)]
pub struct Families {
    inner: Arc<Inner>,
}

struct Inner {
    /// By number. A family a reload took away stays here, [`retired`](Inner::retired), so that a
    /// number is never reused for another family while entries filed under it may still exist.
    families: Vec<Arc<Family>>,
    retired: Vec<bool>,
    routes: route::Table,
    /// Whether any family has submit routes (a `POST` elsewhere then needs no look).
    any_submit: bool,
    /// `[families]` as the file had it, to build the set again over a running one ([`Families::rebase`]).
    overrides: toml::Table,
}

/// The families as the config file has them: by name, the ones in force only, so that two configs
/// compare (and `check-config --diff` reads) key by key whatever their numbers.
impl fmt::Debug for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Families");
        for family in self.live() {
            out.field(&family.name, family);
        }
        out.finish()
    }
}

impl Families {
    /// The built-in families with `overrides` (`[families.<name>]`, as TOML) applied: a key of a
    /// built-in family replaces its own whole (a table such as `batch` included), other names add
    /// families, `enabled = false` turns one off. The merge is of TOML tables, before anything is
    /// typed, so a new key of a description is one field of [`FamilySpec`] and nothing else.
    pub fn new(overrides: toml::Table) -> Result<Self, FamilyError> {
        Self::build(overrides, None)
    }

    /// The same families built over `running` (a reload's): a family both have keeps its number,
    /// a new one takes a number never used, and one `running` has that this set lacks stays retired
    /// under its own (and has it back if a later reload restores it). A number so never names two
    /// families, and the cache's keys and the metrics, filed by number, stay true.
    pub fn rebase(&self, running: &Families) -> Result<Self, FamilyError> {
        Self::build(self.inner.overrides.clone(), Some(running))
    }

    fn build(overrides: toml::Table, running: Option<&Families>) -> Result<Self, FamilyError> {
        // The built-in file's own order (`preserve_order`): the built-ins come first and keep their
        // numbers whatever the operator adds.
        let mut merged: toml::Table = toml::from_str(BUILTIN).map_err(|e| FamilyError {
            key: "families".into(),
            reason: format!("built-in descriptions: {e}"),
        })?;
        let mut is_new = std::collections::HashSet::new();
        for (name, over) in overrides.clone() {
            let toml::Value::Table(over) = over else {
                return Err(error(&name, "", "must be a table"));
            };
            match merged.get_mut(&name) {
                Some(toml::Value::Table(base)) => base.extend(over),
                _ => {
                    is_new.insert(name.clone());
                    merged.insert(name, toml::Value::Table(over));
                }
            }
        }
        // Numbers: a running set's first, then new ones after every number it ever used.
        let mut slots: Vec<Option<Arc<Family>>> = running.map_or_else(Vec::new, |running| {
            running.inner.families.iter().cloned().map(Some).collect()
        });
        let mut retired: Vec<bool> = vec![true; slots.len()];
        let mut specs = Vec::new();
        for (name, table) in merged {
            let spec: FamilySpec = serde_path_to_error::deserialize(table).map_err(|e| {
                let path = e.path().to_string();
                let key = if path == "." { String::new() } else { path };
                error(&name, &key, e.into_inner().message().trim().to_owned())
            })?;
            if spec.enabled == Some(false) {
                continue;
            }
            let known = running
                .and_then(|running| running.inner.families.iter().find(|f| f.name == name))
                .map(|f| f.id);
            let id = match known {
                Some(id) => id,
                None if slots.len() == MAX_FAMILIES => {
                    let reason = match running {
                        Some(_) => format!(
                            "more than {MAX_FAMILIES} families since the gateway started \
                             (removed ones keep their numbers until a restart)"
                        ),
                        None => format!("more than {MAX_FAMILIES} families"),
                    };
                    return Err(error(&name, "", reason));
                }
                None => {
                    slots.push(None);
                    retired.push(true);
                    FamilyId((slots.len() - 1) as u8)
                }
            };
            let family = compile(&name, id, &spec, is_new.contains(&name))?;
            slots[id.index()] = Some(Arc::new(family));
            retired[id.index()] = false;
            specs.push((name, id, spec));
        }
        let families: Vec<Arc<Family>> = slots
            .into_iter()
            .map(|slot| slot.expect("every number has its family"))
            .collect();
        let mut routes = route::Table::default();
        for (name, id, spec) in &specs {
            routes.add(name, *id, spec, &families)?;
        }
        let any_submit = specs
            .iter()
            .any(|(_, id, _)| families[id.index()].submit.is_some());
        Ok(Families {
            inner: Arc::new(Inner {
                families,
                retired,
                routes,
                any_submit,
                overrides,
            }),
        })
    }

    /// The built-in families, none changed.
    pub fn builtin() -> Self {
        Self::new(toml::Table::new()).expect("the built-in family descriptions are valid")
    }

    pub fn get(&self, id: FamilyId) -> &Family {
        &self.inner.families[id.index()]
    }

    /// The family in force named `name` (not one a reload retired).
    pub fn by_name(&self, name: &str) -> Option<&Family> {
        self.live().find(|f| f.name == name)
    }

    /// Every family by number, retired ones included (their entries may still be filed under them).
    pub fn all(&self) -> &[Arc<Family>] {
        &self.inner.families
    }

    /// The families in force.
    pub fn live(&self) -> impl Iterator<Item = &Family> {
        self.inner
            .families
            .iter()
            .zip(&self.inner.retired)
            .filter(|(_, retired)| !**retired)
            .map(|(family, _)| &**family)
    }

    /// The families `running` has that this set (built over it by [`rebase`](Self::rebase)) retired.
    pub fn retired_from(&self, running: &Families) -> Vec<FamilyId> {
        running
            .live()
            .filter(|family| self.inner.retired.get(family.id.index()) == Some(&true))
            .map(|family| family.id)
            .collect()
    }

    /// The family route a request is on, if any (see [`route`]).
    #[inline]
    pub fn route<'a>(
        &self,
        method: &http::Method,
        path: &'a str,
        query: Option<&'a str>,
    ) -> Option<Matched<'a>> {
        self.inner.routes.lookup(method, path, query)
    }

    /// The family whose submit route `path` is (a `POST` there starts a task), read as a lenient
    /// upstream router would read it ([`submit::normalize`]), with what came before the route.
    pub fn submit_route(&self, path: &str) -> Option<SubmitMatch> {
        if !self.inner.any_submit {
            return None;
        }
        let normalized = submit::normalize(path);
        self.live().find_map(|family| {
            let prefix = family.submit.as_ref()?.prefix_of(&normalized)?;
            Some(SubmitMatch {
                family: family.id,
                mode: prefix.to_owned(),
            })
        })
    }

    /// The path of `family`'s (first) status route for task `id`, after `mode`.
    pub fn status_path(&self, family: FamilyId, mode: &str, id: TaskId<'_>) -> Option<String> {
        self.inner.routes.status_path(family, mode, id)
    }

    /// The path (and query) a task's status is fetched from upstream, for a request that matched `at`.
    pub fn upstream_path(&self, at: At<'_>, id: TaskId<'_>) -> String {
        self.inner.routes.upstream_path(at, id)
    }
}

/// The families in force, shared by everything that reads them (the fetch core, the Redis tier,
/// the keeper of result files): a reload swaps the set for every holder at once, and a request
/// reads the set as it stood when it looked.
#[derive(Clone)]
pub struct LiveFamilies(Arc<arc_swap::ArcSwap<Families>>);

impl LiveFamilies {
    pub fn new(families: Families) -> Self {
        LiveFamilies(Arc::new(arc_swap::ArcSwap::from_pointee(families)))
    }

    /// The set as it stands now.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Families>> {
        self.0.load()
    }

    /// The set as it stands now, to hold across an `.await`.
    pub fn load_full(&self) -> Arc<Families> {
        self.0.load_full()
    }

    /// Puts `families` in force (built over the running set by [`Families::rebase`]).
    pub fn store(&self, families: Families) {
        self.0.store(Arc::new(families));
    }
}

fn error(family: &str, key: &str, reason: impl Into<String>) -> FamilyError {
    let key = if key.is_empty() {
        format!("families.{family}")
    } else {
        format!("families.{family}.{key}")
    };
    FamilyError {
        key,
        reason: reason.into(),
    }
}

fn compile(
    name: &str,
    id: FamilyId,
    spec: &FamilySpec,
    is_new: bool,
) -> Result<Family, FamilyError> {
    let valid_name = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if !valid_name {
        return Err(error(
            name,
            "",
            "a family name is 1 to 32 of a-z, 0-9, '-' and '_' (it is a metric label)",
        ));
    }
    let pointers = |key: &str, list: &Option<Vec<String>>, required: bool| {
        let list = list.clone().unwrap_or_default();
        if required && list.is_empty() {
            return Err(error(name, key, "is required: at least one JSON pointer"));
        }
        for pointer in &list {
            check_pointer(name, key, pointer)?;
        }
        Ok(list)
    };
    let status_at = pointers("status_at", &spec.status_at, true)?;
    let id_at = pointers("id_at", &spec.id_at, false)?;
    let progress_at = pointers("progress_at", &spec.progress_at, false)?;
    let expires_at = pointers("expires_at", &spec.expires_at, false)?;
    let result_pointers = pointers("results", &spec.results, false)?
        .iter()
        .map(|pointer| results::ResultPointer::parse(pointer))
        .collect();
    let statuses = |key: &str, list: &Option<Vec<String>>, default: &[&str]| {
        let list: Vec<String> = match list {
            Some(list) => list.clone(),
            None => default.iter().map(|s| (*s).to_owned()).collect(),
        };
        if list.iter().any(|s| s.trim().is_empty()) {
            return Err(error(name, key, "an empty status cannot mean finished"));
        }
        Ok(list)
    };
    let success = statuses("success", &spec.success, &SUCCESS)?;
    let failure = statuses("failure", &spec.failure, &FAILURE)?;
    if let Some(both) = success
        .iter()
        .find(|s| failure.iter().any(|f| f.eq_ignore_ascii_case(s)))
    {
        return Err(error(
            name,
            "failure",
            format!("{both:?} is listed in both success and failure"),
        ));
    }
    let not_found = spec.not_found.clone().unwrap_or_else(default_not_found);
    for (i, shape) in not_found.iter().enumerate() {
        if !(100..=599).contains(&shape.status)
            || (200..300).contains(&shape.status)
                && shape.contains.is_none()
                && !shape.empty
                && shape.status != 204
        {
            return Err(error(
                name,
                &format!("not_found[{i}]"),
                "needs a status of 100-599; a 2xx other than 204 also needs `contains` or `empty`",
            ));
        }
        match shape.contains.as_deref() {
            Some("") => return Err(error(name, &format!("not_found[{i}].contains"), "is empty")),
            Some(text) if text.len() > 4096 => {
                return Err(error(
                    name,
                    &format!("not_found[{i}].contains"),
                    "is longer than the 4 KiB of the body it is looked for in",
                ));
            }
            _ => {}
        }
    }
    if is_new && spec.status_routes.as_ref().is_none_or(Vec::is_empty) {
        return Err(error(
            name,
            "status_routes",
            "is required: at least one route",
        ));
    }
    if spec
        .finished_ttl
        .is_some_and(|ttl| ttl.is_zero() || ttl > MAX_FINISHED_TTL)
    {
        return Err(error(
            name,
            "finished_ttl",
            "must be from 1ms to 3650d (unset keeps finished tasks)",
        ));
    }
    let task_at = spec.task_at.clone().unwrap_or_default();
    check_pointer(name, "task_at", &task_at)?;
    let task_answer = split_template(
        name,
        "task_answer",
        spec.task_answer.as_deref().unwrap_or("{task}"),
        "{task}",
    )?;
    let batch = match &spec.batch {
        None => None,
        Some(batch) => Some(compile_batch(name, batch, &task_at, &status_at, &id_at)?),
    };
    let submit = match &spec.submit {
        None => None,
        Some(submit) => Some(Submit::compile(
            name,
            submit,
            spec.mode_prefix.unwrap_or(false),
        )?),
    };
    let upstream = spec.upstream.clone().filter(|pool| pool != "default");
    Ok(Family {
        submit,
        prefix: routes_prefix(spec),
        upstream,
        name: name.to_owned(),
        id,
        status_at,
        id_at,
        progress_at,
        success,
        failure,
        not_found,
        expires_at,
        signed_urls: spec.signed_urls.unwrap_or(true),
        results: result_pointers,
        finished_ttl: spec.finished_ttl,
        keep_files: spec.artifacts.unwrap_or_default(),
        task_at,
        task_answer,
        batch,
    })
}

/// The longest prefix, cut after a `/`, that every route of `spec` starts with (`/` when they share
/// nothing more).
fn routes_prefix(spec: &FamilySpec) -> String {
    let routes = [
        spec.status_routes.iter().flatten().collect::<Vec<_>>(),
        spec.events_routes.iter().flatten().collect(),
        spec.download_routes.iter().flatten().collect(),
        spec.batch.iter().filter_map(|b| b.route.as_ref()).collect(),
        spec.submit
            .iter()
            .filter_map(|s| s.routes.as_ref())
            .flatten()
            .collect(),
    ]
    .concat();
    let Some(first) = routes.first() else {
        return "/".to_owned();
    };
    let mut shared = first.len();
    for route in &routes[1..] {
        shared = first
            .bytes()
            .zip(route.bytes())
            .take(shared)
            .take_while(|(a, b)| a == b)
            .count();
    }
    while !first.is_char_boundary(shared) {
        shared -= 1;
    }
    // Only the literal part before a placeholder or a query, cut back to the last whole segment
    // (or kept whole when it is a segment of every route: `/v1/videos` and `/v1/videos/{id}`).
    let literal = &first[..shared];
    let literal = &literal[..literal.find(['{', '?', '*']).unwrap_or(literal.len())];
    let whole_segment = routes.iter().all(|route| {
        let rest = &route[literal.len()..];
        rest.is_empty() || rest.starts_with(['/', '?'])
    });
    if whole_segment && literal.len() > 1 && !literal.ends_with('/') {
        return format!("{literal}/");
    }
    match literal.rfind('/') {
        Some(end) if end > 0 => literal[..=end].to_owned(),
        _ => "/".to_owned(),
    }
}

fn compile_batch(
    name: &str,
    spec: &BatchSpec,
    task_at: &str,
    status_at: &[String],
    id_at: &[String],
) -> Result<Batch, FamilyError> {
    if spec.route.as_deref().is_none_or(str::is_empty) {
        return Err(error(name, "batch.route", "is required"));
    }
    let items_at = spec.items_at.clone().unwrap_or_default();
    check_pointer(name, "batch.items_at", &items_at)?;
    // Inside an item, the status and id sit where they sit inside `task_at` of a status answer.
    let inside = |pointers: &[String]| -> Vec<String> {
        pointers
            .iter()
            .filter_map(|p| p.strip_prefix(task_at))
            .filter(|p| p.is_empty() || p.starts_with('/'))
            .map(str::to_owned)
            .collect()
    };
    let item_status_at = inside(status_at);
    let item_id_at = inside(id_at);
    if item_status_at.is_empty() || item_id_at.is_empty() {
        return Err(error(
            name,
            "batch",
            "needs `status_at` and `id_at` pointers inside `task_at` (they locate each task's status and id in a batch answer)",
        ));
    }
    let empty_answer = match &spec.answer_when_empty {
        Some(empty) => Some(
            serde_json::from_str::<Value>(empty)
                .map_err(|_| error(name, "batch.answer_when_empty", "is not JSON"))?,
        ),
        None => None,
    };
    Ok(Batch {
        items_at,
        ignore_fields: spec.ignore_fields.clone().unwrap_or_default(),
        answer: split_template(
            name,
            "batch.answer",
            spec.answer.as_deref().unwrap_or("{items}"),
            "{items}",
        )?,
        answer_when_empty: spec.answer_when_empty.clone(),
        empty_answer,
        item_status_at,
        item_id_at,
    })
}

fn default_not_found() -> Vec<NotFoundShape> {
    let shape = |status, contains: Option<&str>| NotFoundShape {
        status,
        contains: contains.map(str::to_owned),
        empty: false,
    };
    vec![
        shape(404, None),
        shape(400, Some("task_not_exist")),
        shape(200, Some("task_not_exist")),
        shape(400, Some("task_no_found")),
    ]
}

fn check_pointer(name: &str, key: &str, pointer: &str) -> Result<(), FamilyError> {
    // RFC 6901: `~` only as `~0` or `~1`.
    let escapes_ok = pointer
        .split('~')
        .skip(1)
        .all(|rest| rest.starts_with(['0', '1']));
    if !escapes_ok {
        return Err(error(
            name,
            key,
            format!("{pointer:?}: `~` must be followed by 0 or 1 (RFC 6901)"),
        ));
    }
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(error(
            name,
            key,
            format!("{pointer:?} is not a JSON pointer (RFC 6901: empty, or starting with '/')"),
        ))
    }
}

/// A template split around its one `placeholder`.
fn split_template(
    name: &str,
    key: &str,
    template: &str,
    placeholder: &str,
) -> Result<(String, String), FamilyError> {
    match template.split_once(placeholder) {
        Some((before, after)) if !after.contains(placeholder) => {
            Ok((before.to_owned(), after.to_owned()))
        }
        _ => Err(error(
            name,
            key,
            format!("must contain {placeholder} exactly once"),
        )),
    }
}

#[cfg(test)]
mod tests;
