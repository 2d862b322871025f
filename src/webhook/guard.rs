//! Where a client's hook may point. A hook URL is the client's choice and the gateway calls it from
//! inside the operator's network, so by default it must be `http` or `https`, carry no user
//! information, and resolve only to public addresses: not loopback, private, link-local, shared
//! (CGNAT), documentation, benchmarking, multicast, reserved or unspecified ones, nor an IPv6 form
//! that embeds such an IPv4 address. Every address a name resolves to is checked, and the delivery
//! connects to those very addresses, so a name cannot pass the check and then resolve elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::Uri;

/// Longest hook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL the gateway would call (a hook, a result file) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("not a URL")]
    NotAUrl,
    #[error("the URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("not an http or https URL")]
    Scheme,
    #[error("the URL must not carry user information")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
    /// Not a DNS name nor an IP address: an IPv6 zone id (`[fe80::1%25eth0]`), or characters no
    /// resolver takes. Retrying would never make it one.
    #[error("the URL's host is not a DNS name or an IP address")]
    BadHost,
    #[error("the URL's host does not resolve")]
    Unresolved,
    #[error("the URL resolves to {0}, a loopback, private or otherwise internal address")]
    Internal(IpAddr),
}

/// A hook URL that passed the syntactic checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookUrl {
    pub uri: Uri,
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl HookUrl {
    pub fn parse(text: &str) -> Result<Self, HookError> {
        if text.len() > MAX_URL_LEN {
            return Err(HookError::TooLong);
        }
        let text = text.trim();
        let scheme_ok = ["http://", "https://"].iter().any(|scheme| {
            text.get(..scheme.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
        });
        if !scheme_ok {
            return Err(HookError::Scheme);
        }
        let uri: Uri = text.parse().map_err(|_| HookError::NotAUrl)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HookError::Scheme),
        };
        let authority = uri.authority().ok_or(HookError::NoHost)?;
        if authority.as_str().contains('@') {
            return Err(HookError::UserInfo);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(HookError::NoHost);
        }
        let bracketed = authority.host().starts_with('[');
        let name_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        let host_ok = if bracketed {
            host.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            name_ok
        };
        if !host_ok {
            return Err(HookError::BadHost);
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(HookUrl {
            host: host.to_ascii_lowercase(),
            uri,
            https,
            port,
        })
    }

    /// The addresses to deliver to: every one the host resolves to, each checked unless
    /// `allow_private`. One internal address refuses the hook (a name with a public and a private
    /// address is how a rebinding attack starts).
    pub async fn resolve(&self, allow_private: bool) -> Result<Vec<SocketAddr>, HookError> {
        let addresses: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|_| HookError::Unresolved)?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(HookError::Unresolved);
        }
        if !allow_private && let Some(bad) = addresses.iter().find(|a| !is_public(a.ip())) {
            return Err(HookError::Internal(bad.ip()));
        }
        Ok(addresses)
    }
}

/// A connection to the first of `addresses` (those [`HookUrl::resolve`] checked, and no other) that
/// takes it, with Nagle off: the request goes out in one write.
pub async fn connect(addresses: &[SocketAddr]) -> Result<tokio::net::TcpStream, String> {
    let mut last = String::from("no address");
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let internal = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || a >= 240; // reserved
    !internal
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let first = ip.segments()[0];
    let internal = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x2001 && ip.segments()[1] == 0) // Teredo: an IPv4 address hidden inside
        || (first == 0x0064 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1) // local NAT64
        || (first == 0x0100 && ip.segments()[1..4] == [0, 0, 0]); // discard-only
    !internal
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) or 6to4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(tail); // IPv4-translated (::ffff:0:0/96)
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail); // IPv4-compatible (deprecated)
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_refused() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:c0a8:0101::1",
            "100::1",
            "::ffff:0:7f00:1",
            "64:ff9b:1::a9fe:a9fe",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "192.88.99.1",
        ] {
            assert!(!public(internal), "{internal} is internal");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for public_ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(public(public_ip), "{public_ip} is public");
        }
    }

    #[test]
    fn only_plain_http_and_https_urls_are_hooks() {
        let hook = HookUrl::parse("https://hooks.example.com/mj?x=1").unwrap();
        assert_eq!(
            (hook.host.as_str(), hook.port, hook.https),
            ("hooks.example.com", 443, true)
        );
        assert_eq!(HookUrl::parse("http://[::1]:8080/h").unwrap().host, "::1");
        assert_eq!(
            HookUrl::parse("ftp://example.com/").unwrap_err(),
            HookError::Scheme
        );
        assert_eq!(
            HookUrl::parse("file:///etc/passwd").unwrap_err(),
            HookError::Scheme
        );
        assert_eq!(HookUrl::parse("/relative").unwrap_err(), HookError::Scheme);
        assert_eq!(
            HookUrl::parse("http://user:pw@example.com/").unwrap_err(),
            HookError::UserInfo
        );
        assert_eq!(HookUrl::parse("not a url").unwrap_err(), HookError::Scheme);
        for zoned in ["http://[::1%25lo]:9/", "http://[fe80::1%25eth0]/"] {
            assert!(
                matches!(
                    HookUrl::parse(zoned),
                    Err(HookError::BadHost | HookError::NotAUrl)
                ),
                "{zoned}"
            );
        }
        assert_eq!(
            HookUrl::parse("http://exa mple.com/").unwrap_err(),
            HookError::NotAUrl
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(HookUrl::parse(&long).unwrap_err(), HookError::TooLong);
    }

    #[tokio::test]
    async fn a_hook_on_loopback_is_refused_unless_private_hooks_are_allowed() {
        let hook = HookUrl::parse("http://127.0.0.1:9/h").unwrap();
        assert_eq!(
            hook.resolve(false).await.unwrap_err(),
            HookError::Internal("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            hook.resolve(true).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        let named = HookUrl::parse("http://localhost:9/h").unwrap();
        assert!(matches!(
            named.resolve(false).await,
            Err(HookError::Internal(_))
        ));
    }
}
