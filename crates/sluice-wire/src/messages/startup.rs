//! Startup packets (F): StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
//!
//! These have no tag byte: `len: i32, code: i32, body`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::Reader;
use crate::WireError;

/// Protocol 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// A CancelRequest one Sluice replica passes to another (Sluice's own code,
/// in PostgreSQL's range for special requests, 1234.5690): the receiver
/// never passes it on, so a cancel for an unknown key cannot loop.
pub const RELAYED_CANCEL_REQUEST: i32 = (1234 << 16) | 5690;
/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A parsed StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Requested protocol minor version (major is always 3).
    pub minor_version: u16,
    /// Parameters in the order sent (user, database, options, …).
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// Value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Encode as a protocol 3.0 StartupMessage.
    pub fn encode(params: &[(&str, &str)]) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_i32(0);
        out.put_i32(PROTOCOL_3_0);
        for (k, v) in params {
            crate::frame::put_cstr(&mut out, k);
            crate::frame::put_cstr(&mut out, v);
        }
        out.put_u8(0);
        let len = out.len() as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out.freeze()
    }
}

/// Any of the packets a connection may open with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Ask for TLS.
    SslRequest,
    /// Ask for GSSAPI encryption.
    GssEncRequest,
    /// Cancel a running query on another connection.
    CancelRequest {
        /// Process id from BackendKeyData.
        process_id: i32,
        /// Secret key from BackendKeyData.
        secret_key: i32,
    },
    /// A CancelRequest relayed by another Sluice replica.
    RelayedCancel {
        /// Process id from BackendKeyData.
        process_id: i32,
        /// Secret key from BackendKeyData.
        secret_key: i32,
    },
    /// Start a session.
    Startup(Startup),
}

/// Length of the startup packet at the front of `buf`, once four bytes are there.
pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP_LEN {
        return Err(WireError::BadLength {
            tag: '\0',
            len: len.into(),
        });
    }
    Ok(Some(len as usize))
}

/// Decode a whole startup packet (length field included).
pub fn decode(packet: &[u8]) -> Result<StartupPacket, WireError> {
    let mut r = Reader::new(packet, "startup");
    let _len = r.i32()?;
    let code = r.i32()?;
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => Ok(StartupPacket::CancelRequest {
            process_id: r.i32()?,
            secret_key: r.i32()?,
        }),
        RELAYED_CANCEL_REQUEST => Ok(StartupPacket::RelayedCancel {
            process_id: r.i32()?,
            secret_key: r.i32()?,
        }),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(WireError::UnsupportedProtocol { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let key = r.cstr()?;
                if key.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                params.push((key.to_owned(), value.to_owned()));
            }
            Ok(StartupPacket::Startup(Startup {
                minor_version: minor,
                params,
            }))
        }
    }
}

/// Encode a CancelRequest.
pub fn encode_cancel(process_id: i32, secret_key: i32) -> [u8; 16] {
    encode_cancel_with(CANCEL_REQUEST, process_id, secret_key)
}

/// Encode a relayed CancelRequest (see [`RELAYED_CANCEL_REQUEST`]).
pub fn encode_relayed_cancel(process_id: i32, secret_key: i32) -> [u8; 16] {
    encode_cancel_with(RELAYED_CANCEL_REQUEST, process_id, secret_key)
}

fn encode_cancel_with(code: i32, process_id: i32, secret_key: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16i32.to_be_bytes());
    out[4..8].copy_from_slice(&code.to_be_bytes());
    out[8..12].copy_from_slice(&process_id.to_be_bytes());
    out[12..].copy_from_slice(&secret_key.to_be_bytes());
    out
}

/// The SSLRequest packet.
pub fn encode_ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8i32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_startup() {
        let bytes = Startup::encode(&[("user", "alice"), ("database", "app-prod")]);
        let StartupPacket::Startup(s) = decode(&bytes).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.param("user"), Some("alice"));
        assert_eq!(s.param("database"), Some("app-prod"));
        assert_eq!(s.minor_version, 0);
    }

    #[test]
    fn decodes_special_codes() {
        assert_eq!(
            decode(&encode_ssl_request()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            decode(&encode_cancel(7, -3)).unwrap(),
            StartupPacket::CancelRequest {
                process_id: 7,
                secret_key: -3
            }
        );
        assert_eq!(
            decode(&encode_relayed_cancel(7, -3)).unwrap(),
            StartupPacket::RelayedCancel {
                process_id: 7,
                secret_key: -3
            }
        );
    }

    #[test]
    fn refuses_bad_lengths_and_protocols() {
        assert!(peek_len(&[0, 0, 0, 4]).is_err());
        assert!(peek_len(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(peek_len(&[0, 1, 0, 0]).is_err());
        let mut v2 = encode_ssl_request();
        v2[4..].copy_from_slice(&(2i32 << 16).to_be_bytes());
        assert_eq!(
            decode(&v2),
            Err(WireError::UnsupportedProtocol { major: 2, minor: 0 })
        );
    }

    #[test]
    fn refuses_unterminated_params() {
        let mut bytes = Startup::encode(&[("user", "alice")]).to_vec();
        bytes.truncate(bytes.len() - 3);
        assert!(decode(&bytes).is_err());
    }
}
