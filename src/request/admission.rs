//! Request admission: what a request must look like before the gateway serves or forwards it, and the
//! one credential it carries.
//!
//! Every request passes here first, hits and misses alike, so that what the cache is partitioned by is
//! exactly what the upstream will see:
//! - **One credential header, once.** An upstream reads one of `Authorization` and `mj-api-secret`
//!   (the simulator, like new-api, reads `Authorization` first); a request carrying both, or either
//!   twice, would be fingerprinted (for the cache, the 429 backoff, the ceilings and the watch limits)
//!   differently from the credential the upstream acts on. Such requests are refused.
//! - **No credential named in `Connection`.** Headers listed there are hop-by-hop and never forwarded,
//!   so the upstream would answer for no credential while the cache files the answer under one.
//! - **An origin-form path without dot segments.** `..` (plain or percent-encoded) would climb out of
//!   the upstream URL's path prefix; `*` and authority-form targets have no path to forward.
//! - **Credentials it cannot see are not cached.** A request without `Authorization` or
//!   `mj-api-secret` but with `X-Api-Key`, `Api-Key`, `Proxy-Authorization` or `Cookie` may be
//!   authenticated by the upstream with one of those; it passes through, uncached.
//! - **Exactly one `Host` on HTTP/1.1** (RFC 9112 §3.2), at most one elsewhere.
//! - **No `CONNECT` or `TRACE`**: the gateway tunnels nothing, and `TRACE` would echo the forwarded
//!   credential back.
//!
//! The checks are byte scans and one pass over the headers: they run on the hit path too.

use http::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue,
};

use crate::gzip;
use crate::metrics::ClientError;
use http::{Method, StatusCode, Uri, Version};

pub use crate::credential::{CREDENTIAL_HEADERS, Credential, MJ_API_SECRET};

/// Why a request was refused before anything else looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("an HTTP/1.1 request must carry a Host header")]
    NoHost,
    #[error("a request must carry at most one Host header")]
    SeveralHosts,
    #[error("the request target must be an absolute path (origin-form)")]
    Target,
    #[error("the request path must not contain '.' or '..' segments")]
    DotSegment,
    #[error("{0} requests are not served")]
    Method(&'static str),
    #[error("send one credential: a single Authorization or a single mj-api-secret header")]
    SeveralCredentials,
    #[error("a credential header cannot be named in Connection (it would not be forwarded)")]
    HopByHopCredential,
    #[error("the request's headers are larger than server.max_header_bytes")]
    HeadersTooLarge,
    /// A request on the main listener carrying the admin token, while the admin routes are on
    /// `admin_listen`: answered, never forwarded (the token would reach the upstream).
    #[error(
        "the admin routes are served on admin_listen only; this request carries the admin token and was not forwarded"
    )]
    AdminElsewhere,
}

