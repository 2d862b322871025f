//! The PROXY protocol (HAProxy's, versions 1 and 2), read at the start of a connection when
//! `server.proxy_protocol` is on: the balancer in front names the client it accepted, and that
//! address is the connection's client from then on (logs, per-address limits, the forwarding
//! headers sent upstream).
//!
//! The header is read to its exact end and no further (one byte at a time for version 1, whose
//! line is at most 107 bytes; by its stated length for version 2), so what follows it, TLS or HTTP,
//! is left on the socket untouched. A `LOCAL` (v2) or `UNKNOWN` (v1) header, the balancer's own
//! health checks, keeps the peer's address. Anything else, a missing, malformed or truncated
//! header, or one not complete within `server.header_read_timeout`, ends the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Version 2's signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest line, CRLF included.
const V1_MAX: usize = 107;
/// The longest version 2 header taken after its 16 fixed bytes: addresses and TLVs. Balancers send
/// tens to a few hundred bytes; a longer one is refused rather than read.
const V2_MAX: usize = 4096;

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The client the balancer accepted.
    Proxied(SocketAddr),
    /// The balancer speaking for itself (a health check): the peer is the client.
    Local,
}

/// Why a connection's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the connection did not start with a PROXY protocol header")]
    Missing,
    #[error("PROXY protocol v1: {0}")]
    V1(&'static str),
    #[error("PROXY protocol v2: {0}")]
    V2(&'static str),
    #[error("the connection closed inside its PROXY protocol header")]
    Truncated,
}

impl Malformed {
    pub fn label(&self) -> &'static str {
        match self {
            Malformed::Missing => "missing",
            Malformed::V1(_) | Malformed::V2(_) => "malformed",
            Malformed::Truncated => "truncated",
        }
    }
}

/// Reads the header from `stream`, leaving everything after it unread.
pub async fn read(stream: &mut TcpStream) -> Result<Header, Malformed> {
    let mut start = [0u8; 5];
    read_exact(stream, &mut start).await?;
    if &start == b"PROXY" {
        let mut line = Vec::with_capacity(V1_MAX);
        line.extend_from_slice(&start);
        loop {
            if line.len() >= V1_MAX {
                return Err(Malformed::V1("no CRLF within 107 bytes"));
            }
            let mut byte = [0u8; 1];
            read_exact(stream, &mut byte).await?;
            line.push(byte[0]);
            if line.ends_with(b"\r\n") {
                return parse_v1(&line);
            }
        }
    }
    if start != V2_SIGNATURE[..5] {
        return Err(Malformed::Missing);
    }
    let mut rest = [0u8; 11];
    read_exact(stream, &mut rest).await?;
    if rest[..7] != V2_SIGNATURE[5..] {
        return Err(Malformed::Missing);
    }
    let (version_command, family) = (rest[7], rest[8]);
    let length = usize::from(u16::from_be_bytes([rest[9], rest[10]]));
    if length > V2_MAX {
        return Err(Malformed::V2("longer than 4 KiB"));
    }
    // The addresses (36 bytes at most) are all the gateway reads; the TLVs after them (a VPC
    // endpoint id, TLS details) are read past in a small buffer, so a connection holds no more
    // than this however long a header it announces.
    let mut addresses = [0u8; 36];
    let kept = length.min(addresses.len());
    read_exact(stream, &mut addresses[..kept]).await?;
    let mut skip = length - kept;
    let mut scratch = [0u8; 512];
    while skip > 0 {
        let n = skip.min(scratch.len());
        read_exact(stream, &mut scratch[..n]).await?;
        skip -= n;
    }
    parse_v2(version_command, family, &addresses[..kept])
}

async fn read_exact(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), Malformed> {
    stream
        .read_exact(buf)
        .await
        .map(drop)
        .map_err(|_| Malformed::Truncated)
}

/// `PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n`, or `PROXY UNKNOWN ...\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Header, Malformed> {
    let text = std::str::from_utf8(line).map_err(|_| Malformed::V1("not ASCII"))?;
    let text = text.strip_suffix("\r\n").ok_or(Malformed::V1("no CRLF"))?;
    let mut words = text.split(' ');
    if words.next() != Some("PROXY") {
        return Err(Malformed::V1("no PROXY"));
    }
    let protocol = words.next().ok_or(Malformed::V1("no protocol"))?;
    if protocol == "UNKNOWN" {
        return Ok(Header::Local);
    }
    let fields: Vec<&str> = words.collect();
    let [source, _destination, source_port, _destination_port] = fields[..] else {
        return Err(Malformed::V1("not four address fields"));
    };
    let ip: IpAddr = match protocol {
        "TCP4" => source
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| Malformed::V1("bad IPv4 source"))?,
        "TCP6" => source
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| Malformed::V1("bad IPv6 source"))?,
        _ => return Err(Malformed::V1("protocol is neither TCP4, TCP6 nor UNKNOWN")),
    };
    if source_port.starts_with('0') && source_port != "0" {
        return Err(Malformed::V1("bad source port"));
    }
    let port: u16 = source_port
        .parse()
        .map_err(|_| Malformed::V1("bad source port"))?;
    Ok(Header::Proxied(SocketAddr::new(ip, port)))
}

