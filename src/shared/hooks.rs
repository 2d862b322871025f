//! Webhook deliveries kept in the shared tier, so they survive a restart and move to another replica.
//!
//! Each watched hook is a record (`{prefix}hook:{<id>}`), an entry in the index `{prefix}hooks`, and
//! a lease (`{prefix}hook-lease:{<id>}`): the braces are a hash tag, so a record and its lease share
//! a cluster slot. The
//! replica delivering it holds the lease and renews it; a replica that stops (shut down, killed)
//! stops renewing, and another one's sweep takes the lease and goes on from the last delivered
//! state. Only the lease holder delivers, so one replica delivers a given event. The record holds the
//! submitting client's credential (the task is read with it), so it is sealed (ChaCha20-Poly1305)
//! under a key derived from `shared_cache.fingerprint_secret`: Redis alone does not reveal it.

use std::time::Duration;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use super::{Lease, SharedCache, millis};

/// Most records one sweep looks at.
const SWEEP_KEYS: usize = 200;

/// One watched hook, as kept in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    /// Random per hook; names its Redis keys.
    pub id: String,
    /// The family's name (numbers may differ between replicas).
    pub family: String,
    pub task_id: String,
    /// The task's status path upstream.
    pub path: String,
    pub hook: String,
    /// The submitting request's credential headers, `(name, value)`.
    pub credential: Vec<(String, Vec<u8>)>,
    /// The `ETag` of the last state delivered (or given up), if any.
    pub delivered: Option<String>,
    /// The event under delivery (its `webhook-id` and the `ETag` of its state), so a replica taking
    /// the hook over retries it under the same id.
    #[serde(default)]
    pub pending: Option<(String, String)>,
    /// The gateway's own callback token, if the upstream was given one.
    pub callback: Option<String>,
}

/// A callback token the gateway handed an upstream, as kept in Redis (`{prefix}callback:{token}`), so
/// that whichever replica the upstream calls back reaches the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackRecord {
    /// The submitting credential's fingerprint (every replica computes the same one).
    pub fingerprint: Vec<u8>,
    /// The family's name.
    pub family: String,
    /// The task it is bound to, once the submit's answer (or the first callback) named it.
    pub task_id: Option<String>,
    /// The task is over: its callbacks are acknowledged and ignored.
    #[serde(default)]
    pub finished: bool,
}

/// Seals and opens records.
pub struct Sealer(LessSafeKey);

impl Sealer {
    pub fn new(secret: &[u8]) -> Self {
        let key = blake3::derive_key("mjgate 2026-12 sealed records", secret);
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key");
        Sealer(LessSafeKey::new(key))
    }

