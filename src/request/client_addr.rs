//! The real client address behind trusted proxies (`server.trusted_proxies`): a request whose
//! connection comes from a trusted proxy is from the last address, reading `Forwarded` (RFC 7239)
//! or else `X-Forwarded-For` from the right, that is not itself a trusted proxy. A connection from
//! anywhere else is its own client, whatever it claims. What an entry that is no address (`unknown`,
//! an obfuscated name, garbage) stops the walk at: the hop that wrote it, never past it.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// `entries` (CIDRs, or single addresses) as trusted proxies; the first that is neither, as `Err`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| entry.to_owned())
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that came over a connection from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let hops = match headers.contains_key(FORWARDED) {
            true => forwarded_for(headers),
            false => x_forwarded_for(headers),
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if self.trusts(*ip) => client = *ip,
                Some(ip) => return *ip,
                // Not an address: believe nothing before it.
                None => return client,
            }
        }
        client
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`, as a dual-stack socket reports it) as the
/// IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Every `X-Forwarded-For` entry, in order, over all its lines.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .flat_map(|line| line.to_str().unwrap_or("\u{0}").split(','))
        .map(|entry| address(entry.trim()))
        .collect()
}

/// Every `Forwarded` element's `for=`, in order, over all its lines.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(FORWARDED)
        .iter()
        .flat_map(|line| line.to_str().unwrap_or("\u{0}").split(','))
        .map(|element| {
            element
                .split(';')
                .find_map(|pair| {
                    let (name, value) = pair.trim().split_once('=')?;
                    name.eq_ignore_ascii_case("for").then_some(value)
                })
                .and_then(|value| address(value.trim().trim_matches('"')))
        })
        .collect()
}

/// An address as a forwarding header writes it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn address(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (v6, _port) = rest.split_once(']')?;
        return v6.parse().ok().map(canonical);
    }
    let (v4, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_its_own_client_whatever_it_claims() {
        let trusted = TrustedProxies::parse(&["127.0.0.0/8"]).unwrap();
        let claims = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(trusted.client(ip("192.0.2.1"), &claims), ip("192.0.2.1"));
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), &claims),
            ip("127.0.0.1"),
            "nobody trusted"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_last_untrusted_hop() {
        let trusted = TrustedProxies::parse(&["127.0.0.0/8", "::1"]).unwrap();
        let peer = ip("127.0.0.1");
        for (pairs, client) in [
            (vec![("x-forwarded-for", "198.51.100.7")], "198.51.100.7"),
            // A client's own claim on the left is not believed past the first untrusted hop.
            (
                vec![("x-forwarded-for", "6.6.6.6, 198.51.100.7, 127.0.0.2")],
                "198.51.100.7",
            ),
            (
                vec![
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "198.51.100.7:4711"),
                ],
                "198.51.100.7",
            ),
            (
                vec![("x-forwarded-for", "[2001:db8::1]:80, 127.0.0.9")],
                "2001:db8::1",
            ),
            // Garbage stops the walk at the hop that wrote it.
            (
                vec![("x-forwarded-for", "198.51.100.7, nonsense, 127.0.0.3")],
                "127.0.0.3",
            ),
            (vec![("x-forwarded-for", "127.0.0.5")], "127.0.0.5"),
            (vec![], "127.0.0.1"),
            // Forwarded wins over X-Forwarded-For.
            (
                vec![
                    ("forwarded", "for=198.51.100.8;proto=https, for=\"[::1]:1\""),
                    ("x-forwarded-for", "203.0.113.1"),
                ],
                "198.51.100.8",
            ),
            (
                vec![("forwarded", "for=unknown, for=127.0.0.4")],
                "127.0.0.4",
            ),
            (
                vec![("forwarded", "For=\"198.51.100.9:8080\"")],
                "198.51.100.9",
            ),
        ] {
            assert_eq!(
                trusted.client(peer, &headers(&pairs)),
                ip(client),
                "{pairs:?}"
            );
        }
        // A dual-stack socket's mapped address is trusted as its IPv4 self.
        assert_eq!(
            trusted.client(
                ip("::ffff:127.0.0.1"),
                &headers(&[("x-forwarded-for", "198.51.100.7")])
            ),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_proxy_list_is_cidrs_or_addresses() {
        assert!(TrustedProxies::parse(&["127.0.0.0/8", "127.0.0.1", "::1/128", "::1"]).is_ok());
        assert_eq!(
            TrustedProxies::parse(&["127.0.0.0/33"]),
            Err("127.0.0.0/33".to_owned())
        );
        assert_eq!(
            TrustedProxies::parse(&["lb.example"]),
            Err("lb.example".to_owned())
        );
    }
}
