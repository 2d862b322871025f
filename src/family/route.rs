//! The route table over every family's routes: which family, which kind of route, which id.
//!
//! Routes are bucketed by their first path segment (`mj`, `suno`, `v1`, ...), which every template
//! has as a literal: a lookup compares that one segment against a handful of buckets, then tries the
//! few templates in its bucket by prefix and suffix. That keeps the matching rules (an id is one
//! segment; a `{id}` route with a suffix catches bad ids instead of passing them on) ours rather than
//! a router's, at the cost of a route scan of the whole table measured at 158 ns before the buckets
//! (the hit path's budget is about 450 ns in all).

use std::sync::Arc;

use http::Method;

use super::{Family, FamilyError, FamilyId, FamilySpec, error};
use crate::task::{InvalidTaskId, TaskId};

/// What a family route is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// A status route (`GET`): served from the cache.
    Status,
    /// The gateway's own event stream for a task.
    Events,
    /// A task's result file as a route (OpenAI videos' `/v1/videos/{id}/content`): answered from
    /// the kept files, downloaded from the upstream once per credential.
    Download,
}

/// A request on a family route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched<'a> {
    /// A task's route, with its id (or why the id must not reach the upstream).
    Task {
        family: FamilyId,
        kind: RouteKind,
        id: Result<TaskId<'a>, InvalidTaskId>,
        at: At<'a>,
        /// A status route that becomes an event stream for clients that `Accept: text/event-stream`.
        events_by_accept: bool,
    },
    /// The family's batch route (`POST`).
    Batch(FamilyId),
}

/// Which route matched, after which mode segment: what the upstream path is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At<'a> {
    entry: u16,
    mode: &'a str,
}

#[derive(Debug)]
enum Pattern {
    /// `{prefix}{id}{suffix}`.
    Path { prefix: String, suffix: String },
    /// `{path}?{param}={id}`.
    Query { path: String, param: String },
    /// A batch route.
    Exact(String),
}

#[derive(Debug)]
struct Entry {
    family: FamilyId,
    kind: Option<RouteKind>,
    events_by_accept: bool,
    pattern: Pattern,
    /// The template as written, for error messages.
    template: String,
}

#[derive(Debug, Default)]
pub(super) struct Table {
    entries: Vec<Entry>,
    any_mode_prefix: bool,
    /// Entry numbers by first path segment, and whether they are the ones allowed after a mode.
    buckets: Vec<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    segment: Box<str>,
    /// [`SegmentKey`] of `segment`: compared first, as two integers.
    key: SegmentKey,
    after_mode: bool,
    entries: Vec<u16>,
}

/// A path segment's length and its first eight bytes, packed: unequal keys mean unequal segments,
/// and for segments of eight bytes or fewer (every built-in one) equal keys mean equal segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentKey(usize, u64);

impl SegmentKey {
    #[inline]
    fn of(segment: &str) -> Self {
        let bytes = segment.as_bytes();
        let mut packed = [0u8; 8];
        let n = bytes.len().min(8);
        packed[..n].copy_from_slice(&bytes[..n]);
        SegmentKey(bytes.len(), u64::from_le_bytes(packed))
    }
}

