//! PROXY protocol (v1 text, v2 binary): written to backends so that they see
//! the real client, and read from trusted load balancers in front of us.
//! The wire formats are the ppp crate's; what is ours is the address policy.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which header a backend expects before the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    #[default]
    None,
    V1,
    V2,
}

/// The header for a connection from `client` that arrived at `local`.
/// Returns an empty vector for [`Version::None`].
///
/// IPv4-mapped IPv6 addresses (what a dual-stack `[::]` socket reports for
/// IPv4 clients) are written as plain IPv4, so the backend logs and matches
/// `203.0.113.10`, not `::ffff:203.0.113.10` (sniproxy gets this wrong).
/// Both addresses must be of one family; when they are not (an IPv6 client
/// relayed to us over IPv4 by a load balancer), the destination becomes the
/// unspecified address of the client's family, which keeps the source, the
/// one thing backends use.
pub fn encode(version: Version, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    encode_before(version, client, local, &[])
}

/// [`encode`]'s header followed by `payload`, in one buffer allocated once
/// at its final size: what a connection writes upstream first.
pub fn encode_before(version: Version, client: SocketAddr, local: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let client = unmap(client);
    let local = match (client.ip(), unmap(local).ip()) {
        (IpAddr::V4(_), IpAddr::V4(ip)) => SocketAddr::new(ip.into(), local.port()),
        (IpAddr::V6(_), IpAddr::V6(ip)) => SocketAddr::new(ip.into(), local.port()),
        (IpAddr::V4(_), IpAddr::V6(_)) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), local.port()),
        (IpAddr::V6(_), IpAddr::V4(_)) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), local.port()),
    };
    let mut out = match version {
        Version::None => Vec::with_capacity(payload.len()),
        Version::V1 => {
            let mut line = Vec::with_capacity(V1_MAX_LEN + payload.len());
            // Writing into a Vec cannot fail.
            let _ = std::io::Write::write_fmt(&mut line, format_args!("{}", ppp::v1::Addresses::from((client, local))));
            line
        }
        Version::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .reserve_capacity(payload.len())
        .build()
        // The builder only fails when writing into its own Vec fails.
        .expect("a PROXY v2 header fits in memory"),
    };
    out.extend_from_slice(payload);
    out
}

/// The header of a connection the gateway makes on its own behalf (a health
/// check): v2's LOCAL command, v1's UNKNOWN. The backend keeps the socket's
/// addresses for it.
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::None => Vec::new(),
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[0x20, 0x00, 0x00, 0x00]].concat(),
    }
}

/// `::ffff:a.b.c.d` becomes `a.b.c.d`; every other address is kept.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// A header read from a trusted load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Bytes the header took at the start of the stream; not forwarded.
    pub len: usize,
    /// The original client and the address it connected to, or `None` for
    /// a LOCAL/UNKNOWN header (a load balancer's own health check), which
    /// keeps the socket's addresses.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
}

/// v1 headers are at most 107 bytes, v2 at most 16 + 65535.
pub const MAX_HEADER_LEN: usize = 16 + 65535;
const V1_MAX_LEN: usize = 107;

/// Looks for a PROXY v1 or v2 header at the start of `buf`.
/// `Ok(None)` means more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Inbound>, ProxyHeaderError> {
    use ppp::PartialResult;
    let invalid = |e: &dyn std::fmt::Display| ProxyHeaderError::Invalid(e.to_string());
    // A v1 header is one line ending in CRLF, at most 107 bytes, and only
    // that line is handed to ppp: given more, it judges a line before its end
    // ("... 40000 " is an invalid port to it) or, after a bare LF, reads on
    // past it.
    if buf.starts_with(&b"PROXY "[..buf.len().min(6)]) {
        let window = &buf[..buf.len().min(V1_MAX_LEN)];
        let Some(lf) = window.iter().position(|b| *b == b'\n') else {
            return match buf.len() < V1_MAX_LEN {
                true => Ok(None),
                false => Err(invalid(&"PROXY v1 line longer than 107 bytes")),
            };
        };
        if lf == 0 || window[lf - 1] != b'\r' || window[..lf - 1].contains(&b'\r') {
            return Err(invalid(&"PROXY v1 line not ended by one CRLF"));
        }
        return match ppp::v1::Header::try_from(&buf[..=lf]) {
            Ok(header) if header.header.len() == lf + 1 => {
                Ok(Some(Inbound { len: lf + 1, addresses: v1_addresses(&header) }))
            }
            Ok(_) => Err(invalid(&"PROXY v1 line not understood")),
            Err(e) => Err(invalid(&e)),
        };
    }
    let result = ppp::v2::Header::try_from(buf);
    if result.is_incomplete() {
        return Ok(None);
    }
    let header = result.map_err(|e| invalid(&e))?;
    // This is a TCP connection: a header that says UDP describes another one.
    if header.command == ppp::v2::Command::Proxy && header.protocol == ppp::v2::Protocol::Datagram {
        return Err(invalid(&"PROXY v2 header for a datagram connection"));
    }
    let addresses = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => None,
        (_, ppp::v2::Addresses::IPv4(a)) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        (_, ppp::v2::Addresses::IPv6(a)) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        (_, _) => None,
    };
    Ok(Some(Inbound { len: header.len(), addresses }))
}

