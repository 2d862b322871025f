//! The value a task answer is kept as in Redis: a fixed header the gateway reads, the upstream's
//! bytes untouched, and a tag that binds both to the key they are kept under.
//!
//! Nothing read from Redis is trusted beyond what it proves about itself: anyone who can write there
//! (another deployment, an operator's `COPY`, an attacker on a shared Redis) could otherwise hand one
//! credential's answer to another, or make a running task look finished. So every value carries a
//! keyed BLAKE3 tag, under a key derived from `shared_cache.fingerprint_secret` (which every replica
//! shares and Redis never sees), over the Redis key's name and the value: a value copied, moved or
//! replayed under another key, forged, truncated or with one byte flipped does not decode, is counted
//! `corrupt` and is fetched again. What does decode is checked too: its size (no larger than
//! `upstream.max_body` allows), its status against its class, its task span against its body.
//!
//! `MJG3` | class (1 byte) | HTTP status (u16) | fetched at, Unix ms (u64) | content-type length (u16) |
//! keep until, Unix ms (u64, 0: for ever) | task span start, end (u32, u32) | content type | body |
//! tag (32 bytes). Fetched-at lets every replica give the same `Age` and the same remaining TTL;
//! keep-until carries a finished answer's own expiry, so no replica serves it past that. Values of
//! earlier versions (`MJG1`, `MJG2`, unauthenticated) are not read: the first replica to miss on one
//! fetches the task again and writes it anew.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::cache::CachedTask;
use crate::task::TaskClass;

const MAGIC: &[u8; 4] = b"MJG3";
const HEADER_LEN: usize = 4 + 1 + 2 + 8 + 2 + 8 + 4 + 4;
const TAG_LEN: usize = blake3::OUT_LEN;

/// The key values are tagged under, derived from the secret every replica shares.
#[derive(Clone)]
pub struct ValueKey([u8; 32]);

impl ValueKey {
    pub fn new(secret: &[u8]) -> Self {
        ValueKey(blake3::derive_key(
            "mjgate 2026-12 shared task values",
            secret,
        ))
    }

    fn tag(&self, key: &[u8], value: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(&(key.len() as u64).to_le_bytes());
        mac.update(key);
        mac.update(value);
        mac.finalize()
    }
}

impl std::fmt::Debug for ValueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueKey(<redacted>)")
    }
}

/// The most bytes a value may hold around a body of `max_body` bytes.
pub fn max_value_len(max_body: u64) -> u64 {
    max_body + (HEADER_LEN + usize::from(u16::MAX) + TAG_LEN) as u64
}

/// The stored value of `task` under the Redis key `key` (public for the fuzz target).
pub fn encode(task: &CachedTask, key: &[u8], seal: &ValueKey) -> Vec<u8> {
    let content_type = task.content_type.as_ref().map_or(&[][..], |v| v.as_bytes());
    let content_type = &content_type[..content_type.len().min(usize::from(u16::MAX))];
    let now = SystemTime::now();
    let fetched_at = unix_millis(now).saturating_sub(millis(task.stored_at.elapsed()));
    let keep_until = task.keep_until.map_or(0, |until| {
        let left = until.saturating_duration_since(std::time::Instant::now());
        unix_millis(now + left).max(1)
    });
    let span = task.task_span();
    let mut value = Vec::with_capacity(HEADER_LEN + content_type.len() + task.body.len() + TAG_LEN);
    value.extend_from_slice(MAGIC);
    value.push(task.class().index());
    value.extend_from_slice(&task.status().as_u16().to_be_bytes());
    value.extend_from_slice(&fetched_at.to_be_bytes());
    value.extend_from_slice(&(content_type.len() as u16).to_be_bytes());
    value.extend_from_slice(&keep_until.to_be_bytes());
    value.extend_from_slice(&(span.start as u32).to_be_bytes());
    value.extend_from_slice(&(span.end as u32).to_be_bytes());
    value.extend_from_slice(content_type);
    value.extend_from_slice(&task.body);
    let tag = seal.tag(key, &value);
    value.extend_from_slice(tag.as_bytes());
    value
}

