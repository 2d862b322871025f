//! W3C Trace Context (`traceparent`, `tracestate`): the ids a request's trace carries, read from a
//! client and written towards the upstream.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A trace and one span of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceIds {
    pub fn trace_id_hex(&self) -> String {
        crate::hex::to_hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        crate::hex::to_hex(&self.span_id)
    }

    /// The `traceparent` naming this span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let text = format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            u8::from(self.sampled)
        );
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// `traceparent` as the W3C spec reads it: version `00` exactly (a later version's first four
    /// fields, with anything after), ids of lowercase hex that are not all zeros.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; a later one may add more.
        if version == "00" && (parts.next().is_some() || flags.len() != 2) {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() < 2 {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let span_id: [u8; 8] = hex_bytes(span)?;
        let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceIds {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// The client's trace, if its `traceparent` is valid (one header line: two make it invalid).
pub fn of_headers(headers: &HeaderMap) -> Option<TraceIds> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceIds::parse(value.as_bytes())
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !is_lower_hex(text) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_specs_example_and_refuses_what_it_forbids() {
        let ids =
            TraceIds::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(ids.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.span_id_hex(), "00f067aa0ba902b7");
        assert!(ids.sampled);
        assert_eq!(
            ids.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
            "",
        ] {
            assert_eq!(TraceIds::parse(bad.as_bytes()), None, "{bad}");
        }
        assert!(
            TraceIds::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later")
                .is_some(),
            "a later version's fields are read, the rest ignored"
        );
    }
}
