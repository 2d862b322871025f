//! The capability in a kept file's URL: `/_mjgate/files/{token}`. A browser's `<img src>` sends no
//! credential, so the URL itself must be the proof. A token names one file for one credential: the
//! blob, the credential's keyed fingerprint, and a keyed MAC over both, so it cannot be guessed,
//! altered to name another file, or made for another credential without the key. Two credentials
//! holding the same file get different tokens for it, and neither token says anything of the
//! other's. Stateless: any replica with the same secret opens any replica's token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::store::{BlobId, MediaKind};
use crate::credential::{CredentialFingerprint, FINGERPRINT_LEN};

/// Where kept files are served: this, then the token.
pub const FILES_PREFIX: &str = "/_mjgate/files/";

const MAC_LEN: usize = 16;
/// hash, kind, fingerprint, MAC.
const TOKEN_LEN: usize = 32 + 1 + FINGERPRINT_LEN + MAC_LEN;

/// The longest URL a lazy token carries (its token is about 4/3 of it).
const MAX_LAZY_URL: usize = 2048;

/// Issues and opens file tokens under one key.
#[derive(Clone)]
pub struct FileTokens {
    key: [u8; 32],
}

impl FileTokens {
    /// Tokens keyed from `secret` (the shared tier's fingerprint secret, so every replica agrees),
    /// or from a random key for this process alone.
    pub fn new(secret: Option<&[u8]>) -> Self {
        let key = match secret {
            Some(secret) => blake3::derive_key("mjgate 2026-12 file tokens", secret),
            None => rand::random(),
        };
        FileTokens { key }
    }

    /// The token for `blob`, held for `credential`; with the `url` it was kept from (up to 2 KiB),
    /// so that a replica without the file, or this one after the disk budget evicted it, can keep it
    /// again while that link lives.
    pub fn issue(
        &self,
        blob: &BlobId,
        credential: &CredentialFingerprint,
        url: Option<&str>,
    ) -> String {
        let url = url.filter(|url| url.len() <= MAX_LAZY_URL).unwrap_or("");
        let mut raw = Vec::with_capacity(TOKEN_LEN + url.len());
        raw.extend_from_slice(blob.hash());
        raw.push(blob.kind().code());
        raw.extend_from_slice(credential.as_bytes());
        raw.extend_from_slice(url.as_bytes());
        let mac = self.mac(&raw);
        raw.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The file a token names, for whom, and the URL it was kept from (if the token carries it),
    /// if this key issued it.
    pub fn open(&self, token: &str) -> Option<(BlobId, CredentialFingerprint, Option<String>)> {
        if token.len() > (TOKEN_LEN + MAX_LAZY_URL).div_ceil(3) * 4 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() < TOKEN_LEN {
            return None;
        }
        let (signed, mac) = raw.split_at(raw.len() - MAC_LEN);
        // Compared in constant time: a MAC is not to be found byte by byte.
        if !constant_time_eq(&self.mac(signed), mac) {
            return None;
        }
        let hash: [u8; 32] = signed[..32].try_into().ok()?;
        let kind = MediaKind::from_code(signed[32])?;
        let fingerprint: [u8; FINGERPRINT_LEN] =
            signed[33..33 + FINGERPRINT_LEN].try_into().ok()?;
        let url = std::str::from_utf8(&signed[33 + FINGERPRINT_LEN..]).ok()?;
        Some((
            BlobId::new(hash, kind),
            CredentialFingerprint::from_bytes(fingerprint),
            (!url.is_empty()).then(|| url.to_owned()),
        ))
    }

    /// The token for the file at `url`, not kept yet (a family kept lazily: it is downloaded when
    /// first asked for), held for `credential`. It carries the URL (the client would have had it
    /// anyway), so it opens on any replica and after a restart; `None` for a URL too long to carry.
    pub fn issue_for_url(&self, url: &str, credential: &CredentialFingerprint) -> Option<String> {
        if url.len() > MAX_LAZY_URL {
            return None;
        }
        let mut raw = Vec::with_capacity(FINGERPRINT_LEN + url.len() + MAC_LEN);
        raw.extend_from_slice(credential.as_bytes());
        raw.extend_from_slice(url.as_bytes());
        let mac = self.mac_lazy(&raw);
        raw.extend_from_slice(&mac);
        Some(URL_SAFE_NO_PAD.encode(raw))
    }

    /// The URL a lazy token names, and for whom, if this key issued it.
    pub fn open_url(&self, token: &str) -> Option<(String, CredentialFingerprint)> {
        if token.len() > (FINGERPRINT_LEN + MAX_LAZY_URL + MAC_LEN).div_ceil(3) * 4 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() < FINGERPRINT_LEN + MAC_LEN {
            return None;
        }
        let (signed, mac) = raw.split_at(raw.len() - MAC_LEN);
        if !constant_time_eq(&self.mac_lazy(signed), mac) {
            return None;
        }
        let fingerprint: [u8; FINGERPRINT_LEN] = signed[..FINGERPRINT_LEN].try_into().ok()?;
        let url = std::str::from_utf8(&signed[FINGERPRINT_LEN..]).ok()?;
        Some((
            url.to_owned(),
            CredentialFingerprint::from_bytes(fingerprint),
        ))
    }

    /// The MAC of a lazy token: keyed apart from a kept file's, so neither kind opens as the other.
    fn mac_lazy(&self, signed: &[u8]) -> [u8; MAC_LEN] {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(b"lazy\0");
        hasher.update(signed);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&hasher.finalize().as_bytes()[..MAC_LEN]);
        mac
    }

