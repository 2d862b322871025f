//! Request methods and paths as clients send them: routing and task-id validation must never panic, and
//! an id that reaches the upstream is always a valid one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mjgate::family::Families;
use mjgate::request::routes::{Route, classify};

fuzz_target!(|data: &[u8]| {
    static FAMILIES: std::sync::OnceLock<Families> = std::sync::OnceLock::new();
    let families = FAMILIES.get_or_init(Families::builtin);
    let (method, path) = data.split_at(data.len().min(1));
    let method = match method.first().map(|b| b % 4) {
        Some(0) => http::Method::GET,
        Some(1) => http::Method::POST,
        Some(2) => http::Method::DELETE,
        _ => http::Method::HEAD,
    };
    let Ok(text) = std::str::from_utf8(path) else {
        return;
    };
    // The path, and a query after its first '?' (the id of a query route lives there).
    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, Some("wait=1")),
    };
    for events in [false, true] {
        if let Route::Fetch(task) | Route::LongPoll(task) | Route::Events(task) =
            classify(families, &method, path, query, events)
        {
            let id = task.task.id.as_str();
            assert!(!id.is_empty() && id.len() <= 128);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)));
            // What the upstream is asked is the family's own route, with that id and nothing else.
            let upstream = task.upstream_path(families);
            assert!(upstream.starts_with('/') && upstream.contains(id));
            assert!(!upstream.contains("wait="));
        }
    }
});
