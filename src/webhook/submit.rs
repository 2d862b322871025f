//! Taking a submit's hook over: the client's `notifyHook` comes out of the body the upstream sees (the
//! gateway delivers to it itself, signed and retried), and the task id comes out of the upstream's
//! answer.

use bytes::Bytes;
use serde_json::{Map, Value};

/// The field of a Midjourney submit that names the client's hook.
pub const NOTIFY_HOOK: &str = "notifyHook";

/// Midjourney submit answers whose `result` is a task the upstream took: `1` submitted, `21` already
/// exists (the same task), `22` queued.
const ACCEPTED_CODES: [i64; 3] = [1, 21, 22];

/// A submit body with its hook taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    /// The body to forward: the client's JSON without the hook field (or with `replacement`).
    pub body: Bytes,
    /// The client's hook URL, as it wrote it.
    pub hook: String,
}

/// The client's body without its non-empty `field` (or with `replacement` in its place); `None` when
/// the body is not a JSON object with such a field, and must be forwarded untouched.
pub fn take_over(body: &[u8], field: &str, replacement: Option<&str>) -> Option<TakenOver> {
    let mut object: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let hook = match object.get(field)? {
        Value::String(hook) if !hook.trim().is_empty() => hook.trim().to_owned(),
        _ => return None,
    };
    // Every spelling of the field goes: an upstream that reads keys without case (Go's encoding/json
    // does) must not find a `NotifyHook` the gateway left behind.
    object.retain(|key, _| !key.eq_ignore_ascii_case(field));
    if let Some(url) = replacement {
        object.insert(field.to_owned(), Value::String(url.to_owned()));
    }
    let body = serde_json::to_vec(&object).ok()?;
    Some(TakenOver {
        body: Bytes::from(body),
        hook,
    })
}

/// The task id a submit answer names, if the upstream took the task (`code` 1, 21 or 22).
pub fn submitted_task(answer: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(answer).ok()?;
    let code = value.get("code")?.as_i64()?;
    if !ACCEPTED_CODES.contains(&code) {
        return None;
    }
    match value.get("result")? {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_comes_out_and_everything_else_stays() {
        let body = br#"{"prompt":"a cat","notifyHook":" https://c.example/h ","state":"s1","base64Array":[]}"#;
        let taken = take_over(body, NOTIFY_HOOK, None).unwrap();
        assert_eq!(taken.hook, "https://c.example/h");
        let forwarded: Value = serde_json::from_slice(&taken.body).unwrap();
        assert_eq!(
            forwarded,
            serde_json::json!({"prompt": "a cat", "state": "s1", "base64Array": []})
        );
        let cased = br#"{"prompt":"a cat","notifyHook":"https://c.example/h","NotifyHook":"http://10.0.0.1/","notifyhook":"x"}"#;
        let taken = take_over(cased, NOTIFY_HOOK, None).unwrap();
        let forwarded: Value = serde_json::from_slice(&taken.body).unwrap();
        assert_eq!(
            forwarded,
            serde_json::json!({"prompt": "a cat"}),
            "every spelling goes"
        );
        let replaced = take_over(body, NOTIFY_HOOK, Some("https://gw.example/cb/t0k")).unwrap();
        let forwarded: Value = serde_json::from_slice(&replaced.body).unwrap();
        assert_eq!(forwarded["notifyHook"], "https://gw.example/cb/t0k");
    }

    #[test]
    fn bodies_without_a_hook_are_left_alone() {
        for body in [
            &br#"{"prompt":"a cat"}"#[..],
            br#"{"prompt":"a cat","notifyHook":""}"#,
            br#"{"prompt":"a cat","notifyHook":null}"#,
            br#"{"prompt":"a cat","notifyHook":7}"#,
            br#"["notifyHook"]"#,
            b"not json",
            b"",
        ] {
            assert_eq!(take_over(body, NOTIFY_HOOK, None), None, "{body:?}");
        }
    }

    #[test]
    fn the_task_id_is_read_from_accepted_answers_only() {
        assert_eq!(
            submitted_task(
                br#"{"code":1,"description":"Submit success","result":"1709123456000123"}"#
            ),
            Some("1709123456000123".into())
        );
        assert_eq!(
            submitted_task(br#"{"code":22,"description":"queued","result":"17"}"#),
            Some("17".into())
        );
        assert_eq!(
            submitted_task(br#"{"code":21,"result":1709}"#),
            Some("1709".into())
        );
        assert_eq!(
            submitted_task(br#"{"code":4,"description":"banned prompt","result":null}"#),
            None
        );
        assert_eq!(submitted_task(br#"{"code":24,"result":"17"}"#), None);
        assert_eq!(submitted_task(b"<html>"), None);
    }
}