    /// `plain`, sealed and bound to `key` (the Redis key it is written under, as associated data): a
    /// value copied to another key does not open there.
    pub(super) fn seal(&self, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = plain.to_vec();
        if self
            .0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key),
                &mut sealed,
            )
            .is_err()
        {
            return Vec::new();
        }
        let mut value = nonce.to_vec();
        value.extend_from_slice(&sealed);
        value
    }

    /// The plain text of a value sealed for `key`; `None` if it was not (tampered, moved, forged).
    pub(super) fn open(&self, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        if value.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = value.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(key), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

impl SharedCache {
    fn hook_key(&self, id: &str) -> Vec<u8> {
        let mut key = self.inner.prefix.clone();
        key.extend_from_slice(b"hook:{");
        key.extend_from_slice(id.as_bytes());
        key.push(b'}');
        key
    }

    fn hook_lease_key(&self, id: &str) -> Vec<u8> {
        let mut key = self.inner.prefix.clone();
        key.extend_from_slice(b"hook-lease:{");
        key.extend_from_slice(id.as_bytes());
        key.push(b'}');
        key
    }

    fn callback_key(&self, token: &str) -> Vec<u8> {
        let mut key = self.inner.prefix.clone();
        key.extend_from_slice(b"callback:");
        key.extend_from_slice(token.as_bytes());
        key
    }

    /// Writes callback `token`'s record, kept at most `ttl` (a hook's `max_age`).
    pub async fn save_callback(&self, token: &str, record: &CallbackRecord, ttl: Duration) {
        let Ok(plain) = serde_json::to_vec(record) else {
            return;
        };
        let key = self.callback_key(token);
        let value = self.inner.sealer.seal(&key, &plain);
        let mut connection = self.inner.connection.clone();
        let _: Option<()> = self
            .run(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut connection),
            )
            .await;
    }

    /// Callback `token`'s record, if one was saved (by any replica) and opens under the shared secret.
    pub async fn load_callback(&self, token: &str) -> Option<CallbackRecord> {
        if !self.is_up() {
            return None;
        }
        let mut connection = self.inner.connection.clone();
        let key = self.callback_key(token);
        let value: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(&key).query_async(&mut connection))
            .await
            .flatten();
        let plain = self.inner.sealer.open(&key, &value?)?;
        serde_json::from_slice(&plain).ok()
    }

    /// Forgets callback `token`.
    pub async fn delete_callback(&self, token: &str) {
        let mut connection = self.inner.connection.clone();
        let _: Option<()> = self
            .run(
                redis::cmd("DEL")
                    .arg(self.callback_key(token))
                    .query_async(&mut connection),
            )
            .await;
    }

    /// Takes the lease of hook `id`: `None` when another replica holds it or Redis failed.
    pub async fn lease_hook(&self, id: &str) -> Option<Lease> {
        match self.try_lease_named(&self.hook_lease_key(id)).await? {
            super::LeaseTry::Taken(lease) => Some(lease),
            super::LeaseTry::Held | super::LeaseTry::Foreign => None,
        }
    }

    /// The set of every hook record's id: what a sweep draws from. (A `SCAN` of the keyspace would
    /// wade through every task key to find the few hooks.)
    fn hook_index(&self) -> Vec<u8> {
        let mut key = self.inner.prefix.clone();
        key.extend_from_slice(b"hooks");
        key
    }

    /// Writes (or rewrites) `record`, kept at most `ttl`, and lists it in the index.
    pub async fn save_hook(&self, record: &HookRecord, ttl: Duration) {
        let Ok(plain) = serde_json::to_vec(record) else {
            return;
        };
        let key = self.hook_key(&record.id);
        let value = self.inner.sealer.seal(&key, &plain);
        // The index has a slot of its own on a cluster: two pipelines there, one here.
        let index = self.hook_index();
        let mut pipes = super::Pipes::new(&self.inner.connection);
        pipes
            .on(&key)
            .cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .ignore();
        pipes
            .on(&index)
            .cmd("SADD")
            .arg(&index)
            .arg(&record.id)
            .ignore();
        let _: Option<()> = self.run(pipes.run(&self.inner.connection)).await;
    }

    /// Forgets hook `id`: its deliveries are over (or its record expired).
    pub async fn delete_hook(&self, id: &str) {
        let (key, index) = (self.hook_key(id), self.hook_index());
        let mut pipes = super::Pipes::new(&self.inner.connection);
        pipes.on(&key).cmd("DEL").arg(&key).ignore();
        pipes.on(&index).cmd("SREM").arg(&index).arg(id).ignore();
        let _: Option<()> = self.run(pipes.run(&self.inner.connection)).await;
    }

    /// Hooks no replica is delivering (their lease lapsed), each with its lease now held by this
    /// replica; at most `max`, drawn at random from the index so that every replica's sweep does not
    /// race for the same ones.
    pub async fn orphan_hooks(&self, max: usize) -> Vec<(HookRecord, Lease)> {
        if !self.is_up() {
            return Vec::new();
        }
        let mut connection = self.inner.connection.clone();
        let ids: Option<Vec<String>> = self
            .run(
                redis::cmd("SRANDMEMBER")
                    .arg(self.hook_index())
                    .arg(SWEEP_KEYS)
                    .query_async(&mut connection),
            )
            .await;
        let mut taken = Vec::new();
        for id in ids.unwrap_or_default() {
            if taken.len() >= max {
                break;
            }
            let Some(lease) = self.lease_hook(&id).await else {
                continue;
            };
            let value: Option<Option<Vec<u8>>> = self
                .run(
                    redis::cmd("GET")
                        .arg(self.hook_key(&id))
                        .query_async(&mut connection),
                )
                .await;
            let Some(value) = value else {
                // Redis failed: the record stays listed; the next sweep looks again.
                lease.release().await;
                continue;
            };
            let key = self.hook_key(&id);
            let record = value
                .and_then(|value| self.inner.sealer.open(&key, &value))
                .and_then(|plain| serde_json::from_slice::<HookRecord>(&plain).ok());
            match record {
                Some(record) if record.id == id => taken.push((record, lease)),
                _ => {
                    // Expired past `max_age`, or not ours to read: nothing to deliver.
                    self.delete_hook(&id).await;
                    lease.release().await;
                }
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_sealed_and_only_the_shared_secret_opens_them() {
        let sealer = Sealer::new(b"fingerprint-secret-0123456789");
        let sealed = sealer.seal(b"hook:1", b"Bearer sk-live-123");
        assert!(
            !sealed.windows(7).any(|w| w == b"sk-live"),
            "nothing in clear"
        );
        assert_eq!(
            sealer.open(b"hook:1", &sealed).unwrap(),
            b"Bearer sk-live-123"
        );
        assert_eq!(
            sealer.open(b"hook:2", &sealed),
            None,
            "moved to another key"
        );
        assert_ne!(
            sealer.seal(b"hook:1", b"x"),
            sealer.seal(b"hook:1", b"x"),
            "a fresh nonce each time"
        );
        let other = Sealer::new(b"another-secret-0123456789");
        assert_eq!(other.open(b"hook:1", &sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open(b"hook:1", &tampered), None);
        assert_eq!(sealer.open(b"hook:1", b"short"), None);
    }
}