    fn mac(&self, signed: &[u8]) -> [u8; MAC_LEN] {
        let full = blake3::keyed_hash(&self.key, signed);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
        mac
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(byte: u8) -> BlobId {
        BlobId::new([byte; 32], MediaKind::Png)
    }

    #[test]
    fn a_token_opens_to_its_file_and_credential_and_only_with_its_key() {
        let tokens = FileTokens::new(Some(b"a secret of sixteen bytes or more"));
        let alice = CredentialFingerprint::from_bytes([1; FINGERPRINT_LEN]);
        let token = tokens.issue(&blob(7), &alice, None);
        assert_eq!(tokens.open(&token), Some((blob(7), alice, None)));
        let replica = FileTokens::new(Some(b"a secret of sixteen bytes or more"));
        assert_eq!(
            replica.open(&token),
            Some((blob(7), alice, None)),
            "any replica"
        );
        let url = "https://cdn.example/a.png?ex=1";
        let carrying = tokens.issue(&blob(7), &alice, Some(url));
        assert_eq!(
            tokens.open(&carrying),
            Some((blob(7), alice, Some(url.to_owned()))),
            "the URL it was kept from travels with it"
        );
        let other = FileTokens::new(Some(b"another secret, sixteen or more"));
        assert_eq!(other.open(&token), None);
    }

    #[test]
    fn two_credentials_get_different_tokens_and_none_can_be_altered() {
        let tokens = FileTokens::new(None);
        let alice = CredentialFingerprint::from_bytes([1; FINGERPRINT_LEN]);
        let bob = CredentialFingerprint::from_bytes([2; FINGERPRINT_LEN]);
        let a = tokens.issue(&blob(7), &alice, Some("https://cdn.example/a.png"));
        let b = tokens.issue(&blob(7), &bob, Some("https://cdn.example/a.png"));
        assert_ne!(a, b);
        // Every single-character change is refused.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..a.len() {
            let mut changed = a.clone().into_bytes();
            changed[i] =
                alphabet[(alphabet.iter().position(|c| *c == changed[i]).unwrap() + 1) % 64];
            let changed = String::from_utf8(changed).unwrap();
            assert_eq!(tokens.open(&changed), None, "position {i}");
        }
        for junk in ["", "x", "../../etc/passwd", &"A".repeat(200), "%00"] {
            assert_eq!(tokens.open(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_lazy_token_carries_its_url_and_neither_kind_opens_as_the_other() {
        let tokens = FileTokens::new(Some(b"a secret of sixteen bytes or more"));
        let alice = CredentialFingerprint::from_bytes([1; FINGERPRINT_LEN]);
        let url = "https://cdn.example/attachments/1/1.png?ex=6a&is=69&hm=ab";
        let lazy = tokens.issue_for_url(url, &alice).unwrap();
        assert_eq!(tokens.open_url(&lazy), Some((url.to_owned(), alice)));
        assert_eq!(tokens.open(&lazy), None);
        let kept = tokens.issue(&blob(7), &alice, Some(url));
        assert_eq!(tokens.open_url(&kept), None);
        let mut altered = lazy.clone().into_bytes();
        altered[30] = if altered[30] == b'A' { b'B' } else { b'A' };
        assert_eq!(tokens.open_url(&String::from_utf8(altered).unwrap()), None);
        assert!(tokens.issue_for_url(&"x".repeat(5000), &alice).is_none());
    }
}
