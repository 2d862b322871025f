//! What clients and upstreams put into webhooks: submit bodies (`notifyHook` and its spellings),
//! submit answers, hook URLs and the addresses they name. None may panic; a body whose hook was taken
//! out keeps no spelling of it; an address the guard calls public is never loopback, private or
//! link-local.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mjgate::webhook::guard::{HookUrl, is_public};
use mjgate::webhook::submit::{NOTIFY_HOOK, submitted_task, take_over};

fuzz_target!(|data: &[u8]| {
    if let Some(taken) = take_over(data, NOTIFY_HOOK, None) {
        let rest: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&taken.body).expect("still a JSON object");
        assert!(rest.keys().all(|key| !key.eq_ignore_ascii_case(NOTIFY_HOOK)));
        assert!(!taken.hook.trim().is_empty());
    }
    let _ = submitted_task(data);
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
