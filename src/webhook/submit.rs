//! Taking a submit's hook over: the client's callback URL comes out of the body the upstream sees (the
//! gateway delivers to it itself, signed and retried).
//!
//! The body is read the way the strictest upstream would read it, and anything a lenient one could read
//! differently is refused: one JSON object, no byte-order mark, nothing after it, no key twice, and the
//! hook field once in any spelling. Go's `encoding/json` matches keys without case (`NotifyHook`, even
//! `notifyHooK` with a Kelvin sign), Jackson skips a BOM, and of a key given twice one decoder keeps the
//! first and another the last: a hook the gateway did not see is a hook it did not check.

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a submit body was refused while the gateway delivers hooks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitBodyError {
    #[error("the body starts with a byte-order mark")]
    ByteOrderMark,
    #[error(
        "the body is not one JSON object in UTF-8, as a strict parser reads it (no comments, no trailing data)"
    )]
    NotOneObject,
    #[error("the key {0:?} appears more than once")]
    DuplicateKey(String),
    #[error("the callback field `{0}` appears in more than one spelling")]
    SeveralHookKeys(String),
    #[error("the callback field `{0}` must be a string")]
    HookNotAString(String),
}

/// A submit body with its hook taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    /// The body to forward: the client's bytes, or its JSON without the hook field (every spelling of
    /// it), with `replacement` in its place when given.
    pub body: Bytes,
    /// The client's hook URL, trimmed; `None` when the body names none (absent, `null` or blank).
    pub hook: Option<String>,
}

/// Reads `body` strictly and takes its `field` out (see the module's documentation). An empty body
/// names no hook and is forwarded as it is.
pub fn take_over(
    body: &Bytes,
    field: &str,
    replacement: Option<&str>,
) -> Result<TakenOver, SubmitBodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TakenOver {
            body: body.clone(),
            hook: None,
        });
    }
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(SubmitBodyError::ByteOrderMark);
    }
    let object: StrictObject<'_> =
        serde_json::from_slice(body).map_err(|_| SubmitBodyError::NotOneObject)?;
    if let Some(key) = object.duplicate {
        return Err(SubmitBodyError::DuplicateKey(key));
    }
    let folded = fold(field);
    let hook_keys: Vec<usize> = object
        .entries
        .iter()
        .enumerate()
        .filter(|(_, (key, _))| fold(key) == folded)
        .map(|(i, _)| i)
        .collect();
    let hook = match hook_keys.as_slice() {
        [] if replacement.is_none() => {
            return Ok(TakenOver {
                body: body.clone(),
                hook: None,
            });
        }
        [] => None,
        [one] => {
            let raw = object.entries[*one].1.get();
            match serde_json::from_str::<Option<String>>(raw) {
                Ok(hook) => hook
                    .map(|hook| hook.trim().to_owned())
                    .filter(|hook| !hook.is_empty()),
                Err(_) => return Err(SubmitBodyError::HookNotAString(field.to_owned())),
            }
        }
        _ => return Err(SubmitBodyError::SeveralHookKeys(field.to_owned())),
    };
    let mut out = Vec::with_capacity(body.len() + replacement.map_or(0, |r| r.len() + 8));
    out.push(b'{');
    let mut first = true;
    let mut push_entry = |out: &mut Vec<u8>, key: &str, raw: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        // A key is plain text once parsed; serialising a string cannot fail.
        out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
        out.push(b':');
        out.extend_from_slice(raw.as_bytes());
    };
    for (i, (key, value)) in object.entries.iter().enumerate() {
        if !hook_keys.contains(&i) {
            push_entry(&mut out, key, value.get());
        }
    }
    if let Some(url) = replacement {
        let url = serde_json::to_string(url).unwrap_or_default();
        push_entry(&mut out, field, &url);
    }
    out.push(b'}');
    Ok(TakenOver {
        body: Bytes::from(out),
        hook,
    })
}