/// Version 2's binary header after its signature.
pub fn parse_v2(version_command: u8, family: u8, body: &[u8]) -> Result<Header, Malformed> {
    if version_command >> 4 != 2 {
        return Err(Malformed::V2("version is not 2"));
    }
    match version_command & 0x0f {
        0 => return Ok(Header::Local),
        1 => {}
        _ => return Err(Malformed::V2("command is neither LOCAL nor PROXY")),
    }
    // The address family (high nibble) and transport (low): TCP or UDP over IPv4 or IPv6; UNSPEC
    // and UNIX sockets carry no client address to use.
    match family >> 4 {
        1 => {
            let [a, b, c, d, _, _, _, _, p1, p2, ..] = body[..] else {
                return Err(Malformed::V2("IPv4 addresses cut short"));
            };
            let ip = Ipv4Addr::new(a, b, c, d);
            Ok(Header::Proxied(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([p1, p2]),
            )))
        }
        2 => {
            if body.len() < 36 {
                return Err(Malformed::V2("IPv6 addresses cut short"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Header::Proxied(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                port,
            )))
        }
        0 | 3 => Ok(Header::Local),
        _ => Err(Malformed::V2("unknown address family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_lines_name_the_client() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 127.0.0.9 127.0.0.1 56324 443\r\n"),
            Ok(Header::Proxied("127.0.0.9:56324".parse().unwrap()))
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 ::1 ::1 1 2\r\n"),
            Ok(Header::Proxied("[::1]:1".parse().unwrap()))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(Header::Local));
        for bad in [
            &b"PROXY TCP4 127.0.0.9 127.0.0.1 56324\r\n"[..],
            b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
            b"PROXY TCP5 127.0.0.9 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 127.0.0.9 127.0.0.1 99999 2\r\n",
            b"PROXY TCP4 127.0.0.9 127.0.0.1 01 2\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn version_2_headers_name_the_client_or_speak_for_the_balancer() {
        let mut v4 = vec![127, 0, 0, 9, 127, 0, 0, 1];
        v4.extend_from_slice(&1234u16.to_be_bytes());
        v4.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse_v2(0x21, 0x11, &v4),
            Ok(Header::Proxied("127.0.0.9:1234".parse().unwrap()))
        );
        assert_eq!(parse_v2(0x20, 0x00, &[]), Ok(Header::Local));
        assert!(parse_v2(0x21, 0x11, &v4[..6]).is_err(), "cut short");
        assert!(
            parse_v2(0x11, 0x11, &v4).is_err(),
            "version 1 in a v2 header"
        );
        assert!(parse_v2(0x22, 0x11, &v4).is_err(), "no such command");
    }

    /// A v2 header with `tlvs` bytes of TLVs after its IPv4 addresses, announcing `length`.
    fn v2_with_tlvs(tlvs: usize, length: u16) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([0x21, 0x11]);
        header.extend(length.to_be_bytes());
        header.extend([127, 0, 0, 9, 127, 0, 0, 1]);
        header.extend(1234u16.to_be_bytes());
        header.extend(443u16.to_be_bytes());
        header.extend(std::iter::repeat_n(0xEE, tlvs));
        header
    }

    async fn read_after_writing(bytes: Vec<u8>) -> (Result<Header, Malformed>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(&bytes).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let header = read(&mut server).await;
        let mut after = Vec::new();
        let _ = server.read_to_end(&mut after).await;
        drop(writer.await);
        (header, after)
    }

    #[tokio::test]
    async fn a_v2_headers_tlvs_are_read_past_and_what_follows_is_left_on_the_socket() {
        let mut bytes = v2_with_tlvs(1500, 12 + 1500);
        bytes.extend(b"GET / HTTP/1.1\r\n");
        let (header, after) = read_after_writing(bytes).await;
        assert_eq!(
            header,
            Ok(Header::Proxied("127.0.0.9:1234".parse().unwrap()))
        );
        assert_eq!(after, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_v2_header_announcing_more_than_4_kib_is_refused_unread() {
        let (header, _) = read_after_writing(v2_with_tlvs(0, 12 + 5000)).await;
        assert_eq!(header, Err(Malformed::V2("longer than 4 KiB")));
    }
}
