//! The request id: taken from the client's `x-request-id` when it is sane, generated otherwise. It
//! labels the request's log span, is echoed to the client and is sent upstream.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id kept; longer ones are replaced, so a client cannot bloat every log line.
const MAX_LEN: usize = 128;

/// A per-process random prefix and a counter: unique across restarts and replicas without a syscall
/// per request.
static PREFIX: LazyLock<u64> = LazyLock::new(rand::random);
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The client's `x-request-id` if it is 1 to 128 visible ASCII characters, else a new id.
pub fn of_request(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_LEN
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            id.clone()
        }
        _ => generate(),
    }
}

fn generate() -> HeaderValue {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let text = format!("{:016x}{:08x}", *PREFIX, n & 0xffff_ffff);
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_sane_client_id_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(of_request(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(of_request(&h), "has space");
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert_eq!(of_request(&h).len(), 24);
    }

    #[test]
    fn generated_ids_are_unique() {
        let h = HeaderMap::new();
        assert_ne!(of_request(&h), of_request(&h));
    }
}
