//! What clients and Redis hand the idempotency code: `Idempotency-Key` header values and the records
//! read back from Redis (after their seal is checked, but a replica of another version may have
//! written them). None may panic; an accepted key is 1 to 255 bytes and the draft's quoted form of
//! it names the same key; a record that decodes survives a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mjgate::idempotency::key::{MAX_KEY_LEN, parse};
use mjgate::idempotency::{Record, codec};

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = parse(data) {
        assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
        let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
        assert_eq!(parse(quoted.as_bytes()).as_deref(), Ok(key.as_str()));
    }
    if let Some(record) = codec::decode(data) {
        let again = codec::decode(&codec::encode(&record)).expect("round trip");
        match (record, again) {
            (Record::InFlight { digest: a, token: b }, Record::InFlight { digest: c, token: d }) => {
                assert_eq!((a, b), (c, d));
            }
            (
                Record::Done { digest: a, token: b, answer: x },
                Record::Done { digest: c, token: d, answer: y },
            ) => {
                assert_eq!((a, b), (c, d));
                assert_eq!(x.status, y.status);
                assert_eq!(x.headers, y.headers);
                assert_eq!(x.body, y.body);
            }
            _ => panic!("the kind changed in a round trip"),
        }
    }
});
