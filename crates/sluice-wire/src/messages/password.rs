//! PasswordMessage, SASLInitialResponse and SASLResponse (F): all tagged `p`.
//! Which one it is depends on what the server asked for.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{self, Reader};
use crate::tags::frontend;
use crate::WireError;

/// Decode a PasswordMessage body: the password (or token) as text.
pub fn decode_password(body: &[u8]) -> Result<&str, WireError> {
    Reader::new(body, "PasswordMessage").cstr()
}

/// A decoded SASLInitialResponse.
#[derive(Debug, PartialEq, Eq)]
pub struct SaslInitial<'a> {
    /// Chosen mechanism.
    pub mechanism: &'a str,
    /// Client-first message, if sent.
    pub data: Option<&'a [u8]>,
}

/// Decode a SASLInitialResponse body.
pub fn decode_sasl_initial(body: &[u8]) -> Result<SaslInitial<'_>, WireError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 {
        None
    } else {
        Some(r.bytes(len as usize)?)
    };
    Ok(SaslInitial { mechanism, data })
}

/// Encode a PasswordMessage.
pub fn encode_password(password: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(password.len() + 6);
    let at = frame::begin(&mut out, frontend::PASSWORD);
    frame::put_cstr(&mut out, password);
    frame::finish(&mut out, at);
    out.freeze()
}

/// Encode a SASLInitialResponse.
pub fn encode_sasl_initial(mechanism: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    let at = frame::begin(&mut out, frontend::PASSWORD);
    frame::put_cstr(&mut out, mechanism);
    out.put_i32(data.len() as i32);
    out.put_slice(data);
    frame::finish(&mut out, at);
    out.freeze()
}

/// Encode a SASLResponse.
pub fn encode_sasl_response(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 5);
    let at = frame::begin(&mut out, frontend::PASSWORD);
    out.put_slice(data);
    frame::finish(&mut out, at);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_sasl_initial() {
        let bytes = encode_sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc");
        let got = decode_sasl_initial(&bytes[5..]).unwrap();
        assert_eq!(got.mechanism, "SCRAM-SHA-256");
        assert_eq!(got.data, Some(&b"n,,n=,r=abc"[..]));
    }

    #[test]
    fn refuses_overlong_data_length() {
        let mut bytes = encode_sasl_initial("SCRAM-SHA-256", b"abc").to_vec();
        let n = bytes.len();
        bytes[n - 7..n - 3].copy_from_slice(&100i32.to_be_bytes());
        assert!(decode_sasl_initial(&bytes[5..]).is_err());
    }
}
