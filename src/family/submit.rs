//! A family's submits: the routes that start a task, where a client's callback URL sits in their body,
//! and how the upstream's answer names the task it took.
//!
//! Submit routes are matched the way an upstream's router would take them, not only as written: a
//! lenient router (Go's `net/http` decodes `%XX` before gin routes; Spring collapses `//`) treats
//! `/mj//submit/imagine`, `/mj/%73ubmit/imagine` and `/MJ/submit/imagine/` as the submit they spell, so
//! the gateway does too ([`normalize`]). A family with `mode_prefix` takes any prefix of segments before
//! its routes (`/mj-fast/mj/submit/imagine`, a context path `/a/b/mj/submit/imagine`).

use serde_json::Value;

use super::{FamilyError, FamilyId, SubmitSpec, check_pointer, error, first_text};

/// A validated [`SubmitSpec`].
#[derive(Debug)]
pub struct Submit {
    routes: Vec<SubmitPattern>,
    /// The top-level field of a submit's JSON body holding the client's callback URL, if the API
    /// takes one.
    pub callback_field: Option<String>,
    id_at: Vec<String>,
    /// Where the answer says whether the upstream took the task, and the values that say it did.
    accepted: Option<(String, Vec<String>)>,
    /// Routes may follow any prefix of segments (the family's `mode_prefix`).
    any_prefix: bool,
    /// Where a submit's body names the task it acts on.
    parent_at: Vec<String>,
}

/// One submit route: `/mj/submit/*` (any last segment) or an exact path, lower-cased.
#[derive(Debug)]
enum SubmitPattern {
    Exact(String),
    /// The path up to and including its last `/`: one more segment of any name follows.
    AnyLast(String),
}

/// A request on a family's submit route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitMatch {
    pub family: FamilyId,
    /// What came before the route (`""`, `/mj-fast`), as the client wrote it once normalized: the
    /// task's status is asked for under the same prefix.
    pub mode: String,
}

impl Submit {
    pub(super) fn compile(
        name: &str,
        spec: &SubmitSpec,
        any_prefix: bool,
    ) -> Result<Self, FamilyError> {
        let templates = spec.routes.clone().unwrap_or_default();
        if templates.is_empty() {
            return Err(error(
                name,
                "submit.routes",
                "is required: plain paths starting with '/' (a last segment `*` matches any)",
            ));
        }
        let mut routes = Vec::with_capacity(templates.len());
        for template in &templates {
            let plain = template.starts_with('/')
                && !template.contains(['{', '?', '%'])
                && template.len() > 1
                && !template.ends_with('/');
            let (head, last) = template.rsplit_once('/').unwrap_or_default();
            if !plain || head.contains('*') || (last.contains('*') && last != "*") {
                return Err(error(
                    name,
                    "submit.routes",
                    format!(
                        "{template:?}: a submit route is a plain path starting with '/'; only a whole last segment may be `*`"
                    ),
                ));
            }
            let normalized = normalize(template);
            routes.push(if last == "*" {
                SubmitPattern::AnyLast(normalized.trim_end_matches('*').to_owned())
            } else {
                SubmitPattern::Exact(normalized)
            });
        }
        let callback_field = match &spec.callback_field {
            Some(field) if field.is_empty() => {
                return Err(error(name, "submit.callback_field", "is empty"));
            }
            field => field.clone(),
        };
        let id_at = spec.id_at.clone().unwrap_or_default();
        if id_at.is_empty() {
            return Err(error(
                name,
                "submit.id_at",
                "is required: at least one JSON pointer",
            ));
        }
        for pointer in &id_at {
            check_pointer(name, "submit.id_at", pointer)?;
        }
        let accepted = match (&spec.accepted_at, &spec.accepted) {
            (None, None) => None,
            (Some(at), Some(values)) if !values.is_empty() => {
                check_pointer(name, "submit.accepted_at", at)?;
                Some((at.clone(), values.clone()))
            }
            (None, Some(_)) => {
                return Err(error(
                    name,
                    "submit.accepted_at",
                    "is required with submit.accepted",
                ));
            }
            _ => {
                return Err(error(
                    name,
                    "submit.accepted",
                    "is required with submit.accepted_at: the values that mean the task was taken",
                ));
            }
        };
        let parent_at = spec.parent_at.clone().unwrap_or_default();
        for pointer in &parent_at {
            check_pointer(name, "submit.parent_at", pointer)?;
        }
        Ok(Submit {
            routes,
            callback_field,
            id_at,
            accepted,
            any_prefix,
            parent_at,
        })
    }

