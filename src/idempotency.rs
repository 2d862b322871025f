//! Submits that are safe to retry: `Idempotency-Key` on every family's submit routes, after
//! draft-ietf-httpapi-idempotency-key-header-07 and Stripe's documented behaviour.
//!
//! The first request with a key claims it and goes upstream; its answer (status, the headers a client
//! needs, body) is kept under the key for `idempotency.ttl` and replayed byte for byte, marked
//! `Idempotent-Replayed: true`, to any retry with the same key and body. A retry while the first is in
//! flight gets `409` with `Retry-After`; the same key with another body `422`; a malformed key `400`.
//! None of these reach the upstream. A claim is scoped to the credential's keyed fingerprint and the
//! family (as Stripe scopes keys to the account): two credentials with the same key never see each
//! other's answers, and one key reused on another submit route is a different request (422).
//!
//! Nothing is kept when the request never reached the upstream (the ceilings or the breaker refused it,
//! no connection could be made): the retry is a fresh attempt. Everything else the upstream answered is
//! kept, `5xx` included (it may have started the paid job before failing), but a `429` (it refused
//! without starting anything). An answer that never came within `upstream.submit_timeout` is kept as a
//! `504` saying the task may exist: a retry never sends the submit twice.
//!
//! Where the keys live: in this process ([`local`]), bounded in bytes by `idempotency.max_memory` and
//! per credential by `idempotency.max_keys_per_credential`, refused (`503`, `429`) past either; with the
//! Redis tier, claimed atomically there too (`SET NX`), the answer sealed as webhook records are, so a
//! retry on another replica is answered alike. A claim outlives any submit that could still land
//! (`upstream.submit_timeout` and a margin), so a replica that dies mid-submit leaves a claim that
//! answers `409` until then, never a second upstream submit.

pub mod key;
mod local;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::IdempotencyConfig;
use crate::credential::CredentialFingerprint;
use crate::metrics::{IdempotencyOutcome, Metrics};
use crate::shared::SharedCache;
use local::LocalKeys;

pub use key::{IDEMPOTENCY_KEY, KeyError};

/// Sent on every replayed answer.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Past a submit that could still land, how much longer its claim is held.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// A claim's identity: a keyed hash of (credential, family, key).
pub type KeyId = [u8; 32];
/// A keyed hash of the request (method, route, content type, body).
pub type Digest = [u8; 32];

/// An upstream's answer to a submit, kept under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    /// The headers a client needs, as the upstream sent them (hop-by-hop and framing headers left out).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl StoredAnswer {
    /// Bytes it holds, for the memory budget.
    pub fn weight(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 32)
                .sum::<usize>()
            + 64
    }
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Its first request is on its way upstream.
    InFlight { digest: Digest, token: [u8; 16] },
    /// Its first request's answer.
    Done {
        digest: Digest,
        token: [u8; 16],
        answer: StoredAnswer,
    },
}

impl Record {
    fn digest(&self) -> &Digest {
        match self {
            Record::InFlight { digest, .. } | Record::Done { digest, .. } => digest,
        }
    }

    pub fn token(&self) -> [u8; 16] {
        match self {
            Record::InFlight { token, .. } | Record::Done { token, .. } => *token,
        }
    }
}

/// Why a request with a key is answered without going upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadKey(KeyError),
    #[error("this route requires an Idempotency-Key")]
    Required,
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    InFlight,
    #[error("this Idempotency-Key was used with another request body")]
    Mismatch,
    #[error("too many idempotency keys are kept for this credential; retry later")]
    CredentialFull,
    #[error("too many idempotency keys are kept; retry later")]
    Full,
}

/// What claiming a key found.
pub enum Claim {
    /// The key is this request's: send it upstream, then [`Ticket::complete`] or
    /// [`Ticket::release`].
    Fresh(Ticket),
    /// The key's first request was answered: replay that.
    Replay(StoredAnswer),
    /// Answer without going upstream.
    Refused(Refusal),
}

/// The service: claims, answers, bounds.
pub struct Idempotency {
    config: IdempotencyConfig,
    local: LocalKeys,
    shared: Option<SharedCache>,
    metrics: Arc<Metrics>,
    /// Keys claim ids and digests: the shared secret with Redis (every replica computes the same
    /// id), a random one without.
    hash_key: [u8; 32],
    /// How long a claim in flight is held: `upstream.submit_timeout` and a margin.
    claim_ttl: Duration,
}

