//! The keys this process holds: claims in flight and the answers kept for retries, bounded in bytes
//! (`idempotency.max_memory`) and per credential (`idempotency.max_keys_per_credential`). A key is
//! never evicted to make room before its time (a retry would then start a second paid job): past a
//! bound, new keys are refused instead, and old ones leave only when they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use parking_lot::Mutex;

use super::{Digest, KeyId, Record, Refusal};
use crate::config::IdempotencyConfig;
use crate::credential::CredentialFingerprint;
use crate::metrics::Metrics;

/// Bytes a key costs besides its answer: the map's entry, the record, the per-credential count.
const KEY_OVERHEAD: u32 = 256;

struct Entry {
    record: Record,
    credential: CredentialFingerprint,
}

/// How long an entry is kept: a claim in flight for the claim's bound, an answer for the TTL.
#[derive(Clone, Copy)]
struct Lifetimes {
    in_flight: Duration,
    done: Duration,
}

impl Expiry<KeyId, Arc<Entry>> for Lifetimes {
    fn expire_after_create(&self, _: &KeyId, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(self.of(entry))
    }

    fn expire_after_update(
        &self,
        _: &KeyId,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.of(entry))
    }
}

impl Lifetimes {
    fn of(&self, entry: &Entry) -> Duration {
        match entry.record {
            Record::InFlight { .. } => self.in_flight,
            Record::Done { .. } => self.done,
        }
    }
}

fn weigh(entry: &Entry) -> u32 {
    let answer = match &entry.record {
        Record::Done { answer, .. } => answer.weight(),
        Record::InFlight { .. } => 0,
    };
    u32::try_from(answer)
        .unwrap_or(u32::MAX)
        .saturating_add(KEY_OVERHEAD)
}

pub(super) struct LocalKeys {
    entries: Cache<KeyId, Arc<Entry>>,
    per_credential: Arc<Mutex<HashMap<CredentialFingerprint, usize>>>,
    max_memory: u64,
    max_per_credential: usize,
    metrics: Arc<Metrics>,
}

impl LocalKeys {
    pub(super) fn new(
        config: &IdempotencyConfig,
        claim_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let per_credential: Arc<Mutex<HashMap<CredentialFingerprint, usize>>> = Arc::default();
        let counts = Arc::clone(&per_credential);
        let on_removal = Arc::clone(&metrics);
        let entries = Cache::builder()
            // Room beyond the budget, which admission keeps to: moka must never evict a live key.
            .max_capacity(config.max_memory.saturating_mul(4))
            .weigher(|_: &KeyId, entry: &Arc<Entry>| weigh(entry))
            .expire_after(Lifetimes {
                in_flight: claim_ttl,
                done: config.ttl,
            })
            .eviction_listener(move |_: Arc<KeyId>, entry: Arc<Entry>, cause| {
                on_removal.idempotency_keys(-1, -i64::from(weigh(&entry)));
                if cause != RemovalCause::Replaced {
                    let mut counts = counts.lock();
                    if let Some(n) = counts.get_mut(&entry.credential) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            counts.remove(&entry.credential);
                        }
                    }
                }
            })
            .build();
        LocalKeys {
            entries,
            per_credential,
            max_memory: config.max_memory,
            max_per_credential: config.max_keys_per_credential,
            metrics,
        }
    }

    /// Claims `id`: `Ok(None)` when it is now this request's, `Ok(Some(record))` when the key is
    /// known (in flight or answered), `Err` past a bound.
    pub(super) fn claim(
        &self,
        id: KeyId,
        digest: Digest,
        token: [u8; 16],
        credential: CredentialFingerprint,
    ) -> Result<Option<Record>, Refusal> {
        if let Some(existing) = self.entries.get(&id) {
            return Ok(Some(existing.record.clone()));
        }
        if self.entries.weighted_size() >= self.max_memory {
            self.entries.run_pending_tasks();
            if self.entries.weighted_size() >= self.max_memory {
                return Err(Refusal::Full);
            }
        }
        {
            let mut counts = self.per_credential.lock();
            let mine = counts.entry(credential).or_default();
            if *mine >= self.max_per_credential {
                return Err(Refusal::CredentialFull);
            }
            *mine += 1;
        }
        let entry = Arc::new(Entry {
            record: Record::InFlight { digest, token },
            credential,
        });
        let inserted = self.entries.entry(id).or_insert(Arc::clone(&entry));
        if inserted.is_fresh() {
            self.metrics.idempotency_keys(1, i64::from(weigh(&entry)));
            return Ok(None);
        }
        // Another request claimed it in between: not this one's count.
        self.uncount(&credential);
        Ok(Some(inserted.into_value().record.clone()))
    }

    /// Keeps `record` (a finished answer) in place of the claim.
    pub(super) fn complete(&self, id: KeyId, record: Record) {
        let Some(claimed) = self.entries.get(&id) else {
            return;
        };
        let entry = Arc::new(Entry {
            record,
            credential: claimed.credential,
        });
        self.metrics.idempotency_keys(1, i64::from(weigh(&entry)));
        self.entries.insert(id, entry);
    }

    /// Keeps another replica's answer, found in Redis, for the next retry here.
    pub(super) fn remember(&self, id: KeyId, record: Record, credential: CredentialFingerprint) {
        *self.per_credential.lock().entry(credential).or_default() += 1;
        let entry = Arc::new(Entry { record, credential });
        self.metrics.idempotency_keys(1, i64::from(weigh(&entry)));
        self.entries.insert(id, entry);
    }

    /// Forgets `id` (its request never reached the upstream, or another replica holds it).
    pub(super) fn forget(&self, id: &KeyId) {
        self.entries.invalidate(id);
    }

    fn uncount(&self, credential: &CredentialFingerprint) {
        let mut counts = self.per_credential.lock();
        if let Some(n) = counts.get_mut(credential) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(credential);
            }
        }
    }
}
