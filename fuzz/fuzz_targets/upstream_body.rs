//! Upstream answers: task bodies, batch arrays, not-found shapes and `Retry-After` values must never
//! panic, and a split batch only yields tasks whose bytes parse as JSON objects.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mjgate::batch::split_tasks;
use mjgate::protect::retry_after;
use mjgate::task::{classify_fetch_body, is_not_found_answer};

fuzz_target!(|data: &[u8]| {
    let _ = classify_fetch_body(data, "1709123456000123");
    let _ = is_not_found_answer(200, data);
    let _ = is_not_found_answer(400, data);
    if let Some(tasks) = split_tasks(data) {
        for (bytes, _) in tasks.values() {
            assert!(bytes.first() == Some(&b'{'));
        }
    }
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value);
        let _ = retry_after(&headers, std::time::SystemTime::now());
    }
});
