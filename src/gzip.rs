//! gzip (RFC 9110 §8.4.1.3): what `Accept-Encoding` takes it, and a body's compressed copy under its
//! own `ETag`. Pure functions of bytes; which answers get compressed is `cache::encoding`'s.

use std::io::Write as _;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::header::HeaderValue;

/// Answers shorter than this go as they are: gzip's frame and the extra header lines would take
/// back most of what it saves, and the time is better spent elsewhere.
pub const MIN_GZIP: usize = 256;

/// A body's gzip representation and its own strong tag.
#[derive(Debug, Clone)]
pub struct Gzipped {
    pub body: Bytes,
    pub etag: HeaderValue,
}

impl Gzipped {
    /// `body` compressed, tagged after `etag` (the identity's); `None` when too short to be worth it
    /// or when gzip would not make it smaller.
    pub fn of(body: &[u8], etag: &HeaderValue) -> Option<Gzipped> {
        if body.len() < MIN_GZIP {
            return None;
        }
        // Level 6, zlib's default: within a few percent of level 9's size on task JSON, at a
        // fraction of its time (docs/benchmarks.md, Compression).
        let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 2), Compression::new(6));
        encoder.write_all(body).ok()?;
        let mut compressed = encoder.finish().ok()?;
        // Kept for the entry's life: no spare capacity.
        compressed.shrink_to_fit();
        (compressed.len() < body.len()).then(|| Gzipped {
            body: Bytes::from(compressed),
            etag: gzip_etag(etag),
        })
    }

    /// What it adds to an entry's memory: its bytes, its tag, and the box and buffer headers they
    /// sit in (measured with `bench/memory.sh`, docs/benchmarks.md).
    pub fn weight(&self) -> usize {
        // 2,691 bytes per entry with its copy against 1,931 without, for a 374-byte copy of a
        // 1,158-byte task and its 31-byte tag (2026-11-30).
        const OVERHEAD: usize = 355;
        self.body.len() + self.etag.len() + OVERHEAD
    }
}

/// The tag of the gzip representation: the identity's, `-gzip` inside the quotes. Distinct, so a
/// cache between mjgate and its clients never takes one representation for the other.
pub fn gzip_etag(etag: &HeaderValue) -> HeaderValue {
    let tag = etag.as_bytes();
    let inner = tag
        .strip_prefix(b"\"")
        .and_then(|t| t.strip_suffix(b"\""))
        .unwrap_or(tag);
    let mut out = Vec::with_capacity(inner.len() + 7);
    out.push(b'"');
    out.extend_from_slice(inner);
    out.extend_from_slice(b"-gzip\"");
    HeaderValue::from_maybe_shared(Bytes::from(out)).unwrap_or_else(|_| etag.clone())
}

/// Whether an `Accept-Encoding` value takes gzip: `gzip` (or `x-gzip`) listed with a weight above
/// zero, or `*` above zero when gzip is not refused by name.
pub fn accepts_gzip(value: &[u8]) -> bool {
    let mut acceptance = Acceptance::default();
    acceptance.add(value);
    acceptance.gzip()
}

/// What a request's `Accept-Encoding` lines say of gzip, read line by line: several lines are one
/// list (RFC 9110 §5.3), so `gzip;q=0` on one refuses gzip even when another says `*`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Acceptance {
    /// `gzip` or `x-gzip` named, and whether any naming has a weight above zero.
    named: Option<bool>,
    /// `*` with a weight above zero.
    any: bool,
}

impl Acceptance {
    pub fn add(&mut self, value: &[u8]) {
        for member in value.split(|b| *b == b',') {
            let mut params = member.split(|b| *b == b';');
            let coding = params.next().unwrap_or_default().trim_ascii();
            let wanted = params.all(|param| !zero_weight(param.trim_ascii()));
            if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                self.named = Some(self.named.unwrap_or(false) || wanted);
            } else if coding == b"*" {
                self.any |= wanted;
            }
        }
    }

    pub fn gzip(&self) -> bool {
        self.named.unwrap_or(self.any)
    }
}

/// `q=0`, `q=0.`, `q=0.000` (RFC 9110 §12.4.2): not acceptable.
fn zero_weight(param: &[u8]) -> bool {
    let Some((name, value)) = param.split_first().and_then(|(q, rest)| {
        let rest = rest.trim_ascii_start().strip_prefix(b"=")?;
        Some((*q, rest.trim_ascii()))
    }) else {
        return false;
    };
    (name == b'q' || name == b'Q')
        && value.first() == Some(&b'0')
        && value[1..].iter().all(|b| *b == b'.' || *b == b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_by_name_or_star_unless_weighed_zero() {
        for yes in [
            "gzip",
            "GZIP",
            "deflate, gzip;q=0.5",
            "gzip;q=1.0, br",
            "x-gzip",
            "*",
            "br, *;q=0.1",
            "gzip ; q=0.001",
        ] {
            assert!(accepts_gzip(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "identity",
            "br, deflate",
            "gzip;q=0",
            "gzip;q=0.000",
            "gzip; q=0., *",
            "*;q=0",
            "gzipx",
            "*, gzip;q=0",
        ] {
            assert!(!accepts_gzip(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn a_gzip_copy_decodes_to_the_body_and_carries_its_own_tag() {
        let body =
            br#"{"id":"t","status":"SUCCESS","imageUrl":"https://cdn.example/x.png"}"#.repeat(8);
        let etag = HeaderValue::from_static("\"0123456789abcdef01234567\"");
        let gzipped = Gzipped::of(&body, &etag).expect("worth compressing");
        assert!(gzipped.body.len() < body.len());
        assert_eq!(gzipped.etag, "\"0123456789abcdef01234567-gzip\"");
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&gzipped.body[..]),
            &mut decoded,
        )
        .unwrap();
        assert_eq!(decoded, body);
        assert!(Gzipped::of(b"{\"id\":\"t\"}", &etag).is_none(), "too short");
    }

    #[test]
    fn several_lines_are_one_list() {
        let lines = |values: &[&str]| {
            let mut acceptance = Acceptance::default();
            for value in values {
                acceptance.add(value.as_bytes());
            }
            acceptance.gzip()
        };
        assert!(
            !lines(&["gzip;q=0", "*"]),
            "refused by name on another line"
        );
        assert!(!lines(&["*", "gzip;q=0"]));
        assert!(lines(&["br", "gzip"]));
        assert!(lines(&["br", "*"]));
        assert!(!lines(&["br", "identity"]));
    }
}
