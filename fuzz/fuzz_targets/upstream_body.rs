//! Upstream answers: task bodies, batch arrays, not-found shapes, `Retry-After` values and encoded
//! bodies must never panic, a split batch only yields tasks whose bytes parse as JSON objects, and
//! decoding never yields more than its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mjgate::fetch::batch::split_tasks;
use mjgate::upstream::content_coding;
use mjgate::upstream::protect::retry_after;
use mjgate::family::Families;

fuzz_target!(|data: &[u8]| {
    static FAMILIES: std::sync::OnceLock<Families> = std::sync::OnceLock::new();
    for family in FAMILIES.get_or_init(Families::builtin).all() {
        let _ = family.classify(data, "1709123456000123");
        let _ = family.is_not_found(200, data);
        let _ = family.is_not_found(400, data);
        let _ = family.status_text(data);
        if let Some(span) = family.task_span(data) {
            assert!(span.start <= span.end && span.end <= data.len());
        }
        if let Some(tasks) = split_tasks(family, data) {
            for item in tasks.values() {
                assert!(serde_json::from_slice::<serde_json::Value>(item.body()).is_ok());
            }
        }
    }
    for coding in ["gzip", "deflate", "br", "gzip, br"] {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static(coding),
        );
        let body = bytes::Bytes::copy_from_slice(data);
        if let Ok(decoded) = content_coding::decode(&mut headers, body, 64 * 1024) {
            assert!(decoded.len() <= 64 * 1024);
        }
    }
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value);
        let _ = retry_after(&headers, std::time::SystemTime::now());
    }
});