impl Table {
    /// Adds family `name`'s routes, refusing a template another family (or this one) already has.
    pub(super) fn add(
        &mut self,
        name: &str,
        family: FamilyId,
        spec: &FamilySpec,
        earlier: &[Arc<Family>],
    ) -> Result<(), FamilyError> {
        let mode_prefix = spec.mode_prefix.unwrap_or(false);
        let events_by_accept = spec.events_by_accept.unwrap_or(true);
        let lists = [
            (
                "status_routes",
                Some(RouteKind::Status),
                spec.status_routes.clone().unwrap_or_default(),
            ),
            (
                "events_routes",
                Some(RouteKind::Events),
                spec.events_routes.clone().unwrap_or_default(),
            ),
            (
                "download_routes",
                Some(RouteKind::Download),
                spec.download_routes.clone().unwrap_or_default(),
            ),
            (
                "batch.route",
                None,
                spec.batch.iter().filter_map(|b| b.route.clone()).collect(),
            ),
        ];
        for (key, kind, templates) in lists {
            for template in templates {
                let pattern = match kind {
                    Some(_) => parse_template(&template),
                    None if template.starts_with('/') && !template.contains(['{', '?']) => {
                        Ok(Pattern::Exact(template.clone()))
                    }
                    None => Err("a batch route is a plain path starting with '/'".to_owned()),
                }
                .map_err(|reason| error(name, key, format!("{template:?}: {reason}")))?;
                let same_query_path = |e: &Entry| match (&e.pattern, &pattern) {
                    (Pattern::Query { path: a, .. }, Pattern::Query { path: b, .. }) => a == b,
                    _ => false,
                };
                if let Some(other) = self
                    .entries
                    .iter()
                    .find(|e| e.template == template || same_query_path(e))
                {
                    let owner = earlier
                        .get(other.family.index())
                        .map_or(name, |family| family.name());
                    return Err(error(
                        name,
                        key,
                        format!("{template:?} is already a route of the family `{owner}`"),
                    ));
                }
                self.any_mode_prefix |= mode_prefix;
                let index = self.entries.len() as u16;
                self.file(index, first_segment(&template), mode_prefix);
                self.entries.push(Entry {
                    family,
                    kind,
                    events_by_accept,
                    pattern,
                    template,
                });
            }
        }
        Ok(())
    }

    /// Files entry `index` under its first path segment, and also under the segments after a mode
    /// when the family allows one.
    fn file(&mut self, index: u16, segment: &str, mode_prefix: bool) {
        for after_mode in [false, true] {
            if after_mode && !mode_prefix {
                continue;
            }
            match self
                .buckets
                .iter_mut()
                .find(|b| *b.segment == *segment && b.after_mode == after_mode)
            {
                Some(bucket) => bucket.entries.push(index),
                None => self.buckets.push(Bucket {
                    key: SegmentKey::of(segment),
                    segment: segment.into(),
                    after_mode,
                    entries: vec![index],
                }),
            }
        }
    }

    /// The family route `method path?query` is on. Status and events routes answer `GET`, batch routes
    /// `POST`; a family with `mode_prefix` also matches after one mode segment (`/mj-fast/mj/...`).
    #[inline]
    pub(super) fn lookup<'a>(
        &self,
        method: &Method,
        path: &'a str,
        query: Option<&'a str>,
    ) -> Option<Matched<'a>> {
        // `HEAD` matches as `GET` does; only a download route takes it (the caller sees the kind).
        let batch = if *method == Method::GET || *method == Method::HEAD {
            false
        } else if *method == Method::POST {
            true
        } else {
            return None;
        };
        if let Some(found) = self.scan(path, query, batch, "") {
            return Some(found);
        }
        if self.any_mode_prefix
            && let Some(rest) = strip_mode(path)
        {
            let mode = &path[..path.len() - rest.len()];
            return self.scan(rest, query, batch, mode);
        }
        None
    }

    /// The entries of the bucket `path`'s first segment falls in, tried in order.
    #[inline]
    fn scan<'a>(
        &self,
        path: &'a str,
        query: Option<&'a str>,
        batch: bool,
        mode: &'a str,
    ) -> Option<Matched<'a>> {
        let segment = first_segment(path);
        let key = SegmentKey::of(segment);
        let after_mode = !mode.is_empty();
        let bucket = self.buckets.iter().find(|b| {
            b.key == key && b.after_mode == after_mode && (key.0 <= 8 || *b.segment == *segment)
        })?;
        bucket.entries.iter().find_map(|&index| {
            let entry = &self.entries[usize::from(index)];
            if batch != entry.kind.is_none() {
                return None;
            }
            let at = At { entry: index, mode };
            match (&entry.pattern, entry.kind) {
                (Pattern::Exact(exact), None) => {
                    (path == exact).then_some(Matched::Batch(entry.family))
                }
                (Pattern::Path { prefix, suffix }, Some(kind)) => {
                    let middle = path
                        .strip_prefix(prefix.as_str())?
                        .strip_suffix(suffix.as_str())?;
                    let id = TaskId::parse(middle);
                    // Without a suffix, a longer path is another endpoint (`/v1/videos/{id}/content`).
                    // (A valid id has no '/', so only a refused one needs the look.)
                    if suffix.is_empty()
                        && id.is_err()
                        && (middle.is_empty() || middle.as_bytes().contains(&b'/'))
                    {
                        return None;
                    }
                    Some(Matched::Task {
                        family: entry.family,
                        kind,
                        id,
                        at,
                        events_by_accept: entry.events_by_accept,
                    })
                }
                (Pattern::Query { path: exact, param }, Some(kind)) => {
                    if path != exact {
                        return None;
                    }
                    let value = query?
                        .split('&')
                        .find_map(|pair| pair.strip_prefix(param.as_str())?.strip_prefix('='))?;
                    Some(Matched::Task {
                        family: entry.family,
                        kind,
                        id: TaskId::parse(value),
                        at,
                        events_by_accept: entry.events_by_accept,
                    })
                }
                _ => None,
            }
        })
    }
}

