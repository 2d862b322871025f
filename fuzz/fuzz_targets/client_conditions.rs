//! What clients and other replicas hand the watch and shared-tier code: `If-None-Match` values,
//! `?wait=` queries, `Accept-Encoding` values, and values read back from Redis. None may panic; a
//! stored value that decodes must survive a round trip unchanged; a value naming neither gzip nor `*`
//! never takes gzip; a gzip copy decodes to its body and carries a tag of its own.
#![no_main]

use http::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use libfuzzer_sys::fuzz_target;
use mjgate::cache::conditional::{etag_of, none_match_hits};

fuzz_target!(|data: &[u8]| {
    let seal = mjgate::shared::ValueKey::new(b"fuzzing secret, sixteen bytes at least");
    if let Some(task) = mjgate::shared::decode(data, b"k", &seal, 8 << 20) {
        let value = mjgate::shared::encode(&task, b"k", &seal);
        let again = mjgate::shared::decode(&value, b"k", &seal, 8 << 20).expect("round trip");
        assert_eq!(again.status(), task.status());
        assert_eq!(again.class(), task.class());
        assert_eq!(again.body, task.body);
        assert_eq!(again.content_type, task.content_type);
        assert_eq!(again.etag, task.etag);
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, value);
        let tag = etag_of(data);
        let _ = none_match_hits(&headers, &tag);
        // Its own tag always matches.
        headers.insert(IF_NONE_MATCH, tag.clone());
        assert!(none_match_hits(&headers, &tag));
    }
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = mjgate::push::long_poll::requested_wait(query);
    }
    let lower = data.to_ascii_lowercase();
    if mjgate::gzip::accepts_gzip(data) {
        assert!(lower.windows(4).any(|w| w == b"gzip") || lower.contains(&b'*'));
    }
    let tag = etag_of(data);
    if let Some(gzipped) = mjgate::gzip::Gzipped::of(data, &tag) {
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzipped.body[..]), &mut decoded)
            .expect("a gzip copy decodes");
        assert_eq!(decoded, data);
        assert_ne!(gzipped.etag, tag);
    }
});
