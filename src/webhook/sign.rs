//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): `webhook-signature` is `v1,` and
//! the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under the secret's bytes. The
//! secret is written `whsec_` and base64, 24 to 64 bytes once decoded.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// Shortest and longest secret the specification allows, in decoded bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Why a signing secret was refused (it is never echoed: it is a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook signing secret is written `whsec_` followed by base64")]
    Prefix,
    #[error("the part after `whsec_` is not base64")]
    Base64,
    #[error("the secret is {0} bytes once decoded; Standard Webhooks asks for 24 to 64")]
    Length(usize),
}

/// A Standard Webhooks signing secret, ready to sign.
pub struct SigningSecret(hmac::Key, String);

/// A digest of the secret only (see [`crate::redact::redacted`]): a rotation shows in a reload's
/// changes.
impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningSecret({})", self.1)
    }
}

impl SigningSecret {
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::Prefix)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(SecretError::Length(bytes.len()));
        }
        Ok(SigningSecret(
            hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            crate::redact::redacted(&bytes),
        ))
    }

    /// The `webhook-signature` value for one delivery attempt.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_specifications_test_vector() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn any_change_changes_the_signature() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let base = secret.sign("msg_1", 1, b"{}");
        assert_ne!(secret.sign("msg_2", 1, b"{}"), base);
        assert_ne!(secret.sign("msg_1", 2, b"{}"), base);
        assert_ne!(secret.sign("msg_1", 1, b"{ }"), base);
    }

    #[test]
    fn refuses_malformed_secrets_without_echoing_them() {
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::Prefix
        );
        assert_eq!(
            SigningSecret::parse("whsec_not base64!").unwrap_err(),
            SecretError::Base64
        );
        assert_eq!(
            SigningSecret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::Length(5)
        );
        let error = SigningSecret::parse("whsec_c2hvcnQ=")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("c2hvcnQ"));
        let shown = format!(
            "{:?}",
            SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
        );
        assert!(shown.starts_with("SigningSecret(<redacted #"), "{shown}");
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
    }
}