impl Idempotency {
    pub fn new(
        config: &IdempotencyConfig,
        submit_timeout: Duration,
        shared: Option<SharedCache>,
        secret: Option<&[u8]>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let hash_key = match secret {
            Some(secret) => blake3::derive_key("mjgate 2026-12 idempotency keys", secret),
            None => rand::random(),
        };
        let claim_ttl = submit_timeout + CLAIM_MARGIN;
        Idempotency {
            local: LocalKeys::new(config, claim_ttl, Arc::clone(&metrics)),
            config: config.clone(),
            shared,
            metrics,
            hash_key,
            claim_ttl,
        }
    }

    pub fn required(&self) -> bool {
        self.config.require
    }

    /// Counts a submit that carried no key and went through as before.
    pub fn bypassed(&self) {
        self.metrics.idempotency(IdempotencyOutcome::Bypassed);
    }

    /// Counts a refusal the gateway made before claiming (a malformed key, a missing one required).
    pub fn refused(&self, refusal: &Refusal) {
        self.metrics.idempotency(match refusal {
            Refusal::InFlight => IdempotencyOutcome::InFlight,
            Refusal::Mismatch => IdempotencyOutcome::Mismatch,
            Refusal::CredentialFull | Refusal::Full => IdempotencyOutcome::Full,
            Refusal::BadKey(_) | Refusal::Required => IdempotencyOutcome::Invalid,
        });
    }

