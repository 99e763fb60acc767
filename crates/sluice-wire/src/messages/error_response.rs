//! ErrorResponse (B) and NoticeResponse (B) messages.

use bytes::{Bytes, BytesMut};

use crate::frame::{self, Reader};
use crate::tags::backend;
use crate::WireError;

/// Severity of an error Sluice raises itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
    /// Information for the client (NoticeResponse).
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorResponse {
    /// `(field type, value)` pairs in wire order.
    pub fields: Vec<(u8, String)>,
}

impl ErrorResponse {
    /// A new error with severity, SQLSTATE and message.
    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> Self {
        ErrorResponse {
            fields: vec![
                (b'S', severity.as_str().to_owned()),
                (b'V', severity.as_str().to_owned()),
                (b'C', code.to_owned()),
                (b'M', message.into()),
            ],
        }
    }

    /// Add a DETAIL field.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.fields.push((b'D', detail.into()));
        self
    }

    /// Add a HINT field.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.fields.push((b'H', hint.into()));
        self
    }

    /// Value of a field by its type byte (`b'C'` for SQLSTATE, `b'M'` for message, …).
    pub fn field(&self, kind: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_str())
    }

    /// SQLSTATE.
    pub fn code(&self) -> Option<&str> {
        self.field(b'C')
    }

    /// Primary message.
    pub fn message(&self) -> Option<&str> {
        self.field(b'M')
    }

    /// Encode as an ErrorResponse.
    pub fn encode(&self) -> Bytes {
        self.encode_as(backend::ERROR_RESPONSE)
    }

    /// Encode as a NoticeResponse.
    pub fn encode_notice(&self) -> Bytes {
        self.encode_as(backend::NOTICE_RESPONSE)
    }

    fn encode_as(&self, tag: u8) -> Bytes {
        let mut out = BytesMut::with_capacity(128);
        let at = frame::begin(&mut out, tag);
        for (kind, value) in &self.fields {
            out.extend_from_slice(&[*kind]);
            // A NUL inside a field would end it early and shift the rest.
            frame::put_cstr(&mut out, &value.replace('\0', " "));
        }
        out.extend_from_slice(&[0]);
        frame::finish(&mut out, at);
        out.freeze()
    }

    /// Decode the body (after the header) of an ErrorResponse or NoticeResponse.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "ErrorResponse");
        let mut fields = Vec::new();
        loop {
            let kind = r.u8()?;
            if kind == 0 {
                break;
            }
            fields.push((kind, r.cstr()?.to_owned()));
        }
        Ok(ErrorResponse { fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let e = ErrorResponse::new(Severity::Fatal, "08001", "sluice: cannot reach upstream")
            .hint("check the target");
        let bytes = e.encode();
        assert_eq!(bytes[0], b'E');
        let back = ErrorResponse::decode(&bytes[5..]).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.code(), Some("08001"));
    }

    #[test]
    fn strips_nul_from_values() {
        let e = ErrorResponse::new(Severity::Error, "42501", "a\0b");
        let back = ErrorResponse::decode(&e.encode()[5..]).unwrap();
        assert_eq!(back.message(), Some("a b"));
    }
}
