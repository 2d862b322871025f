//! What the gateway knows about a task: a valid id, and the class of an upstream answer read from its `status`.

use std::borrow::Cow;

use serde::Deserialize;

/// Longest task id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A task id that passed validation: 1 to 128 bytes of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId<'a>(&'a str);

/// Why a task id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTaskId {
    #[error("task id is empty")]
    Empty,
    #[error("task id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("task id may only contain A-Z, a-z, 0-9, '.', '_', ':' and '-'")]
    BadCharacter,
    /// `.` or `..`: a path's dot segment, never an id.
    #[error("task id cannot be '.' or '..'")]
    DotSegment,
}

impl<'a> TaskId<'a> {
    pub fn parse(text: &'a str) -> Result<Self, InvalidTaskId> {
        if text.is_empty() {
            return Err(InvalidTaskId::Empty);
        }
        if text.len() > MAX_ID_LEN {
            return Err(InvalidTaskId::TooLong);
        }
        let valid = text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !valid {
            return Err(InvalidTaskId::BadCharacter);
        }
        if text == "." || text == ".." {
            return Err(InvalidTaskId::DotSegment);
        }
        Ok(TaskId(text))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// How long an upstream answer for a task id may be cached: by the task's `status`, or as "no such task".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskClass {
    /// `SUCCESS`, `FAILURE` or `CANCEL`: the answer will not change; kept until evicted.
    Terminal,
    /// Any other status, known or not: fresh for `cache.in_progress_ttl`, servable stale after.
    InProgress,
    /// The upstream's "no such task" answer: kept for `cache.not_found_ttl`, never served stale.
    NotFound,
}

impl TaskClass {
    pub fn of_status(status: &str) -> Self {
        match status {
            "SUCCESS" | "FAILURE" | "CANCEL" => TaskClass::Terminal,
            _ => TaskClass::InProgress,
        }
    }

    /// Every class, in the order of [`index`](Self::index).
    pub const ALL: [TaskClass; 3] = [
        TaskClass::Terminal,
        TaskClass::InProgress,
        TaskClass::NotFound,
    ];

    /// The class's number: its place in [`ALL`](Self::ALL), the metrics' array index, and its byte in
    /// the shared tier's values (so never renumber one).
    pub fn index(self) -> u8 {
        match self {
            TaskClass::Terminal => 0,
            TaskClass::InProgress => 1,
            TaskClass::NotFound => 2,
        }
    }

    /// The class numbered `index`, if any.
    pub fn from_index(index: u8) -> Option<Self> {
        Self::ALL.get(usize::from(index)).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskClass::Terminal => "terminal",
            TaskClass::InProgress => "in_progress",
            TaskClass::NotFound => "not_found",
        }
    }
}

/// Whether an upstream answer to a fetch is one of the API's ways of saying "no such task (for you)":
/// `404`, `204`, `200` with an empty body (midjourney-proxy), or `200`/`400` with new-api's
/// `task_no_found`.
pub fn is_not_found_answer(status: u16, body: &[u8]) -> bool {
    match status {
        404 | 204 => true,
        200 | 400 => {
            body.iter().all(u8::is_ascii_whitespace)
                || body
                    .windows(b"task_no_found".len())
                    .take(4096)
                    .any(|w| w == b"task_no_found")
        }
        _ => false,
    }
}

/// The two fields of a task object the gateway reads; everything else is left to the client.
#[derive(Deserialize)]
pub struct TaskHead<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub status: Option<Cow<'a, str>>,
}

impl<'a> TaskHead<'a> {
    /// Reads `id` and `status` from a JSON object; `None` for anything else. (serde's derived
    /// `Deserialize` would also take a JSON array such as `["t1","SUCCESS"]` for a struct.)
    pub fn parse(json: &'a [u8]) -> Option<Self> {
        let start = json.iter().position(|b| !b.is_ascii_whitespace())?;
        if json[start] != b'{' {
            return None;
        }
        serde_json::from_slice(json).ok()
    }
}