impl Refused {
    pub fn status(self) -> StatusCode {
        match self {
            Refused::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refused::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refused::AdminElsewhere => StatusCode::MISDIRECTED_REQUEST,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The `reason` label of `mjgate_client_errors_total`.
    pub fn label(self) -> ClientError {
        match self {
            Refused::NoHost | Refused::SeveralHosts => ClientError::Host,
            Refused::Target => ClientError::Target,
            Refused::DotSegment => ClientError::DotSegment,
            Refused::Method(_) => ClientError::Method,
            Refused::SeveralCredentials | Refused::HopByHopCredential => ClientError::Credentials,
            Refused::HeadersTooLarge => ClientError::Headers,
            Refused::AdminElsewhere => ClientError::Target,
        }
    }
}

/// What admission learned in its one pass over the request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted<'a> {
    /// The one credential the request carries.
    pub credential: Credential<'a>,
    /// It accepts `text/event-stream` (an event-stream client such as a browser's `EventSource`).
    pub accepts_events: bool,
    /// Its `Accept-Encoding` takes gzip.
    pub accepts_gzip: bool,
    /// It carries no credential the gateway partitions by, but a header an upstream might take as one
    /// (`X-Api-Key`, `Api-Key`, `Proxy-Authorization`, `Cookie`): its answers cannot be filed under
    /// the right credential, so it is not served from the cache (it passes through).
    pub opaque_credential: bool,
}

/// Headers some upstreams authenticate by that the cache does not partition on.
static OPAQUE_CREDENTIALS: [HeaderName; 4] = [
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
];

/// Admits a request, returning the credential it carries (and whether it asks for an event stream).
/// One pass over the headers rather than a lookup per header: it runs on every cache hit.
pub fn admit<'a>(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &'a HeaderMap,
    max_header_bytes: usize,
) -> Result<Admitted<'a>, Refused> {
    if method == Method::CONNECT {
        return Err(Refused::Method("CONNECT"));
    }
    if method == Method::TRACE {
        return Err(Refused::Method("TRACE"));
    }
    check_path(uri.path())?;
    let mut hosts = 0usize;
    let mut credentials = 0usize;
    let mut credential = Credential::Anonymous;
    let mut connection_names_credential = false;
    let mut accepts_events = false;
    let mut encodings = gzip::Acceptance::default();
    let mut opaque = false;
    // As the head would be on the wire (`name: value\r\n`): a later request on a kept-alive
    // connection may arrive in a read buffer hyper has already grown past the limit.
    let mut size = uri.path_and_query().map_or(1, |p| p.as_str().len()) + 16;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
        if name == HOST {
            hosts += 1;
        } else if name == AUTHORIZATION {
            credentials += 1;
            credential = Credential::Authorization(value);
        } else if name == MJ_API_SECRET {
            credentials += 1;
            credential = Credential::Secret(value);
        } else if name == CONNECTION {
            connection_names_credential |= names_a_credential(value);
        } else if name == ACCEPT {
            accepts_events |= accepts_event_stream(value);
        } else if name == ACCEPT_ENCODING {
            encodings.add(value.as_bytes());
        } else if OPAQUE_CREDENTIALS.contains(name) {
            opaque = true;
        }
    }
    if size > max_header_bytes {
        return Err(Refused::HeadersTooLarge);
    }
    match hosts {
        0 if version == Version::HTTP_11 => return Err(Refused::NoHost),
        0 | 1 => {}
        _ => return Err(Refused::SeveralHosts),
    }
    if credentials > 1 {
        return Err(Refused::SeveralCredentials);
    }
    // Anonymous requests have nothing a `Connection` header could strip from the partition.
    if credential != Credential::Anonymous && connection_names_credential {
        return Err(Refused::HopByHopCredential);
    }
    Ok(Admitted {
        credential,
        accepts_events,
        accepts_gzip: encodings.gzip(),
        opaque_credential: opaque && credential == Credential::Anonymous,
    })
}

/// The one credential `headers` carry, for the access log; `None` when they carry none (or more
/// than one, which admission refuses).
pub fn credential_of(headers: &HeaderMap) -> Option<Credential<'_>> {
    let mut found = None;
    for (name, value) in headers {
        let credential = if name == AUTHORIZATION {
            Credential::Authorization(value)
        } else if name == MJ_API_SECRET {
            Credential::Secret(value)
        } else {
            continue;
        };
        if found.replace(credential).is_some() {
            return None;
        }
    }
    found
}

/// Whether an `Accept` value names `text/event-stream`.
fn accepts_event_stream(accept: &HeaderValue) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    let accept = accept.as_bytes();
    accept.len() >= SSE.len()
        && accept
            .windows(SSE.len())
            .any(|w| w.eq_ignore_ascii_case(SSE))
}

/// Whether a `Connection` value lists a credential header.
fn names_a_credential(connection: &HeaderValue) -> bool {
    connection
        .as_bytes()
        .split(|&b| b == b',')
        .map(|token| token.trim_ascii())
        .any(|token| {
            CREDENTIAL_HEADERS
                .iter()
                .any(|name| token.eq_ignore_ascii_case(name.as_str().as_bytes()))
        })
}

/// An origin-form path with no `.` or `..` segment, plain or percent-encoded (`%2e`), nor one hidden
/// behind an encoded separator (`..%2f`, `..%5c`), which an upstream that decodes before it resolves
/// would climb out of its prefix with.
fn check_path(path: &str) -> Result<(), Refused> {
    if !path.starts_with('/') {
        return Err(Refused::Target);
    }
    let bytes = path.as_bytes();
    // The common case (`/mj/task/1234/fetch`) has neither, and is done in one scan.
    if !bytes.iter().any(|&b| b == b'.' || b == b'%' || b == b'\\') {
        return Ok(());
    }
    let decoded = percent_decode(bytes);
    let dot_segment = decoded
        .split(|&b| b == b'/' || b == b'\\')
        .any(|segment| segment == b"." || segment == b"..");
    if dot_segment {
        return Err(Refused::DotSegment);
    }
    Ok(())
}

