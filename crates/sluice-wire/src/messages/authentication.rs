//! Authentication (B) messages: requests and results of authentication.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{self, Reader};
use crate::tags::backend;
use crate::WireError;

/// One Authentication message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear.
    CleartextPassword,
    /// Send md5(md5(password + user) + salt).
    Md5Password {
        /// Four salt bytes.
        salt: [u8; 4],
    },
    /// Start SASL with one of these mechanisms.
    Sasl {
        /// Mechanism names.
        mechanisms: Vec<String>,
    },
    /// SASL challenge.
    SaslContinue(Bytes),
    /// SASL outcome data.
    SaslFinal(Bytes),
    /// A method Sluice does not speak (Kerberos, GSS, SSPI).
    Unsupported(i32),
}

impl Authentication {
    /// Encode.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        let at = frame::begin(&mut out, backend::AUTHENTICATION);
        match self {
            Authentication::Ok => out.put_i32(0),
            Authentication::CleartextPassword => out.put_i32(3),
            Authentication::Md5Password { salt } => {
                out.put_i32(5);
                out.put_slice(salt);
            }
            Authentication::Sasl { mechanisms } => {
                out.put_i32(10);
                for m in mechanisms {
                    frame::put_cstr(&mut out, m);
                }
                out.put_u8(0);
            }
            Authentication::SaslContinue(data) => {
                out.put_i32(11);
                out.put_slice(data);
            }
            Authentication::SaslFinal(data) => {
                out.put_i32(12);
                out.put_slice(data);
            }
            Authentication::Unsupported(code) => out.put_i32(*code),
        }
        frame::finish(&mut out, at);
        out.freeze()
    }

    /// Decode a message body.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "Authentication");
        Ok(match r.i32()? {
            0 => Authentication::Ok,
            3 => Authentication::CleartextPassword,
            5 => {
                let s = r.bytes(4)?;
                Authentication::Md5Password {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m.to_owned());
                }
                Authentication::Sasl { mechanisms }
            }
            11 => Authentication::SaslContinue(Bytes::copy_from_slice(r.rest())),
            12 => Authentication::SaslFinal(Bytes::copy_from_slice(r.rest())),
            other => Authentication::Unsupported(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_each_kind() {
        for a in [
            Authentication::Ok,
            Authentication::CleartextPassword,
            Authentication::Md5Password { salt: [1, 2, 3, 4] },
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
            },
            Authentication::SaslContinue(Bytes::from_static(b"r=abc")),
            Authentication::SaslFinal(Bytes::from_static(b"v=xyz")),
        ] {
            let bytes = a.encode();
            assert_eq!(Authentication::decode(&bytes[5..]).unwrap(), a);
        }
    }
}
