//! Request heads as an attacker writes them: whatever the method, target, version and headers, an
//! admitted request is partitioned by exactly the credential the upstream will receive.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mjgate::upstream::partition_is_what_is_forwarded;
use mjgate::credential::Fingerprinter;

fuzz_target!(|data: &[u8]| {
    // Line one: a method byte, a version byte, then the target; then `name:value` lines.
    let mut lines = data.split(|&b| b == b'\n');
    let Some(first) = lines.next() else { return };
    let [method, version, target @ ..] = first else { return };
    let method = [
        http::Method::GET,
        http::Method::POST,
        http::Method::OPTIONS,
        http::Method::CONNECT,
        http::Method::TRACE,
    ][usize::from(*method) % 5]
        .clone();
    let version = [http::Version::HTTP_10, http::Version::HTTP_11, http::Version::HTTP_2]
        [usize::from(*version) % 3];
    let Ok(uri) = http::Uri::try_from(target) else { return };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let fingerprinter = Fingerprinter::with_key([9; 32]);
    if let Ok(holds) =
        partition_is_what_is_forwarded(&fingerprinter, &method, &uri, version, &headers)
    {
        assert!(holds, "partition is not what is forwarded: {headers:?}");
    }
});