/// Classifies a `200` body fetched for `expected_id`, or `None` when it is not that task's object
/// (an empty body, a router's `{"code":4,...}` error, another task, or not JSON at all).
pub fn classify_fetch_body(body: &[u8], expected_id: &str) -> Option<TaskClass> {
    let head = TaskHead::parse(body)?;
    if head.id.as_deref() != Some(expected_id) {
        return None;
    }
    Some(TaskClass::of_status(head.status.as_deref().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(TaskId::parse("1709123456000123").is_ok());
        assert!(TaskId::parse("task_1.a:b-c").is_ok());
        assert_eq!(TaskId::parse(""), Err(InvalidTaskId::Empty));
        assert_eq!(TaskId::parse(&"a".repeat(129)), Err(InvalidTaskId::TooLong));
        assert!(TaskId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(TaskId::parse("a/b"), Err(InvalidTaskId::BadCharacter));
        assert_eq!(TaskId::parse("a%20b"), Err(InvalidTaskId::BadCharacter));
        assert_eq!(TaskId::parse("é"), Err(InvalidTaskId::BadCharacter));
    }

    #[test]
    fn terminal_statuses() {
        for s in ["SUCCESS", "FAILURE", "CANCEL"] {
            assert_eq!(TaskClass::of_status(s), TaskClass::Terminal);
        }
        for s in [
            "NOT_START",
            "SUBMITTED",
            "IN_PROGRESS",
            "MODAL",
            "",
            "success",
            "NEW_ONE",
        ] {
            assert_eq!(TaskClass::of_status(s), TaskClass::InProgress);
        }
    }

    #[test]
    fn recognises_every_not_found_shape() {
        assert!(is_not_found_answer(
            404,
            br#"{"code":4,"description":"task_no_found"}"#
        ));
        assert!(is_not_found_answer(
            400,
            br#"{"description":"task_no_found ","type":"upstream_error","code":4}"#
        ));
        assert!(is_not_found_answer(200, b""));
        assert!(is_not_found_answer(204, b""));
        assert!(!is_not_found_answer(
            200,
            br#"{"id":"t","status":"SUCCESS"}"#
        ));
        assert!(!is_not_found_answer(
            400,
            br#"{"code":400,"description":"bad request"}"#
        ));
        assert!(!is_not_found_answer(500, b""));
        assert!(!is_not_found_answer(429, b""));
    }

    #[test]
    fn classifies_only_the_requested_task_object() {
        let ok = br#"{"id":"t1","status":"SUCCESS","progress":"100%"}"#;
        assert_eq!(classify_fetch_body(ok, "t1"), Some(TaskClass::Terminal));
        assert_eq!(classify_fetch_body(ok, "t2"), None);
        assert_eq!(
            classify_fetch_body(br#"{"id":"t1","status":"IN_PROGRESS"}"#, "t1"),
            Some(TaskClass::InProgress)
        );
        assert_eq!(
            classify_fetch_body(br#"{"id":"t1"}"#, "t1"),
            Some(TaskClass::InProgress),
            "new-api answers status \"\" or none right after submit"
        );
        assert_eq!(classify_fetch_body(b"", "t1"), None);
        assert_eq!(
            classify_fetch_body(br#"{"code":4,"description":"task_no_found"}"#, "t1"),
            None
        );
        assert_eq!(classify_fetch_body(b"[1,2]", "t1"), None);
        assert_eq!(classify_fetch_body(b"null", "t1"), None);
        assert_eq!(
            classify_fetch_body(br#"["t1","SUCCESS"]"#, "t1"),
            None,
            "an array is not a task, whatever serde would make of it"
        );
        assert_eq!(
            classify_fetch_body(b" \n{\"id\":\"t1\",\"status\":\"SUCCESS\"}", "t1"),
            Some(TaskClass::Terminal)
        );
        assert_eq!(
            classify_fetch_body(br#"{"id":"t\u0031","status":"SUCCESS"}"#, "t1"),
            Some(TaskClass::Terminal),
            "escaped strings are compared by value"
        );
    }
}
