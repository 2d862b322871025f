//! When a finished answer's result expires: a stated moment (`expires_at`: Unix seconds or
//! milliseconds, or RFC 3339), or the expiry signed into its URLs (`X-Amz-Date` + `X-Amz-Expires`,
//! CloudFront / OSS `Expires=`). Read once, when an answer is stored.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Unix times at or above this are milliseconds (it is the year 5138 in seconds).
const MILLIS_FROM: u64 = 100_000_000_000;

/// The moment a JSON value states, if it is one.
pub fn moment(value: &Value) -> Option<SystemTime> {
    match value {
        // A moment before 1970 has passed: expired, not "no expiry".
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            .map(unix),
        Value::String(text) => match text.parse::<i64>() {
            Ok(n) => Some(unix(n.max(0) as u64)),
            Err(_) => humantime::parse_rfc3339_weak(text).ok(),
        },
        _ => None,
    }
}

fn unix(n: u64) -> SystemTime {
    if n >= MILLIS_FROM {
        UNIX_EPOCH + Duration::from_millis(n)
    } else {
        UNIX_EPOCH + Duration::from_secs(n)
    }
}

/// The earliest expiry signed into any URL among the strings of `value`.
pub fn signed_urls(value: &Value) -> Option<SystemTime> {
    match value {
        Value::String(text) => url_expiry(text),
        Value::Array(items) => items.iter().filter_map(signed_urls).min(),
        Value::Object(fields) => fields.values().filter_map(signed_urls).min(),
        _ => None,
    }
}

/// The expiry a URL's query states: S3 SigV4 (`X-Amz-Date` plus `X-Amz-Expires` seconds), a Unix
/// `Expires=` (CloudFront, Aliyun OSS, S3 SigV2), or Discord's signed attachment links (`ex=` the
/// expiry in hex Unix seconds, beside `is=` and `hm=`: `ex` alone is too common a name to trust).
pub fn url_expiry(url: &str) -> Option<SystemTime> {
    let (_, query) = url.split_once('?')?;
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    let mut amz_date = None;
    let mut amz_expires = None;
    let mut expires = None;
    let mut discord = (None, false, false);
    for pair in query.split('&') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        if name.eq_ignore_ascii_case("X-Amz-Date") {
            amz_date = parse_amz_date(value);
        } else if name.eq_ignore_ascii_case("X-Amz-Expires") {
            amz_expires = value.parse::<u64>().ok();
        } else if name == "Expires" {
            expires = value.parse::<u64>().ok().map(unix);
        } else if name == "ex" {
            discord.0 = (value.len() <= 16 && value.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(value, 16).ok().map(unix))
                .flatten();
        } else if name == "is" {
            discord.1 = true;
        } else if name == "hm" {
            discord.2 = true;
        }
    }
    let sigv4 = amz_date
        .zip(amz_expires)
        .map(|(date, seconds)| date + Duration::from_secs(seconds));
    let discord = match discord {
        (Some(at), true, true) => Some(at),
        _ => None,
    };
    sigv4.into_iter().chain(expires).chain(discord).min()
}

/// `20261130T120000Z`.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    if text.len() != 16 || !text.is_ascii() {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// The monotonic instant of a wall-clock moment (now, if it has passed).
pub fn instant_of(moment: SystemTime) -> Instant {
    let now = Instant::now();
    match moment.duration_since(SystemTime::now()) {
        Ok(left) => now + left,
        Err(_) => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn reads_seconds_milliseconds_and_rfc3339() {
        assert_eq!(
            secs(moment(&serde_json::json!(1_800_000_000)).unwrap()),
            1_800_000_000
        );
        assert_eq!(
            secs(moment(&serde_json::json!(1_800_000_000_000u64)).unwrap()),
            1_800_000_000
        );
        assert_eq!(
            secs(moment(&serde_json::json!("1800000000")).unwrap()),
            1_800_000_000
        );
        assert_eq!(
            secs(moment(&serde_json::json!("2027-01-15T08:00:00Z")).unwrap()),
            1_800_000_000
        );
        assert_eq!(
            moment(&serde_json::json!(-5)),
            Some(UNIX_EPOCH),
            "long past, not never"
        );
        assert_eq!(moment(&serde_json::json!("-5")), Some(UNIX_EPOCH));
        assert!(moment(&serde_json::json!(null)).is_none());
        assert!(moment(&serde_json::json!("soon")).is_none());
    }

    #[test]
    fn reads_signed_url_expiry() {
        let sigv4 = "https://b.s3.amazonaws.com/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261130T120000Z&X-Amz-Expires=3600&X-Amz-Signature=ab";
        assert_eq!(
            url_expiry(sigv4),
            humantime::parse_rfc3339("2026-11-30T13:00:00Z").ok()
        );
        let cloudfront =
            "https://d.cloudfront.net/v.mp4?Expires=1800000000&Signature=x&Key-Pair-Id=K";
        assert_eq!(secs(url_expiry(cloudfront).unwrap()), 1_800_000_000);
        assert_eq!(url_expiry("https://cdn.example/v.mp4"), None);
        assert_eq!(
            url_expiry("https://cdn.example/v.mp4?X-Amz-Expires=60"),
            None
        );
        // Discord's CDN: `ex` is hex seconds (0x6b49d200 = 1,800,000,000), signed with `is` and `hm`.
        let discord = "https://cdn.discordapp.com/attachments/1/2/grid_0.png?ex=6b49d200&is=6b487080&hm=ab12&";
        assert_eq!(secs(url_expiry(discord).unwrap()), 1_800_000_000);
        assert_eq!(
            url_expiry("https://cdn.example/a.png?ex=6b49d200"),
            None,
            "an `ex` without Discord's signature beside it is not an expiry"
        );
        assert_eq!(
            url_expiry("https://cdn.example/a.png?ex=zz&is=1&hm=2"),
            None
        );
        let answer = serde_json::json!({"output": ["https://a/x?Expires=1800000100", cloudfront], "id": "t"});
        assert_eq!(
            secs(signed_urls(&answer).unwrap()),
            1_800_000_000,
            "the earliest"
        );
    }
}
