//! The upstream's base URL as the config gives it: scheme, authority and a path prefix, checked once.

use std::fmt;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

/// The upstream's base URL: scheme, authority, and an optional path prefix that request paths are appended to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    scheme: Scheme,
    authority: Authority,
    /// Without a trailing slash; empty when the URL has no path.
    prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    Syntax(#[from] http::uri::InvalidUri),
    #[error("scheme must be http or https")]
    Scheme,
    #[error("URL has no host")]
    Host,
    #[error("the port must be from 1 to 65535")]
    Port,
    #[error("URL must not carry a query string")]
    Query,
    /// `user:password@host`: never sent (each client's own credential headers are forwarded), and it
    /// would be printed wherever the URL is.
    #[error(
        "URL must not carry credentials (user:password@); clients' own credential headers are forwarded"
    )]
    Credentials,
}

impl UpstreamUrl {
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let uri: Uri = text.trim().parse()?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(UrlError::Scheme),
        };
        let authority = uri.authority().cloned().ok_or(UrlError::Host)?;
        if authority.as_str().contains('@') {
            return Err(UrlError::Credentials);
        }
        if uri.query().is_some() {
            return Err(UrlError::Query);
        }
        // A port written but not read (99999 parses as a URL, not as a port) would be dropped: the
        // gateway would call the scheme's default port instead.
        let host_end = match authority.as_str().find(']') {
            Some(bracket) => bracket + 1,
            None => authority
                .as_str()
                .find(':')
                .unwrap_or(authority.as_str().len()),
        };
        if let Some(port) = authority.as_str()[host_end..].strip_prefix(':')
            && !port.parse::<u16>().is_ok_and(|port| port > 0)
        {
            return Err(UrlError::Port);
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(UpstreamUrl {
            scheme,
            authority,
            prefix,
        })
    }

    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The host (lowercase, an IPv6 address without its brackets) and port the upstream is at.
    pub fn origin(&self) -> (String, u16) {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.scheme == Scheme::HTTPS {
                443
            } else {
                80
            });
        (host, port)
    }

    /// The upstream URI for a client's path and query.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let pq = if self.prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)?
        } else {
            PathAndQuery::try_from(format!("{}{}", self.prefix, path_and_query))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths_onto_a_prefix() {
        let url = UpstreamUrl::parse("https://host.example/api/").unwrap();
        assert_eq!(
            url.join("/mj/task/1/fetch?x=1").unwrap().to_string(),
            "https://host.example/api/mj/task/1/fetch?x=1"
        );
        let bare = UpstreamUrl::parse("http://127.0.0.1:9").unwrap();
        assert_eq!(bare.join("/a").unwrap().to_string(), "http://127.0.0.1:9/a");
    }

    #[test]
    fn refuses_other_schemes_and_queries() {
        assert!(matches!(
            UpstreamUrl::parse("ftp://x"),
            Err(UrlError::Scheme)
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://x/?a=b"),
            Err(UrlError::Query)
        ));
        assert!(UpstreamUrl::parse("not a url").is_err());
    }

    #[test]
    fn a_port_that_is_no_port_is_refused() {
        for bad in [
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
            "http://[::1]:70000/",
        ] {
            assert!(
                matches!(UpstreamUrl::parse(bad), Err(UrlError::Port)),
                "{bad}"
            );
        }
        for good in [
            "http://127.0.0.1:65535",
            "http://[::1]:8080/",
            "https://example.com",
        ] {
            assert!(UpstreamUrl::parse(good).is_ok(), "{good}");
        }
    }
}
