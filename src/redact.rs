//! Secrets as descriptions and logs show them: never the value, a digest that tells two apart.

/// A secret as the config's description shows it: `<redacted #1a2b3c4d>`, a 32-bit digest (BLAKE3,
/// keyed for this use only) that tells a changed secret from an unchanged one across processes
/// (`check-config --diff` against a running gateway) and says nothing usable about a secret of the
/// length mjgate requires of its own.
pub fn redacted(secret: &[u8]) -> String {
    let digest = blake3::derive_key("mjgate config description: secret digest v1", secret);
    format!("<redacted #{}>", crate::hex::to_hex(&digest[..4]))
}
