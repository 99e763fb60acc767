//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a TCP load
//! balancer puts before the client's first byte to say who the client is.
//! <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 line, CRLF included.
pub const V1_MAX: usize = 107;
/// Length of the fixed part of a version 2 header.
pub const V2_FIXED: usize = 16;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The balancer's own connection (health checks: v2 `LOCAL`, v1
    /// `UNKNOWN`): the peer is who it is.
    Local,
    /// A client's connection relayed by the balancer.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
}

/// A header that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection does not start with a header.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// A header that does not follow the specification.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Which version the first byte announces.
pub fn version(first: u8) -> Result<u8, ProxyHeaderError> {
    match first {
        b'P' => Ok(1),
        b'\r' => Ok(2),
        _ => Err(ProxyHeaderError::Missing),
    }
}

/// Parse a version 1 line (`PROXY TCP4 src dst sport dport\r\n`, CRLF
/// included).
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(bad("a version 1 header ends with CRLF"))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("not ASCII"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyHeaderError::Missing);
    }
    let family = parts.next().ok_or(bad("no protocol family"))?;
    if family == "UNKNOWN" {
        return Ok(ProxyHeader::Local);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(bad("a version 1 header has four address fields"));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
        match family {
            "TCP4" => s
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| bad("not an IPv4 address")),
            "TCP6" => s
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| bad("not an IPv6 address")),
            _ => Err(bad("unknown protocol family")),
        }
    };
    let port = |s: &str| -> Result<u16, ProxyHeaderError> {
        // No sign, no leading zeros: exactly as the specification writes ports.
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("not a port"));
        }
        s.parse().map_err(|_| bad("not a port"))
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    })
}

/// From the fixed 16 bytes of a version 2 header, the length of the rest.
pub fn v2_remaining(fixed: &[u8; V2_FIXED]) -> Result<usize, ProxyHeaderError> {
    if fixed[..12] != V2_SIGNATURE {
        return Err(ProxyHeaderError::Missing);
    }
    if fixed[12] >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("unknown version"));
    }
    Ok(usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))
}

/// Parse a version 2 header: its fixed 16 bytes and the
/// [`v2_remaining`] bytes after them (addresses, then TLVs, ignored).
pub fn parse_v2(fixed: &[u8; V2_FIXED], rest: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    if v2_remaining(fixed)? != rest.len() {
        return Err(bad("length does not match"));
    }
    match fixed[12] & 0x0f {
        0 => return Ok(ProxyHeader::Local),
        1 => {}
        _ => return Err(bad("unknown command")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match fixed[13] {
        // AF_UNSPEC: the balancer does not know; keep the peer.
        0x00 => Ok(ProxyHeader::Local),
        // TCP over IPv4
        0x11 => {
            let a = rest.get(..12).ok_or(bad("IPv4 addresses cut short"))?;
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(ip(&a[0..4]), port(&a[8..10])),
                destination: SocketAddr::new(ip(&a[4..8]), port(&a[10..12])),
            })
        }
        // TCP over IPv6
        0x21 => {
            let a = rest.get(..36).ok_or(bad("IPv6 addresses cut short"))?;
            let ip = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(ip(&a[0..16]), port(&a[32..34])),
                destination: SocketAddr::new(ip(&a[16..32]), port(&a[34..36])),
            })
        }
        _ => Err(bad("only TCP over IPv4 or IPv6 is relayed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn version_1_lines() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 7432\r\n"),
            Ok(ProxyHeader::Proxied {
                source: addr("203.0.113.7:51234"),
                destination: addr("10.0.0.5:7432"),
            })
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 7432\r\n"),
            Ok(ProxyHeader::Proxied {
                source: addr("[2001:db8::7]:4000"),
                destination: addr("[2001:db8::1]:7432"),
            })
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(ProxyHeader::Local));
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 7432\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse_v1(bad), Err(ProxyHeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_v1(b"GET / HTTP/1.0\r\n"),
            Err(ProxyHeaderError::Missing)
        );
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> ([u8; V2_FIXED], Vec<u8>) {
        let mut fixed = [0u8; V2_FIXED];
        fixed[..12].copy_from_slice(&V2_SIGNATURE);
        fixed[12] = 0x20 | command;
        fixed[13] = family;
        fixed[14..].copy_from_slice(&(body.len() as u16).to_be_bytes());
        (fixed, body.to_vec())
    }

    #[test]
    fn version_2_headers() {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 5];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&7432u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]); // a TLV, ignored
        let (fixed, rest) = v2(1, 0x11, &body);
        assert_eq!(v2_remaining(&fixed), Ok(16));
        assert_eq!(
            parse_v2(&fixed, &rest),
            Ok(ProxyHeader::Proxied {
                source: addr("203.0.113.7:51234"),
                destination: addr("10.0.0.5:7432"),
            })
        );
        let mut body6 = Vec::new();
        body6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&4000u16.to_be_bytes());
        body6.extend_from_slice(&7432u16.to_be_bytes());
        let (fixed, rest) = v2(1, 0x21, &body6);
        assert_eq!(
            parse_v2(&fixed, &rest),
            Ok(ProxyHeader::Proxied {
                source: addr("[2001:db8::7]:4000"),
                destination: addr("[2001:db8::1]:7432"),
            })
        );
        let (fixed, rest) = v2(0, 0x00, &[]);
        assert_eq!(parse_v2(&fixed, &rest), Ok(ProxyHeader::Local));
        let (fixed, rest) = v2(1, 0x11, &body[..8]);
        assert!(matches!(
            parse_v2(&fixed, &rest),
            Err(ProxyHeaderError::Malformed(_))
        ));
        let (fixed, rest) = v2(1, 0x31, &[0; 216]); // AF_UNIX
        assert!(matches!(
            parse_v2(&fixed, &rest),
            Err(ProxyHeaderError::Malformed(_))
        ));
        let (mut fixed, _) = v2(1, 0x11, &body);
        fixed[12] = 0x11; // version 1 in a binary header
        assert!(v2_remaining(&fixed).is_err());
        fixed[0] = b'X';
        assert_eq!(v2_remaining(&fixed), Err(ProxyHeaderError::Missing));
    }
}
