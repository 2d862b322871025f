//! The request id: taken from the client's `x-request-id` when it is sane, generated otherwise. It
//! labels the request's log span, is echoed to the client and is sent upstream.

use std::cell::Cell;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::hex::push_hex;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id kept; longer ones are replaced, so a client cannot bloat every log line.
const MAX_LEN: usize = 128;

thread_local! {
    /// A random prefix per thread and a counter: unique across threads, restarts and replicas, without
    /// a syscall per request, and without one counter's cache line bouncing between the workers.
    static NEXT: Cell<(u64, u32)> = Cell::new((rand::random(), 0));
}

/// The client's `x-request-id` if it is 1 to 128 visible ASCII characters, else a new id.
pub fn of_request(headers: &HeaderMap) -> HeaderValue {
    from_client(headers).cloned().unwrap_or_else(generate)
}

/// The same, a client's id copied into its own buffer rather than viewing the connection's read
/// buffer: for a request that may be held (a long-poll) long after its head was read.
pub fn of_request_owned(headers: &HeaderMap) -> HeaderValue {
    from_client(headers)
        .and_then(|id| HeaderValue::from_bytes(id.as_bytes()).ok())
        .unwrap_or_else(generate)
}

fn from_client(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(&X_REQUEST_ID).filter(|id| {
        !id.is_empty() && id.len() <= MAX_LEN && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
    })
}

/// 24 hex digits: the thread's prefix, then its counter. Written digit by digit rather than with
/// `format!`, whose machinery cost a cache hit more than the rest of its id handling.
fn generate() -> HeaderValue {
    let (prefix, n) = NEXT.with(|next| {
        let (prefix, n) = next.get();
        next.set((prefix, n.wrapping_add(1)));
        (prefix, n)
    });
    let mut text = Vec::with_capacity(24);
    push_hex(&mut text, &prefix.to_be_bytes());
    push_hex(&mut text, &n.to_be_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
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

    #[test]
    fn generated_ids_are_the_prefix_and_the_counter_in_hex() {
        let id = generate();
        let text = id.to_str().unwrap();
        assert_eq!(text.len(), 24);
        let next = generate();
        let next = next.to_str().unwrap();
        assert_eq!(text[..16], next[..16], "one prefix per thread");
        let n = u32::from_str_radix(&text[16..], 16).unwrap();
        let after = u32::from_str_radix(&next[16..], 16).unwrap();
        assert_eq!(after, n + 1);
        let other = std::thread::spawn(|| generate().to_str().unwrap().to_owned())
            .join()
            .unwrap();
        assert_ne!(other[..16], text[..16], "another thread, another prefix");
    }
}