/// `%XX` sequences decoded once; malformed ones kept as they are.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header map of `pairs`, in order, repeats kept.
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn admit_get(path: &str, pairs: &[(&'static str, &'static str)]) -> Result<(), Refused> {
        let uri: Uri = path.parse().unwrap();
        let h = headers(pairs);
        admit(&Method::GET, &uri, Version::HTTP_11, &h, 1 << 16).map(|_| ())
    }

    #[test]
    fn http_1_1_needs_exactly_one_host() {
        assert_eq!(admit_get("/mj/task/1/fetch", &[("host", "g")]), Ok(()));
        assert_eq!(admit_get("/mj/task/1/fetch", &[]), Err(Refused::NoHost));
        assert_eq!(
            admit_get("/mj/task/1/fetch", &[("host", "g"), ("host", "h")]),
            Err(Refused::SeveralHosts)
        );
        let uri: Uri = "/x".parse().unwrap();
        for version in [Version::HTTP_10, Version::HTTP_2] {
            assert_eq!(
                admit(&Method::GET, &uri, version, &HeaderMap::new(), 1 << 16)
                    .map(|a| a.credential),
                Ok(Credential::Anonymous),
                "{version:?} may leave Host out"
            );
        }
    }

    #[test]
    fn dot_segments_are_refused_however_they_are_spelled() {
        for path in [
            "/mj/../admin/secret",
            "/mj/task/../fetch",
            "/mj/task/./fetch",
            "/..",
            "/mj/%2e%2e/admin",
            "/mj/%2E./admin",
            "/mj/.%2e/admin",
            "/mj/..%2fadmin",
            "/mj/..%5cadmin",
            "/mj/task/%2e/fetch",
        ] {
            assert_eq!(
                admit_get(path, &[("host", "g")]),
                Err(Refused::DotSegment),
                "{path}"
            );
        }
        for path in [
            "/mj/task/1.2/fetch",
            "/mj/task/.../fetch",
            "/v1/files/a.png",
            "/mj/task/a%20b/fetch",
            "/mj/%zz",
            "/.well-known/x",
        ] {
            assert_eq!(admit_get(path, &[("host", "g")]), Ok(()), "{path}");
        }
    }

    #[test]
    fn asterisk_connect_and_trace_are_refused() {
        let h = headers(&[("host", "g")]);
        let star: Uri = "*".parse().unwrap();
        assert_eq!(
            admit(&Method::OPTIONS, &star, Version::HTTP_11, &h, 1 << 16),
            Err(Refused::Target)
        );
        let authority: Uri = "example.com:443".parse().unwrap();
        assert_eq!(
            admit(&Method::CONNECT, &authority, Version::HTTP_11, &h, 1 << 16),
            Err(Refused::Method("CONNECT"))
        );
        let path: Uri = "/mj/task/1/fetch".parse().unwrap();
        assert_eq!(
            admit(&Method::TRACE, &path, Version::HTTP_11, &h, 1 << 16),
            Err(Refused::Method("TRACE"))
        );
    }

    #[test]
    fn one_credential_header_at_most() {
        let a = |pairs: &[(&'static str, &'static str)]| {
            let mut all = vec![("host", "g")];
            all.extend_from_slice(pairs);
            admit_get("/mj/task/1/fetch", &all)
        };
        assert_eq!(a(&[("authorization", "Bearer a")]), Ok(()));
        assert_eq!(a(&[("mj-api-secret", "s")]), Ok(()));
        assert_eq!(
            a(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            Err(Refused::SeveralCredentials)
        );
        assert_eq!(
            a(&[("authorization", "Bearer a"), ("mj-api-secret", "junk")]),
            Err(Refused::SeveralCredentials)
        );
        assert_eq!(
            a(&[("mj-api-secret", "a"), ("mj-api-secret", "b")]),
            Err(Refused::SeveralCredentials)
        );
    }

    #[test]
    fn a_credential_named_hop_by_hop_is_refused() {
        let a = |pairs: &[(&'static str, &'static str)]| {
            let mut all = vec![("host", "g")];
            all.extend_from_slice(pairs);
            admit_get("/mj/task/1/fetch", &all)
        };
        for connection in [
            "close, authorization",
            "Authorization",
            " keep-alive ,AUTHORIZATION ",
            "mj-api-secret",
        ] {
            let refused = a(&[("authorization", "Bearer a"), ("connection", connection)]);
            let secret = a(&[("mj-api-secret", "s"), ("connection", connection)]);
            assert_eq!(refused, Err(Refused::HopByHopCredential), "{connection}");
            assert_eq!(secret, Err(Refused::HopByHopCredential), "{connection}");
        }
        assert_eq!(
            a(&[
                ("authorization", "Bearer a"),
                ("connection", "keep-alive"),
                ("connection", "authorization"),
            ]),
            Err(Refused::HopByHopCredential),
            "on a second Connection line too"
        );
        assert_eq!(
            a(&[
                ("authorization", "Bearer a"),
                ("connection", "close, x-trace")
            ]),
            Ok(())
        );
        assert_eq!(
            a(&[("connection", "authorization")]),
            Ok(()),
            "nothing to strip: anonymous either way"
        );
    }
}