    /// The claim id of `key` for `credential` in `family` (its name).
    pub fn key_id(&self, credential: &CredentialFingerprint, family: &str, key: &str) -> KeyId {
        let mut hash = blake3::Hasher::new_keyed(&self.hash_key);
        hash.update(b"key\0");
        hash.update(credential.as_bytes());
        for part in [family, key] {
            hash.update(&(part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        *hash.finalize().as_bytes()
    }

    /// The digest a retry's request must match: its route, content type and body.
    pub fn digest(&self, route: &str, content_type: Option<&HeaderValue>, body: &[u8]) -> Digest {
        let mut hash = blake3::Hasher::new_keyed(&self.hash_key);
        hash.update(b"digest\0");
        for part in [
            route.as_bytes(),
            content_type.map_or(&[][..], |v| v.as_bytes()),
        ] {
            hash.update(&(part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        hash.update(body);
        *hash.finalize().as_bytes()
    }

    /// Claims `id` for a request with `digest`, by `credential`: locally, then (when it is up) in
    /// Redis, atomically across replicas.
    pub async fn claim(
        self: &Arc<Self>,
        id: KeyId,
        digest: Digest,
        credential: CredentialFingerprint,
    ) -> Claim {
        let token: [u8; 16] = rand::random();
        let claim = match self.local.claim(id, digest, token, credential) {
            Ok(None) => None,
            Ok(Some(existing)) => Some(self.answer_to(existing, &digest)),
            Err(refusal) => Some(Claim::Refused(refusal)),
        };
        if let Some(claim) = claim {
            return self.counted(claim);
        }
        // Ours here; the other replicas may know the key.
        if let Some(shared) = self.shared.as_ref().filter(|shared| shared.is_up()) {
            let record = Record::InFlight { digest, token };
            match shared.claim_key(&id, &record, self.claim_ttl).await {
                Some(None) | None => {}
                Some(Some(existing)) => {
                    // Another replica's: not ours to hold here.
                    self.local.forget(&id);
                    if let Record::Done { .. } = &existing {
                        self.local.remember(id, existing.clone(), credential);
                    }
                    return self.counted(self.answer_to(existing, &digest));
                }
            }
        }
        Claim::Fresh(Ticket {
            service: Arc::clone(self),
            id,
            digest,
            token,
            settled: false,
        })
    }

    fn answer_to(&self, existing: Record, digest: &Digest) -> Claim {
        if existing.digest() != digest {
            return Claim::Refused(Refusal::Mismatch);
        }
        match existing {
            Record::InFlight { .. } => Claim::Refused(Refusal::InFlight),
            Record::Done { answer, .. } => Claim::Replay(answer),
        }
    }

    fn counted(&self, claim: Claim) -> Claim {
        match &claim {
            Claim::Replay(_) => self.metrics.idempotency(IdempotencyOutcome::Replayed),
            Claim::Refused(refusal) => self.refused(refusal),
            Claim::Fresh(_) => {}
        }
        claim
    }
}

/// A claimed key, to be settled with the upstream's answer, or given back if the request never
/// reached the upstream. Dropped unsettled (its task panicked), the key is given back.
pub struct Ticket {
    service: Arc<Idempotency>,
    id: KeyId,
    digest: Digest,
    token: [u8; 16],
    settled: bool,
}

impl Ticket {
    /// Keeps `answer` under the key for `idempotency.ttl`, here and in Redis.
    pub async fn complete(mut self, answer: StoredAnswer) {
        self.settled = true;
        let service = Arc::clone(&self.service);
        let record = Record::Done {
            digest: self.digest,
            token: self.token,
            answer,
        };
        service.local.complete(self.id, record.clone());
        if let Some(shared) = &service.shared {
            shared
                .complete_key(&self.id, &record, service.config.ttl)
                .await;
        }
        service.metrics.idempotency(IdempotencyOutcome::Stored);
    }

    /// Gives the key back: the request never reached the upstream, and a retry is a fresh attempt.
    pub async fn release(mut self) {
        self.settled = true;
        let service = Arc::clone(&self.service);
        service.local.forget(&self.id);
        if let Some(shared) = &service.shared {
            shared.release_key(&self.id, &self.token).await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.service.local.forget(&self.id);
        if let (Some(shared), Ok(runtime)) = (
            self.service.shared.clone(),
            tokio::runtime::Handle::try_current(),
        ) {
            let (id, token) = (self.id, self.token);
            runtime.spawn(async move { shared.release_key(&id, &token).await });
        }
    }
}

/// The headers of an upstream's answer a replay carries: all but hop-by-hop and framing ones, which
/// the connection that replays it sets for itself.
pub fn kept_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
    headers
        .iter()
        .filter(|(name, _)| {
            ![CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING].contains(name)
                && !matches!(
                    name.as_str(),
                    "keep-alive" | "proxy-connection" | "upgrade" | "te" | "trailer"
                )
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The binary form a record is sealed in for Redis.
pub mod codec {
    use super::{Record, StoredAnswer};
    use bytes::Bytes;
    use http::header::{HeaderName, HeaderValue};

    const VERSION: u8 = 1;

    pub fn encode(record: &Record) -> Vec<u8> {
        let mut out = vec![VERSION];
        match record {
            Record::InFlight { digest, token } => {
                out.push(0);
                out.extend_from_slice(digest);
                out.extend_from_slice(token);
            }
            Record::Done {
                digest,
                token,
                answer,
            } => {
                out.push(1);
                out.extend_from_slice(digest);
                out.extend_from_slice(token);
                out.extend_from_slice(&answer.status.to_be_bytes());
                out.extend_from_slice(&(answer.headers.len() as u16).to_be_bytes());
                for (name, value) in &answer.headers {
                    out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    out.extend_from_slice(value.as_bytes());
                }
                out.extend_from_slice(&(answer.body.len() as u32).to_be_bytes());
                out.extend_from_slice(&answer.body);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let mut r = Reader(bytes);
        if r.take(1)?[0] != VERSION {
            return None;
        }
        let kind = r.take(1)?[0];
        let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
        let token: [u8; 16] = r.take(16)?.try_into().ok()?;
        let record = match kind {
            0 => Record::InFlight { digest, token },
            1 => {
                let status = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
                let count = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
                let mut headers = Vec::with_capacity(usize::from(count).min(64));
                for _ in 0..count {
                    let n = usize::from(u16::from_be_bytes(r.take(2)?.try_into().ok()?));
                    let name = HeaderName::from_bytes(r.take(n)?).ok()?;
                    let n = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
                    let value = HeaderValue::from_bytes(r.take(n)?).ok()?;
                    headers.push((name, value));
                }
                let n = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
                let body = Bytes::copy_from_slice(r.take(n)?);
                Record::Done {
                    digest,
                    token,
                    answer: StoredAnswer {
                        status,
                        headers,
                        body,
                    },
                }
            }
            _ => return None,
        };
        r.0.is_empty().then_some(record)
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(head)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn records_round_trip_and_garbage_does_not_decode() {
            let done = Record::Done {
                digest: [7; 32],
                token: [9; 16],
                answer: StoredAnswer {
                    status: 200,
                    headers: vec![(
                        HeaderName::from_static("content-type"),
                        HeaderValue::from_static("application/json"),
                    )],
                    body: Bytes::from_static(br#"{"code":1,"result":"17"}"#),
                },
            };
            let flying = Record::InFlight {
                digest: [1; 32],
                token: [2; 16],
            };
            for record in [done, flying] {
                let bytes = encode(&record);
                assert_eq!(decode(&bytes), Some(record.clone()));
                assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
                let mut longer = bytes.clone();
                longer.push(0);
                assert_eq!(decode(&longer), None);
            }
            assert_eq!(decode(b"\x02junk"), None);
        }
    }
}