/// Reads a value back from the Redis key `key`; `None` for anything this version did not write for
/// that key under the shared secret, or that fails its checks (public for the fuzz target).
pub fn decode(value: &[u8], key: &[u8], seal: &ValueKey, max_body: u64) -> Option<CachedTask> {
    if value.len() as u64 > max_value_len(max_body) || value.len() < HEADER_LEN + TAG_LEN {
        return None;
    }
    let (signed, tag) = value.split_at(value.len() - TAG_LEN);
    // `blake3::Hash` compares in constant time.
    if seal.tag(key, signed) != blake3::Hash::from_bytes(tag.try_into().ok()?) {
        return None;
    }
    if signed.get(..4)? != MAGIC {
        return None;
    }
    let header = &signed[..HEADER_LEN];
    let class = TaskClass::from_index(header[4])?;
    let status = StatusCode::from_u16(u16::from_be_bytes([header[5], header[6]])).ok()?;
    let fetched_at = u64::from_be_bytes(header[7..15].try_into().ok()?);
    let content_type_len = usize::from(u16::from_be_bytes([header[15], header[16]]));
    let keep_until = u64::from_be_bytes(header[17..25].try_into().ok()?);
    let start = u32::from_be_bytes(header[25..29].try_into().ok()?) as usize;
    let end = u32::from_be_bytes(header[29..33].try_into().ok()?) as usize;
    let rest = &signed[HEADER_LEN..];
    let content_type = rest.get(..content_type_len)?;
    let body = &rest[content_type_len..];
    if body.len() as u64 > max_body {
        return None;
    }
    let content_type = if content_type.is_empty() {
        None
    } else {
        Some(HeaderValue::from_bytes(content_type).ok()?)
    };
    let now = SystemTime::now();
    // A clock ahead of ours makes the age 0, never negative.
    let age = Duration::from_millis(unix_millis(now).saturating_sub(fetched_at));
    let keep_until = (keep_until != 0)
        .then(|| crate::family::expiry::instant_of(UNIX_EPOCH + Duration::from_millis(keep_until)));
    let task = CachedTask::restored(
        status,
        Bytes::copy_from_slice(body),
        content_type,
        class,
        age,
    )?
    .keep_until(keep_until);
    if start > end || end > task.body.len() {
        return None;
    }
    Some(task.task_at(start..end))
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 20;

    fn seal() -> ValueKey {
        ValueKey::new(b"0123456789abcdef0123456789abcdef")
    }

    fn finished() -> CachedTask {
        CachedTask::new(
            Bytes::from_static(br#"{"id":"t","status":"SUCCESS"}"#),
            Some(HeaderValue::from_static("application/json")),
            TaskClass::Terminal,
        )
    }

    #[test]
    fn a_value_round_trips_with_its_age() {
        let mut task = finished();
        task.stored_at -= Duration::from_secs(42);
        let back = decode(&encode(&task, b"k", &seal()), b"k", &seal(), MAX).unwrap();
        assert_eq!(back.body, task.body);
        assert_eq!(back.class(), TaskClass::Terminal);
        assert_eq!(back.status(), StatusCode::OK);
        assert_eq!(back.content_type, task.content_type);
        assert_eq!(back.age(), 42);
    }

    #[test]
    fn a_not_found_answer_keeps_its_status_and_no_content_type() {
        let task = CachedTask::not_found(StatusCode::NOT_FOUND, Bytes::new(), None);
        let back = decode(&encode(&task, b"k", &seal()), b"k", &seal(), MAX).unwrap();
        assert_eq!(back.status(), StatusCode::NOT_FOUND);
        assert_eq!(back.class(), TaskClass::NotFound);
        assert!(back.content_type.is_none() && back.body.is_empty());
    }

    #[test]
    fn a_value_moved_to_another_key_or_sealed_by_another_secret_is_refused() {
        let value = encode(&finished(), b"mjgate:task:aaaa:midjourney:t", &seal());
        assert!(decode(&value, b"mjgate:task:bbbb:midjourney:t", &seal(), MAX).is_none());
        let other = ValueKey::new(b"another secret, another deployment");
        assert!(decode(&value, b"mjgate:task:aaaa:midjourney:t", &other, MAX).is_none());
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let value = encode(&finished(), b"k", &seal());
        for i in 0..value.len() {
            let mut flipped = value.clone();
            flipped[i] ^= 0x01;
            assert!(decode(&flipped, b"k", &seal(), MAX).is_none(), "byte {i}");
            assert!(
                decode(&value[..i], b"k", &seal(), MAX).is_none(),
                "cut at {i}"
            );
        }
    }

    #[test]
    fn values_too_large_or_inconsistent_are_refused_even_when_tagged() {
        let big = CachedTask::new(Bytes::from(vec![b'x'; 4096]), None, TaskClass::Terminal);
        let value = encode(&big, b"k", &seal());
        assert!(
            decode(&value, b"k", &seal(), 1024).is_none(),
            "over max_body"
        );
        assert!(decode(&value, b"k", &seal(), 4096).is_some());
        // A writer holding the secret but writing nonsense: a task object with status 999.
        let mut bad = encode(&finished(), b"k", &seal());
        bad.truncate(bad.len() - TAG_LEN);
        bad[5..7].copy_from_slice(&999u16.to_be_bytes());
        let tag = seal().tag(b"k", &bad);
        bad.extend_from_slice(tag.as_bytes());
        assert!(decode(&bad, b"k", &seal(), MAX).is_none());
    }
}