    /// What came before this family's submit route in `normalized` (see [`normalize`]), if it is one.
    pub fn prefix_of<'p>(&self, normalized: &'p str) -> Option<&'p str> {
        let lower = normalized.to_ascii_lowercase();
        self.routes.iter().find_map(|route| {
            let start = match route {
                SubmitPattern::Exact(path) => {
                    let start = lower.len().checked_sub(path.len())?;
                    (lower[start..] == *path).then_some(start)?
                }
                SubmitPattern::AnyLast(head) => {
                    let last = lower.rfind('/')?;
                    let start = (last + 1).checked_sub(head.len())?;
                    let segment_ok = last + 1 < lower.len();
                    (segment_ok && lower[start..=last] == *head).then_some(start)?
                }
            };
            let prefix = &normalized[..start];
            let prefix_ok = prefix.is_empty() || (self.any_prefix && prefix.starts_with('/'));
            prefix_ok.then_some(prefix)
        })
    }

    /// The task id an upstream's answer to a submit names, if it says it took the task.
    pub fn task_id_in(&self, answer: &[u8]) -> Option<String> {
        let value: Value = serde_json::from_slice(answer).ok()?;
        if let Some((at, values)) = &self.accepted {
            let said = first_text(&value, std::slice::from_ref(at))?;
            if !values.iter().any(|v| *v == said) {
                return None;
            }
        }
        first_text(&value, &self.id_at)
            .filter(|id| !id.is_empty())
            .map(std::borrow::Cow::into_owned)
    }
}

impl Submit {
    /// The task a submit's `body` acts on (an action's or a modal's `taskId`), if it names one.
    pub fn parent_in(&self, body: &[u8]) -> Option<String> {
        if self.parent_at.is_empty() {
            return None;
        }
        let value: Value = serde_json::from_slice(body).ok()?;
        first_text(&value, &self.parent_at)
            .filter(|id| !id.is_empty())
            .map(std::borrow::Cow::into_owned)
    }
}

/// `path` as the most lenient upstream router would read it: `%XX` decoded (where that leaves UTF-8)
/// until nothing is left to decode (a router behind a proxy that decodes once more takes `%2573` for
/// `s`), `\` taken for `/` (as some frameworks fold it), runs of `/` made one, a trailing `/` dropped.
/// (Dot segments never get this far: admission refuses them, encoded or not.)
pub fn normalize(path: &str) -> String {
    let mut decoded = percent_decoded(path).into_owned();
    // Each round shortens the text, so this ends; a few rounds cover every real double decoder.
    for _ in 0..4 {
        match percent_decoded(&decoded) {
            std::borrow::Cow::Owned(again) if again != decoded => decoded = again,
            _ => break,
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        let c = if c == '\\' { '/' } else { c };
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    while out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

/// `%XX` escapes decoded, if the result is UTF-8; `path` as it is otherwise.
fn percent_decoded(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(decoded) => std::borrow::Cow::Owned(decoded),
        Err(_) => std::borrow::Cow::Borrowed(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_as_a_lenient_router_reads_them() {
        assert_eq!(normalize("/mj//submit/imagine"), "/mj/submit/imagine");
        assert_eq!(normalize("/mj/%73ubmit/imagine/"), "/mj/submit/imagine");
        assert_eq!(normalize("/mj%2Fsubmit%2Fimagine"), "/mj/submit/imagine");
        assert_eq!(normalize("//"), "/");
        assert_eq!(normalize("/a/%ff"), "/a/%ff", "not UTF-8: left as it is");
        assert_eq!(normalize("/a/%4"), "/a/%4");
        // Decoded again, for a router behind a proxy that decodes once more; `\` folded to `/`.
        assert_eq!(normalize("/mj/%2573ubmit/imagine"), "/mj/submit/imagine");
        assert_eq!(normalize("/mj/%252573ubmit/imagine"), "/mj/submit/imagine");
        assert_eq!(normalize("/mj\\submit\\imagine"), "/mj/submit/imagine");
        assert_eq!(normalize("/mj/%5Csubmit/imagine"), "/mj/submit/imagine");
    }
}
