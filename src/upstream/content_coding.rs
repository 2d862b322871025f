//! Undoing the content coding a CDN put on a cached route's answer.
//!
//! Cached routes ask the upstream for `Accept-Encoding: identity`, but CDNs in front of hosted
//! upstreams do not always honour it. An encoded body cannot be classified by its `status`, and an
//! entry stored encoded would be served to clients that never said they accept that coding, so the
//! gateway decodes what it understands (gzip, deflate, br) before anything reads the body. What it
//! does not understand is passed on as it came, and never stored.

use std::io::Read;

use bytes::Bytes;
use http::{HeaderMap, header};

/// Why an encoded body could not be turned back into the upstream's bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Decoded, the body would exceed the limit (a small compressed body can expand enormously).
    #[error("decoded body exceeds {0} bytes")]
    TooLarge(u64),
    /// The bytes are not valid for the coding the upstream named.
    #[error("body is not valid {0}")]
    Corrupt(&'static str),
}

/// The codings this module can undo, as named in `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

impl Coding {
    fn parse(name: &[u8]) -> Option<Self> {
        let name = name.trim_ascii();
        if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
            Some(Coding::Gzip)
        } else if name.eq_ignore_ascii_case(b"deflate") {
            Some(Coding::Deflate)
        } else if name.eq_ignore_ascii_case(b"br") {
            Some(Coding::Brotli)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
        }
    }

    fn decode(self, body: &[u8], limit: u64) -> Result<Vec<u8>, DecodeError> {
        match self {
            Coding::Gzip => read_limited(flate2::read::MultiGzDecoder::new(body), self, limit),
            // HTTP's "deflate" is zlib-wrapped, but some servers send raw deflate. Only bytes that
            // are not zlib are tried raw: a zlib bomb is too large, not corrupt.
            Coding::Deflate => {
                match read_limited(flate2::read::ZlibDecoder::new(body), self, limit) {
                    Err(DecodeError::Corrupt(_)) => {
                        read_limited(flate2::read::DeflateDecoder::new(body), self, limit)
                    }
                    decoded => decoded,
                }
            }
            Coding::Brotli => read_limited(
                brotli_decompressor::Decompressor::new(body, 4096),
                self,
                limit,
            ),
        }
    }
}

fn read_limited(reader: impl Read, coding: Coding, limit: u64) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Corrupt(coding.name()))?;
    if out.len() as u64 > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(out)
}

/// Undoes every coding named in `Content-Encoding` (last applied first), at most `limit` bytes out.
///
/// On success the headers describe the decoded body (no `Content-Encoding`, no stale
/// `Content-Length`). A coding this module does not know leaves headers and body untouched: the
/// caller sees a non-identity answer and passes it on without storing it.
pub fn decode(headers: &mut HeaderMap, body: Bytes, limit: u64) -> Result<Bytes, DecodeError> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        for name in value.as_bytes().split(|&b| b == b',') {
            if name.trim_ascii().is_empty() || name.trim_ascii().eq_ignore_ascii_case(b"identity") {
                continue;
            }
            match Coding::parse(name) {
                Some(coding) => codings.push(coding),
                None => return Ok(body),
            }
        }
    }
    if codings.is_empty() {
        return Ok(body);
    }
    let mut decoded = body;
    for coding in codings.into_iter().rev() {
        decoded = Bytes::from(coding.decode(&decoded, limit)?);
    }
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    Ok(decoded)
}

/// Whether a message's body carries no content coding.
pub fn is_identity(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use http::HeaderValue;

    use super::*;

    const TASK: &[u8] = br#"{"id":"t1","status":"SUCCESS","progress":"100%"}"#;

    fn encoded(coding: &'static str, body: Vec<u8>) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        (headers, Bytes::from(body))
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_is_decoded_and_the_headers_describe_the_plain_body() {
        let (mut headers, body) = encoded("gzip", gzip(TASK));
        assert_eq!(decode(&mut headers, body, 1 << 20).unwrap(), TASK);
        assert!(headers.get(header::CONTENT_ENCODING).is_none());
        assert!(headers.get(header::CONTENT_LENGTH).is_none());
    }

    #[test]
    fn deflate_is_decoded_whether_zlib_wrapped_or_raw() {
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(TASK).unwrap();
        let (mut headers, body) = encoded("deflate", zlib.finish().unwrap());
        assert_eq!(decode(&mut headers, body, 1 << 20).unwrap(), TASK);

        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(TASK).unwrap();
        let (mut headers, body) = encoded("deflate", raw.finish().unwrap());
        assert_eq!(decode(&mut headers, body, 1 << 20).unwrap(), TASK);
    }

    #[test]
    fn brotli_is_decoded() {
        // TASK compressed by Python's `brotli.compress(TASK, quality=11)`.
        let compressed = vec![
            0x1b, 0x2f, 0x00, 0xf8, 0x9d, 0x09, 0x76, 0x2c, 0x62, 0x12, 0x30, 0x79, 0xc5, 0x1c,
            0x35, 0x4b, 0x0c, 0xd9, 0x9e, 0x4c, 0xa3, 0xeb, 0x0b, 0x9d, 0x10, 0x81, 0x89, 0x9c,
            0x80, 0x07, 0x41, 0xdb, 0xc1, 0xec, 0xfd, 0xc1, 0x17, 0xa1, 0x38, 0xe5, 0xae, 0x84,
            0x8d, 0x6f, 0xc5, 0x82, 0x01,
        ];
        let (mut headers, body) = encoded("br", compressed);
        assert_eq!(decode(&mut headers, body, 1 << 20).unwrap(), TASK);
    }

    #[test]
    fn a_body_that_expands_past_the_limit_is_refused_as_too_large_whatever_its_coding() {
        let spaces = vec![b' '; 100_000];
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&spaces).unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&spaces).unwrap();
        for (coding, body) in [
            ("gzip", gzip(&spaces)),
            ("deflate", zlib.finish().unwrap()),
            ("deflate", raw.finish().unwrap()),
        ] {
            let (mut headers, body) = encoded(coding, body);
            assert_eq!(
                decode(&mut headers, body, 10_000),
                Err(DecodeError::TooLarge(10_000)),
                "{coding}"
            );
        }
    }

    #[test]
    fn bytes_that_do_not_match_the_coding_are_corrupt() {
        let (mut headers, body) = encoded("gzip", TASK.to_vec());
        assert_eq!(
            decode(&mut headers, body, 1 << 20),
            Err(DecodeError::Corrupt("gzip"))
        );
    }

    #[test]
    fn identity_and_unknown_codings_leave_everything_as_it_came() {
        let (mut headers, body) = encoded("identity", TASK.to_vec());
        assert_eq!(decode(&mut headers, body, 1 << 20).unwrap(), TASK);
        assert!(headers.get(header::CONTENT_ENCODING).is_some());

        let (mut headers, body) = encoded("zstd", b"opaque".to_vec());
        assert_eq!(decode(&mut headers, body, 1 << 20).unwrap(), &b"opaque"[..]);
        assert_eq!(headers[header::CONTENT_ENCODING], "zstd");
    }

    #[test]
    fn stacked_codings_are_undone_last_first() {
        let twice = gzip(&gzip(TASK));
        let (mut headers, body) = encoded("gzip, gzip", twice);
        assert_eq!(decode(&mut headers, body, 1 << 20).unwrap(), TASK);
    }
}
