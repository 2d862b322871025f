//! What clients and upstreams put into webhooks: submit bodies (`notifyHook` and its spellings),
//! submit paths and answers, hook URLs and the addresses they name. None may panic; a body read
//! strictly is one JSON object whose forwarded form keeps no spelling of the hook that a lenient
//! (case-folding) decoder would take for it; an address the guard calls public is never loopback,
//! private or link-local.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mjgate::webhook::guard::{HookUrl, is_public};
use mjgate::family::Families;
use mjgate::webhook::submit::take_over;

const NOTIFY_HOOK: &str = "notifyHook";

fuzz_target!(|data: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(data);
    if let Ok(taken) = take_over(&body, NOTIFY_HOOK, None)
        && taken.hook.is_some()
    {
        let rest: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&taken.body).expect("still a JSON object");
        let fold = |key: &str| -> String {
            key.chars()
                .flat_map(char::to_uppercase)
                .flat_map(char::to_lowercase)
                .collect()
        };
        assert!(rest.keys().all(|key| fold(key) != fold(NOTIFY_HOOK)));
    }
    let families = Families::builtin();
    if let Some(midjourney) = families.by_name("midjourney").and_then(|f| f.submit()) {
        let _ = midjourney.task_id_in(data);
    }
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = families.submit_route(path);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(hook) = HookUrl::parse(text) {
            assert!(hook.port > 0 || text.contains(":0"));
            assert!(!hook.host.is_empty());
        }
    }
    if data.len() >= 16 {
        let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&data[..16]).unwrap());
        if is_public(v6.into()) {
            assert!(!v6.is_loopback() && !v6.is_unspecified() && !v6.is_multicast());
            if let Some(v4) = v6.to_ipv4_mapped() {
                assert!(!v4.is_loopback() && !v4.is_private() && !v4.is_link_local());
            }
        }
    }
    if data.len() >= 4 {
        let v4 = std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]);
        if is_public(v4.into()) {
            assert!(!v4.is_loopback() && !v4.is_private() && !v4.is_link_local());
            assert!(!v4.is_unspecified() && !v4.is_broadcast() && !v4.is_multicast());
        }
    }
});