/// `key` folded as Go's `encoding/json` folds keys it matches (Unicode simple case folding), so two
/// spellings that decoder takes for one field fold alike here.
fn fold(key: &str) -> String {
    key.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// A JSON object's top-level entries in order, each value as its raw text, and the first key it
/// gives twice.
struct StrictObject<'a> {
    entries: Vec<(String, &'a RawValue)>,
    duplicate: Option<String>,
}

impl<'de> Deserialize<'de> for StrictObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = StrictObject<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut entries: Vec<(String, &'de RawValue)> = Vec::new();
                // A set, not a scan: a body of a million keys must not cost a million squared.
                let mut seen = std::collections::HashSet::new();
                let mut duplicate = None;
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) && duplicate.is_none() {
                        duplicate = Some(key.clone());
                    }
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(StrictObject { entries, duplicate })
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const HOOK: &str = "notifyHook";

    fn taken(body: &str, replacement: Option<&str>) -> Result<TakenOver, SubmitBodyError> {
        take_over(&Bytes::from(body.to_owned()), HOOK, replacement)
    }

    fn json(bytes: &Bytes) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn the_hook_comes_out_and_everything_else_stays() {
        let body = r#"{"prompt":"a cat","notifyHook":" https://c.example/h ","state":"s1","base64Array":[]}"#;
        let taken = taken(body, None).unwrap();
        assert_eq!(taken.hook.as_deref(), Some("https://c.example/h"));
        assert_eq!(
            json(&taken.body),
            serde_json::json!({"prompt": "a cat", "state": "s1", "base64Array": []})
        );
        let replaced =
            take_over(&Bytes::from(body), HOOK, Some("https://gw.example/cb/t0k")).unwrap();
        assert_eq!(
            json(&replaced.body)["notifyHook"],
            "https://gw.example/cb/t0k"
        );
    }

    #[test]
    fn any_spelling_a_lenient_decoder_would_match_is_the_hook() {
        for key in [
            "NotifyHook",
            "notifyhook",
            "NOTIFYHOOK",
            "notifyHoo\u{212A}",
        ] {
            let body = format!(r#"{{"prompt":"p","{key}":"http://127.0.0.1:9/"}}"#);
            let taken = taken(&body, None).unwrap();
            assert_eq!(taken.hook.as_deref(), Some("http://127.0.0.1:9/"), "{key}");
            assert_eq!(
                json(&taken.body),
                serde_json::json!({"prompt": "p"}),
                "{key}"
            );
        }
        let escaped = r#"{"notify\u0048ook":"http://127.0.0.1:9/"}"#;
        assert_eq!(
            taken(escaped, None).unwrap().hook.as_deref(),
            Some("http://127.0.0.1:9/")
        );
    }

    #[test]
    fn bodies_a_lenient_upstream_could_read_otherwise_are_refused() {
        let refused = [
            (
                "\u{FEFF}{\"notifyHook\":\"http://127.0.0.1/\"}",
                SubmitBodyError::ByteOrderMark,
            ),
            (
                r#"{"notifyHook":"http://127.0.0.1/"} x"#,
                SubmitBodyError::NotOneObject,
            ),
            (
                r#"{"notifyHook":"http://127.0.0.1/"}{"a":1}"#,
                SubmitBodyError::NotOneObject,
            ),
            (r#"["notifyHook"]"#, SubmitBodyError::NotOneObject),
            ("not json", SubmitBodyError::NotOneObject),
            (
                r#"{"notifyHook":"http://127.0.0.1/","notifyHook":""}"#,
                SubmitBodyError::DuplicateKey("notifyHook".into()),
            ),
            (
                r#"{"prompt":"a","prompt":"b"}"#,
                SubmitBodyError::DuplicateKey("prompt".into()),
            ),
            (
                r#"{"notifyHook":"https://a.example/","NotifyHook":"http://127.0.0.1/"}"#,
                SubmitBodyError::SeveralHookKeys(HOOK.into()),
            ),
            (
                r#"{"notifyHook":7}"#,
                SubmitBodyError::HookNotAString(HOOK.into()),
            ),
            (
                r#"{"notifyHook":["http://127.0.0.1/"]}"#,
                SubmitBodyError::HookNotAString(HOOK.into()),
            ),
        ];
        for (body, error) in refused {
            assert_eq!(taken(body, None), Err(error), "{body}");
        }
    }

    #[test]
    fn bodies_without_a_hook_are_forwarded_as_they_came() {
        for body in [r#"{"prompt":"a cat"}"#, "", "  "] {
            let taken = taken(body, None).unwrap();
            assert_eq!((taken.body.as_ref(), taken.hook), (body.as_bytes(), None));
        }
        for body in [
            r#"{"prompt":"a","notifyHook":""}"#,
            r#"{"prompt":"a","notifyHook":null}"#,
        ] {
            let taken = taken(body, None).unwrap();
            assert_eq!(taken.hook, None, "{body}");
            assert_eq!(
                json(&taken.body),
                serde_json::json!({"prompt": "a"}),
                "{body}"
            );
        }
    }
}
