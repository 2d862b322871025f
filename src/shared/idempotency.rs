//! Idempotency keys kept in the shared tier, so a retry on another replica is answered as on the
//! first: `{prefix}idem:{claim id hex}` holds the claim's token (hex, in clear, for the release script
//! to compare) and the record sealed under the fingerprint secret (a submit's answer can carry user
//! data), bound to its key as hook records are.

use std::time::Duration;

use super::{SharedCache, millis};
use crate::hex::push_hex;
use crate::idempotency::{KeyId, Record, codec};

/// Deletes a claim only if it is still the caller's (its token leads the value).
const RELEASE: &str = r"
local held = redis.call('get', KEYS[1])
if held and string.sub(held, 1, 32) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0";

impl SharedCache {
    fn idempotency_key(&self, id: &KeyId) -> Vec<u8> {
        let mut key = self.inner.prefix.clone();
        key.extend_from_slice(b"idem:");
        push_hex(&mut key, id);
        key
    }

    fn sealed_record(&self, key: &[u8], record: &Record) -> Vec<u8> {
        let mut value = Vec::with_capacity(32 + 64);
        push_hex(&mut value, &record.token());
        value.extend_from_slice(&self.inner.sealer.seal(key, &codec::encode(record)));
        value
    }

    fn open_record(&self, key: &[u8], value: &[u8]) -> Option<Record> {
        let plain = self.inner.sealer.open(key, value.get(32..)?)?;
        codec::decode(&plain)
    }

    /// Claims `id` across replicas (`SET NX`, for `ttl`): `Some(None)` when it is now the caller's,
    /// `Some(Some(record))` when a replica holds it, `None` when Redis failed (the caller goes on
    /// with its own process's claim). A value that does not open is another deployment's or forged:
    /// counted corrupt and treated as held in flight, so nothing is sent twice on its account.
    pub async fn claim_key(
        &self,
        id: &KeyId,
        record: &Record,
        ttl: Duration,
    ) -> Option<Option<Record>> {
        let key = self.idempotency_key(id);
        let value = self.sealed_record(&key, record);
        let mut connection = self.inner.connection.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .cmd("GET")
            .arg(&key);
        let (taken, held): (Option<String>, Option<Vec<u8>>) =
            self.run(pipe.query_async(&mut connection)).await?;
        if taken.is_some() {
            return Some(None);
        }
        match held.and_then(|held| self.open_record(&key, &held)) {
            Some(record) => Some(Some(record)),
            None => {
                self.inner
                    .metrics
                    .shared
                    .error(crate::metrics::SharedError::Corrupt);
                Some(Some(Record::InFlight {
                    digest: *record_digest(record),
                    token: [0; 16],
                }))
            }
        }
    }

    /// Writes the claim's answer, kept `ttl`.
    pub async fn complete_key(&self, id: &KeyId, record: &Record, ttl: Duration) {
        let key = self.idempotency_key(id);
        let value = self.sealed_record(&key, record);
        let mut connection = self.inner.connection.clone();
        let _: Option<()> = self
            .run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut connection),
            )
            .await;
    }

    /// Gives a claim back, if it is still the caller's.
    pub async fn release_key(&self, id: &KeyId, token: &[u8; 16]) {
        let key = self.idempotency_key(id);
        let mut hex = Vec::with_capacity(32);
        push_hex(&mut hex, token);
        let mut connection = self.inner.connection.clone();
        let _: Option<i64> = self
            .run(
                redis::Script::new(RELEASE)
                    .key(&key)
                    .arg(hex)
                    .invoke_async(&mut connection),
            )
            .await;
    }
}

/// The digest a claim was made with (a value that does not open is taken for this very request's:
/// in flight, so a retry is told to wait, never sent).
fn record_digest(record: &Record) -> &[u8; 32] {
    match record {
        Record::InFlight { digest, .. } | Record::Done { digest, .. } => digest,
    }
}
