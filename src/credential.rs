//! The credential a request carries, reduced to a keyed fingerprint that partitions the cache.
//!
//! The raw `Authorization` / `mj-api-secret` values are never stored, logged or used as labels: only a
//! 128-bit keyed BLAKE3 hash of them, under a key drawn at start-up, so fingerprints cannot be
//! precomputed or reversed from a dump of the cache.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};

static MJ_API_SECRET: HeaderName = HeaderName::from_static("mj-api-secret");

/// Length of a fingerprint in bytes.
pub const FINGERPRINT_LEN: usize = 16;

/// A keyed hash of a request's credential headers. Requests with equal credentials share it; requests
/// without any credential share the anonymous one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialFingerprint([u8; FINGERPRINT_LEN]);

impl CredentialFingerprint {
    pub fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }

    /// A short hex prefix, safe to log: it identifies a partition without revealing the credential.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for CredentialFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialFingerprint({})", self.short())
    }
}

/// Computes fingerprints under one secret key.
#[derive(Clone)]
pub struct Fingerprinter {
    key: [u8; 32],
}

impl Fingerprinter {
    /// A fingerprinter with a fresh random key: fingerprints are stable for the life of the process.
    pub fn random() -> Self {
        Fingerprinter {
            key: rand::random(),
        }
    }

    /// A fingerprinter every replica configured with `secret` agrees with (for the shared tier's keys).
    pub fn from_secret(secret: &[u8]) -> Self {
        Fingerprinter {
            key: blake3::derive_key("mjgate 2026-11 credential fingerprint", secret),
        }
    }

    pub fn with_key(key: [u8; 32]) -> Self {
        Fingerprinter { key }
    }

    pub fn fingerprint(&self, headers: &HeaderMap) -> CredentialFingerprint {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        // Each header is framed by a tag and each value by its length, so no two different sets of
        // credential headers hash the same input (`Authorization: a` vs `mj-api-secret: a`).
        for (tag, name) in [(b'A', &AUTHORIZATION), (b'S', &MJ_API_SECRET)] {
            for value in headers.get_all(name) {
                hasher.update(&[tag]);
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(value.as_bytes());
            }
        }
        let mut out = [0u8; FINGERPRINT_LEN];
        hasher.finalize_xof().fill(&mut out);
        CredentialFingerprint(out)
    }
}

/// The credential a connection sent last and its fingerprint. Clients send the same credential on
/// every request of a connection, so the hit path compares bytes instead of hashing them again. Owned
/// copies, not `HeaderValue`s: those would pin the connection's whole read buffer.
#[derive(Default)]
pub struct FingerprintMemo {
    authorization: Option<Box<[u8]>>,
    secret: Option<Box<[u8]>>,
    fingerprint: Option<CredentialFingerprint>,
}

impl Fingerprinter {
    /// [`fingerprint`](Self::fingerprint), answered from `memo` when the credential headers are the
    /// ones it holds. Requests with a header repeated are hashed every time.
    pub fn fingerprint_memo(
        &self,
        headers: &HeaderMap,
        memo: &mut FingerprintMemo,
    ) -> CredentialFingerprint {
        let single = |name: &HeaderName| {
            let mut values = headers.get_all(name).iter();
            let first = values.next();
            values.next().is_none().then_some(first)
        };
        let (Some(authorization), Some(secret)) = (single(&AUTHORIZATION), single(&MJ_API_SECRET))
        else {
            return self.fingerprint(headers);
        };
        let authorization = authorization.map(|v| v.as_bytes());
        let secret = secret.map(|v| v.as_bytes());
        if let Some(fingerprint) = memo.fingerprint
            && memo.authorization.as_deref() == authorization
            && memo.secret.as_deref() == secret
        {
            return fingerprint;
        }
        let fingerprint = self.fingerprint(headers);
        memo.authorization = authorization.map(Box::from);
        memo.secret = secret.map(Box::from);
        memo.fingerprint = Some(fingerprint);
        fingerprint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn partitions_by_either_header() {
        let f = Fingerprinter::with_key([7; 32]);
        let a = f.fingerprint(&headers(&[("authorization", "Bearer sk-a")]));
        let b = f.fingerprint(&headers(&[("authorization", "Bearer sk-b")]));
        let s = f.fingerprint(&headers(&[("mj-api-secret", "Bearer sk-a")]));
        let none = f.fingerprint(&headers(&[("user-agent", "x")]));
        assert_ne!(a, b);
        assert_ne!(
            a, s,
            "the same value in the other header is another credential"
        );
        assert_ne!(a, none);
        assert_eq!(
            a,
            f.fingerprint(&headers(&[("authorization", "Bearer sk-a"), ("x", "y")]))
        );
    }

    #[test]
    fn keys_differ_between_instances() {
        let h = headers(&[("authorization", "Bearer sk-a")]);
        assert_ne!(
            Fingerprinter::with_key([1; 32]).fingerprint(&h),
            Fingerprinter::with_key([2; 32]).fingerprint(&h)
        );
    }

    #[test]
    fn a_connections_memo_gives_what_hashing_gives() {
        let f = Fingerprinter::with_key([7; 32]);
        let mut memo = FingerprintMemo::default();
        let sequence = [
            headers(&[("authorization", "Bearer sk-a")]),
            headers(&[("authorization", "Bearer sk-a")]),
            headers(&[("authorization", "Bearer sk-b")]),
            headers(&[("mj-api-secret", "Bearer sk-b")]),
            headers(&[("authorization", "Bearer sk-b"), ("mj-api-secret", "s")]),
            headers(&[]),
            headers(&[
                ("authorization", "Bearer sk-a"),
                ("authorization", "Bearer sk-b"),
            ]),
            headers(&[("authorization", "Bearer sk-a")]),
        ];
        for request in &sequence {
            assert_eq!(
                f.fingerprint_memo(request, &mut memo),
                f.fingerprint(request)
            );
        }
    }

    #[test]
    fn debug_does_not_reveal_the_credential() {
        let f = Fingerprinter::with_key([7; 32]);
        let fp = f.fingerprint(&headers(&[("authorization", "Bearer sk-secret")]));
        assert!(!format!("{fp:?}").contains("sk-secret"));
    }
}
