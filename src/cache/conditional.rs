//! Conditional requests (RFC 9110 §13): strong entity tags for cached task answers, and the
//! `If-None-Match` check that turns an unchanged answer into `304 Not Modified`.

use http::header::{ETAG, HeaderMap, HeaderValue, IF_NONE_MATCH};
use http::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::hex::push_hex;

/// The strong tag of a body: 96 bits of its BLAKE3 hash, quoted. Equal bytes, equal tag; any change
/// of the upstream's bytes (status, progress, image URL) changes it.
pub fn etag_of(body: &[u8]) -> HeaderValue {
    let hash = blake3::hash(body);
    let mut tag = Vec::with_capacity(26);
    tag.push(b'"');
    push_hex(&mut tag, &hash.as_bytes()[..12]);
    tag.push(b'"');
    HeaderValue::from_maybe_shared(bytes::Bytes::from(tag))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// Whether `If-None-Match` (every instance of it in `headers`) names `etag`: `*`, or a list member equal
/// under the weak comparison RFC 9110 §13.1.2 prescribes for this header.
pub fn none_match_hits(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let tag = opaque(etag.as_bytes());
    headers.get_all(IF_NONE_MATCH).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .map(|member| member.trim_ascii())
            .any(|member| member == b"*" || opaque(member) == tag)
    })
}

/// The request's `If-None-Match` values alone, when it has any (kept for after the request is
/// consumed). Copied: a view of hyper's read buffer would keep all of it for as long as a long-poll
/// holds the request.
pub fn if_none_match(headers: &HeaderMap) -> Option<HeaderMap> {
    let mut values = headers.get_all(IF_NONE_MATCH).iter().peekable();
    values.peek()?;
    let mut kept = HeaderMap::new();
    for value in values {
        let copied = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        kept.append(IF_NONE_MATCH, copied);
    }
    Some(kept)
}

/// A tag without its weakness indicator.
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// `response` as `304 Not Modified` when it is a `200` whose `ETag` the request's `If-None-Match`
/// names: no body; `ETag`, `Cache-Status`, `Age` and the rest of the head kept (RFC 9110 §15.4.5).
/// The flag says whether it was turned.
pub fn not_modified_if_unchanged(
    request: &HeaderMap,
    response: Response<ResponseBody>,
) -> (Response<ResponseBody>, bool) {
    let unchanged = response.status() == StatusCode::OK
        && response
            .headers()
            .get(ETAG)
            .is_some_and(|etag| none_match_hits(request, etag));
    if !unchanged {
        return (response, false);
    }
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::NOT_MODIFIED;
    parts.headers.remove(http::header::CONTENT_TYPE);
    parts.headers.remove(http::header::CONTENT_ENCODING);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    (Response::from_parts(parts, ResponseBody::empty()), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inm(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn equal_bodies_share_a_tag_and_any_change_makes_another() {
        let a = etag_of(br#"{"id":"t","progress":"10%"}"#);
        assert_eq!(a, etag_of(br#"{"id":"t","progress":"10%"}"#));
        assert_ne!(a, etag_of(br#"{"id":"t","progress":"11%"}"#));
        let text = a.to_str().unwrap();
        assert!(
            text.starts_with('"') && text.ends_with('"') && text.len() == 26,
            "{text}"
        );
    }

    #[test]
    fn if_none_match_takes_lists_stars_and_weak_tags() {
        let tag = HeaderValue::from_static("\"abc\"");
        assert!(none_match_hits(&inm("\"abc\""), &tag));
        assert!(none_match_hits(&inm("\"x\", \"abc\""), &tag));
        assert!(none_match_hits(&inm("W/\"abc\""), &tag));
        assert!(none_match_hits(&inm("*"), &tag));
        assert!(!none_match_hits(&inm("\"abcd\""), &tag));
        assert!(!none_match_hits(&inm("abc"), &tag), "tags are quoted");
        assert!(!none_match_hits(&HeaderMap::new(), &tag));
    }
}