fn v1_addresses(header: &ppp::v1::Header<'_>) -> Option<(SocketAddr, SocketAddr)> {
    match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        ppp::v1::Addresses::Tcp6(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        ppp::v1::Addresses::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_bytes_for_ipv4_ipv6_and_mapped() {
        assert_eq!(
            encode(Version::V1, addr("203.0.113.10:51234"), addr("198.51.100.1:443")),
            b"PROXY TCP4 203.0.113.10 198.51.100.1 51234 443\r\n"
        );
        assert_eq!(
            encode(Version::V1, addr("[2001:db8::10]:51234"), addr("[2001:db8::1]:443")),
            b"PROXY TCP6 2001:db8::10 2001:db8::1 51234 443\r\n"
        );
        assert_eq!(
            encode(Version::V1, addr("[::ffff:203.0.113.10]:51234"), addr("[::ffff:198.51.100.1]:443")),
            b"PROXY TCP4 203.0.113.10 198.51.100.1 51234 443\r\n"
        );
        assert_eq!(
            encode(Version::V1, addr("203.0.113.10:51234"), addr("[2001:db8::1]:443")),
            b"PROXY TCP4 203.0.113.10 0.0.0.0 51234 443\r\n"
        );
    }

    #[test]
    fn v2_bytes_for_ipv4_ipv6_and_mapped() {
        const SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
        let v4 = [
            &SIG[..],
            &[0x21, 0x11, 0x00, 0x0c],
            &[203, 0, 113, 10, 198, 51, 100, 1],
            &51234u16.to_be_bytes(),
            &443u16.to_be_bytes(),
        ]
        .concat();
        assert_eq!(encode(Version::V2, addr("203.0.113.10:51234"), addr("198.51.100.1:443")), v4);
        assert_eq!(encode(Version::V2, addr("[::ffff:203.0.113.10]:51234"), addr("[::ffff:198.51.100.1]:443")), v4);
        let v6 = [
            &SIG[..],
            &[0x21, 0x21, 0x00, 0x24],
            &"2001:db8::10".parse::<Ipv6Addr>().unwrap().octets(),
            &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
            &51234u16.to_be_bytes(),
            &443u16.to_be_bytes(),
        ]
        .concat();
        assert_eq!(encode(Version::V2, addr("[2001:db8::10]:51234"), addr("[2001:db8::1]:443")), v6);
    }

    #[test]
    fn the_payload_follows_the_header_in_one_allocation() {
        let payload = [22, 3, 1, 0, 5, 1, 2, 3, 4, 5];
        for version in [Version::None, Version::V1, Version::V2] {
            for (client, local) in
                [("203.0.113.10:40000", "198.51.100.1:443"), ("[2001:db8::10]:1", "[2001:db8::1]:443")]
            {
                let first = encode_before(version, addr(client), addr(local), &payload);
                assert_eq!(first, [encode(version, addr(client), addr(local)), payload.to_vec()].concat());
            }
        }
    }

    #[test]
    fn none_writes_nothing() {
        assert!(encode(Version::None, addr("203.0.113.10:1"), addr("198.51.100.1:443")).is_empty());
    }

    #[test]
    fn reads_back_what_it_writes() {
        for version in [Version::V1, Version::V2] {
            for client in ["203.0.113.10:40000", "[2001:db8::10]:40000"] {
                let local = if client.starts_with('[') { "[2001:db8::1]:443" } else { "198.51.100.1:443" };
                let mut bytes = encode(version, addr(client), addr(local));
                let len = bytes.len();
                for cut in 0..len {
                    assert_eq!(parse(&bytes[..cut]), Ok(None), "{version:?} {client} cut at {cut}");
                }
                bytes.extend_from_slice(&[22, 3, 1]);
                assert_eq!(parse(&bytes), Ok(Some(Inbound { len, addresses: Some((addr(client), addr(local))) })));
            }
        }
    }

    #[test]
    fn local_headers_read_back_as_local() {
        for version in [Version::V1, Version::V2] {
            let bytes = encode_local(version);
            assert_eq!(parse(&bytes), Ok(Some(Inbound { len: bytes.len(), addresses: None })), "{version:?}");
        }
        assert!(encode_local(Version::None).is_empty());
    }

    #[test]
    fn local_and_unknown_keep_the_peer() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some(Inbound { len: 15, addresses: None })));
        let local = [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[0x20, 0x00, 0x00, 0x00]].concat();
        assert_eq!(parse(&local), Ok(Some(Inbound { len: 16, addresses: None })));
    }

    /// Inputs the fuzzer found (fuzz/artifacts/proxy_header): a bare LF let
    /// the header run on into the bytes after it.
    #[test]
    fn a_v1_line_ends_at_its_first_crlf_and_nowhere_else() {
        assert!(parse(b"PROXY UNKNOWN \nxyz\r\n").is_err());
        assert!(parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \nGET / HTTP/1.1\r\n").is_err());
        assert!(parse(b"PROXY UNKNOWN ffff:ff#f:ffT\n!\0\0\0f:ffff:ffff:55356 65535\r\n").is_err());
        assert!(parse(b"PROXY UNKNOWN a\rb\r\n").is_err());
        assert!(parse(b"PROXY TCP4 203.0.113.10 198.51.100.1 40000 443\r").unwrap().is_none());
        let line = b"PROXY TCP4 203.0.113.10 198.51.100.1 40000 443\r\n";
        assert_eq!(parse(&[&line[..], b"\x16\x03\x01"].concat()).unwrap().unwrap().len, line.len());
    }

    #[test]
    fn a_v2_header_for_udp_is_refused() {
        let udp = [
            &b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c"[..],
            &[203, 0, 113, 10, 198, 51, 100, 1],
            &40000u16.to_be_bytes(),
            &443u16.to_be_bytes(),
        ]
        .concat();
        assert!(parse(&udp).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n").is_err());
        assert!(parse(&[22, 3, 1, 0, 200]).is_err());
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
    }
}