impl Table {
    /// The upstream path of a task's status answer for a request that matched `at`: the request's
    /// own route for a status route (without any other query parameter), the family's first status
    /// route for an events route.
    pub(super) fn upstream_path(&self, at: At<'_>, id: TaskId<'_>) -> String {
        let entry = &self.entries[usize::from(at.entry)];
        let status = match entry.kind {
            Some(RouteKind::Status) => entry,
            _ => self
                .entries
                .iter()
                .find(|e| e.family == entry.family && e.kind == Some(RouteKind::Status))
                .unwrap_or(entry),
        };
        match &status.pattern {
            Pattern::Path { prefix, suffix } => {
                format!("{}{prefix}{}{suffix}", at.mode, id.as_str())
            }
            Pattern::Query { path, param } => format!("{}{path}?{param}={}", at.mode, id.as_str()),
            Pattern::Exact(path) => path.clone(),
        }
    }
}

impl Table {
    /// The path of `family`'s first status route for task `id` (after `mode`).
    pub(super) fn status_path(
        &self,
        family: FamilyId,
        mode: &str,
        id: TaskId<'_>,
    ) -> Option<String> {
        let index = self
            .entries
            .iter()
            .position(|e| e.family == family && e.kind == Some(RouteKind::Status))?;
        Some(self.upstream_path(
            At {
                entry: index as u16,
                mode,
            },
            id,
        ))
    }
}

/// A status or events template: `/a/{id}/b` (the id a whole segment) or `/a?name={id}`.
fn parse_template(template: &str) -> Result<Pattern, String> {
    if !template.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if template.matches("{id}").count() != 1 {
        return Err("must contain {id} exactly once".into());
    }
    let path = template.split('?').next().unwrap_or_default();
    if path
        .split('/')
        .skip(1)
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        || template.contains('%')
    {
        return Err("no empty, '.' or '..' segments and no percent-encoding".into());
    }
    if let Some((path, query)) = template.split_once('?') {
        let param = query
            .strip_suffix("={id}")
            .filter(|p| !p.is_empty() && !p.contains(['&', '=', '{', '}']))
            .ok_or("a query route is `/path?name={id}`")?;
        if path.contains(['{', '}']) {
            return Err("a query route's path has no {id}".into());
        }
        return Ok(Pattern::Query {
            path: path.to_owned(),
            param: param.to_owned(),
        });
    }
    let (prefix, suffix) = template.split_once("{id}").ok_or("must contain {id}")?;
    if !prefix.ends_with('/') || !(suffix.is_empty() || suffix.starts_with('/')) {
        return Err("{id} must be a whole path segment".into());
    }
    if prefix.contains(['{', '}']) || suffix.contains(['{', '}']) {
        return Err("only {id} may be a placeholder".into());
    }
    if prefix == "/" {
        return Err("the first path segment must be a literal, not {id}".into());
    }
    Ok(Pattern::Path {
        prefix: prefix.to_owned(),
        suffix: suffix.to_owned(),
    })
}

/// `mj` of `/mj/task/...` (the whole path after `/` when it has one segment).
#[inline]
fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let end = rest
        .bytes()
        .position(|b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The path after one mode segment (`/mj-fast/mj/...` → `/mj/...`).
fn strip_mode(path: &str) -> Option<&str> {
    let after_slash = path.strip_prefix('/')?;
    let end = after_slash.find('/')?;
    let (mode, rest) = after_slash.split_at(end);
    let mode_ok = !mode.is_empty()
        && mode
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    mode_ok.then_some(rest)
}
