//! Request methods and paths as clients send them: routing and task-id validation must never panic, and
//! an id that reaches the upstream is always a valid one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mjgate::request::routes::{Route, classify};

fuzz_target!(|data: &[u8]| {
    let (method, path) = data.split_at(data.len().min(1));
    let method = match method.first().map(|b| b % 4) {
        Some(0) => http::Method::GET,
        Some(1) => http::Method::POST,
        Some(2) => http::Method::DELETE,
        _ => http::Method::HEAD,
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    if let Route::Fetch(id) | Route::LongPoll(id) = classify(&method, path, Some("wait=1")) {
        let id = id.as_str();
        assert!(!id.is_empty() && id.len() <= 128);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)));
    }
});
