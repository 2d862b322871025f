//! The `Idempotency-Key` request header, as draft-ietf-httpapi-idempotency-key-header-07 writes it
//! (a Structured Field String, RFC 9651 §3.3.3: `"8e03978e-40d5-43e8-bc93-6894a57f9324"`) and as most
//! clients send it (Stripe's bare form: `8e03978e-40d5-43e8-bc93-6894a57f9324`). Both name the same key.

use http::HeaderMap;
use http::header::HeaderName;

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key accepted, in bytes (Stripe's limit, and the draft's examples fit it).
pub const MAX_KEY_LEN: usize = 255;

/// Why an `Idempotency-Key` header was refused (`400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the Idempotency-Key is empty")]
    Empty,
    #[error("the Idempotency-Key is longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    #[error("the Idempotency-Key is not a Structured Field string (RFC 9651) nor a bare token")]
    Malformed,
    #[error("the request carries more than one Idempotency-Key")]
    Several,
}

/// The request's idempotency key, if it has one: the text the two forms name alike.
pub fn of(headers: &HeaderMap) -> Result<Option<String>, KeyError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Several);
    }
    parse(value.as_bytes()).map(Some)
}

/// One header value's key.
pub fn parse(value: &[u8]) -> Result<String, KeyError> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return Err(KeyError::Empty);
    }
    let key = match value.strip_prefix(b"\"") {
        Some(quoted) => sf_string(quoted)?,
        None => bare(value)?,
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    Ok(key)
}

/// The rest of an sf-string after its opening quote: printable ASCII, `\"` and `\\` its only
/// escapes, the closing quote last (no parameters: the draft's field is a bare String).
fn sf_string(rest: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped as char),
                _ => return Err(KeyError::Malformed),
            },
            b'"' => {
                return if bytes.next().is_none() {
                    Ok(out)
                } else {
                    Err(KeyError::Malformed)
                };
            }
            0x20..=0x7e => out.push(b as char),
            _ => return Err(KeyError::Malformed),
        }
        if out.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
    }
    Err(KeyError::Malformed)
}

/// A bare key: visible ASCII, no quote, backslash, comma or semicolon (which would make it a list or
/// parameters to a structured-field reader).
fn bare(value: &[u8]) -> Result<String, KeyError> {
    if value.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    let ok = value
        .iter()
        .all(|b| (0x21..=0x7e).contains(b) && !matches!(b, b'"' | b'\\' | b',' | b';'));
    if !ok {
        return Err(KeyError::Malformed);
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_name_the_same_key() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse(uuid.as_bytes()).unwrap(), uuid);
        assert_eq!(parse(format!("\"{uuid}\"").as_bytes()).unwrap(), uuid);
        assert_eq!(
            parse(br#""a \"quoted\" \\ key""#).unwrap(),
            r#"a "quoted" \ key"#
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(parse(b""), Err(KeyError::Empty));
        assert_eq!(parse(b"  "), Err(KeyError::Empty));
        assert_eq!(parse(b"\"\""), Err(KeyError::Empty));
        assert_eq!(parse("k".repeat(256).as_bytes()), Err(KeyError::TooLong));
        assert!(parse("k".repeat(255).as_bytes()).is_ok());
        assert_eq!(
            parse(format!("\"{}\"", "k".repeat(256)).as_bytes()),
            Err(KeyError::TooLong)
        );
        for bad in [
            &b"\"open"[..],
            b"\"a\";p=1",
            b"\"bad \\x escape\"",
            b"two words",
            b"a,b",
            b"a;b",
            b"caf\xc3\xa9",
            b"\"tab\there\"",
        ] {
            assert_eq!(
                parse(bad),
                Err(KeyError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn one_key_per_request() {
        let mut headers = HeaderMap::new();
        assert_eq!(of(&headers), Ok(None));
        headers.append(&IDEMPOTENCY_KEY, "a".parse().unwrap());
        assert_eq!(of(&headers), Ok(Some("a".into())));
        headers.append(&IDEMPOTENCY_KEY, "b".parse().unwrap());
        assert_eq!(of(&headers), Err(KeyError::Several));
    }
}
