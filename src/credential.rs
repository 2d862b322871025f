//! The credential a request carries, reduced to a keyed fingerprint that partitions the cache.
//!
//! The raw `Authorization` / `mj-api-secret` values are never stored, logged or used as labels: only a
//! 128-bit keyed BLAKE3 hash of them, under a key drawn at start-up, so fingerprints cannot be
//! precomputed or reversed from a dump of the cache.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};

pub static MJ_API_SECRET: HeaderName = HeaderName::from_static("mj-api-secret");

/// The credential headers, in the order an upstream reads them.
pub const CREDENTIAL_HEADERS: [&HeaderName; 2] = [&AUTHORIZATION, &MJ_API_SECRET];

/// The credential a request carries, as it will be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Anonymous,
    Authorization(&'a HeaderValue),
    Secret(&'a HeaderValue),
}

impl<'a> Credential<'a> {
    /// The header's tag in the fingerprint's input and its value (`None` when anonymous).
    pub fn tagged(self) -> Option<(u8, &'a [u8])> {
        match self {
            Credential::Anonymous => None,
            Credential::Authorization(v) => Some((b'A', v.as_bytes())),
            Credential::Secret(v) => Some((b'S', v.as_bytes())),
        }
    }
}

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

    /// A fingerprint kept elsewhere (a sealed record in Redis), read back.
    pub const fn from_bytes(bytes: [u8; FINGERPRINT_LEN]) -> Self {
        CredentialFingerprint(bytes)
    }

    /// A short hex prefix, safe to log: it identifies a partition without revealing the credential.
    pub fn short(&self) -> String {
        crate::hex::to_hex(&self.0[..4])
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

    /// The fingerprint of every credential header in `headers`. For an admitted request (one
    /// credential header at most, see [`crate::request::admission`]) it equals [`of`](Self::of) its credential.
    pub fn fingerprint(&self, headers: &HeaderMap) -> CredentialFingerprint {
        let values = CREDENTIAL_HEADERS
            .iter()
            .zip([b'A', b'S'])
            .flat_map(|(name, tag)| {
                headers
                    .get_all(*name)
                    .iter()
                    .map(move |v| (tag, v.as_bytes()))
            });
        self.hash(values)
    }

    /// The fingerprint of one admitted credential.
    pub fn of(&self, credential: Credential<'_>) -> CredentialFingerprint {
        self.hash(credential.tagged())
    }

    fn hash<'v>(&self, values: impl IntoIterator<Item = (u8, &'v [u8])>) -> CredentialFingerprint {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        // Each value is framed by its header's tag and its length, so no two different sets of
        // credential headers hash the same input (`Authorization: a` vs `mj-api-secret: a`).
        for (tag, value) in values {
            hasher.update(&[tag]);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value);
        }
        let mut out = [0u8; FINGERPRINT_LEN];
        hasher.finalize_xof().fill(&mut out);
        CredentialFingerprint(out)
    }

    /// [`of`](Self::of), answered from `memo` when the credential is the one it holds.
    pub fn of_memo(
        &self,
        credential: Credential<'_>,
        memo: &mut FingerprintMemo,
    ) -> CredentialFingerprint {
        let tagged = credential.tagged();
        if let Some(fingerprint) = memo.fingerprint
            && memo.tag == tagged.map(|(tag, _)| tag)
            && memo.value.as_deref() == tagged.map(|(_, value)| value)
        {
            return fingerprint;
        }
        let fingerprint = self.of(credential);
        memo.tag = tagged.map(|(tag, _)| tag);
        memo.value = tagged.map(|(_, value)| Box::from(value));
        memo.fingerprint = Some(fingerprint);
        fingerprint
    }
}

/// The credential a connection sent last and its fingerprint. Clients send the same credential on
/// every request of a connection, so the hit path compares bytes instead of hashing them again. An
/// owned copy, not a `HeaderValue`: that would pin the connection's whole read buffer.
#[derive(Default)]
pub struct FingerprintMemo {
    tag: Option<u8>,
    value: Option<Box<[u8]>>,
    fingerprint: Option<CredentialFingerprint>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::admission::tests::headers;

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
            headers(&[]),
            headers(&[("mj-api-secret", "")]),
            headers(&[("authorization", "")]),
            headers(&[("authorization", "Bearer sk-a")]),
        ];
        let uri = http::Uri::from_static("/mj/task/1/fetch");
        for request in &sequence {
            let credential = crate::request::admission::admit(
                &http::Method::GET,
                &uri,
                http::Version::HTTP_2,
                request,
                usize::MAX,
            )
            .unwrap()
            .credential;
            assert_eq!(f.of_memo(credential, &mut memo), f.fingerprint(request));
            assert_eq!(f.of(credential), f.fingerprint(request));
        }
    }

    #[test]
    fn debug_does_not_reveal_the_credential() {
        let f = Fingerprinter::with_key([7; 32]);
        let fp = f.fingerprint(&headers(&[("authorization", "Bearer sk-secret")]));
        assert!(!format!("{fp:?}").contains("sk-secret"));
    }
}
