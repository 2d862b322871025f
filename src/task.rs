//! What the gateway knows about a task: a valid id, and the class of an upstream answer.

/// Longest task id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// The bytes a task id may hold: `[A-Za-z0-9._:-]`.
static ID_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-');
        b += 1;
    }
    table
};

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
        // A table lookup per byte, without a branch per byte: this runs on every cache hit.
        let valid = text
            .bytes()
            .fold(true, |valid, b| valid & ID_BYTE[usize::from(b)]);
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

/// How long an upstream answer for a task id may be cached: by the task's status (as its family reads
/// it, [`crate::family::Family::class_of`]), or as "no such task".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskClass {
    /// Finished (its family's success or failure values): the answer will not change; kept until
    /// evicted, or until the result it names expires.
    Terminal,
    /// Any other status, known or not: fresh for `cache.in_progress_ttl`, servable stale after.
    InProgress,
    /// The upstream's "no such task" answer: kept for `cache.not_found_ttl`, never served stale.
    NotFound,
}

impl TaskClass {
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

    /// Whether an answer of this class is a task object (finished or running), not "no such task".
    pub fn is_task(self) -> bool {
        self != TaskClass::NotFound
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskClass::Terminal => "terminal",
            TaskClass::InProgress => "in_progress",
            TaskClass::NotFound => "not_found",
        }
    }
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
}
