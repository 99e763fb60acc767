//! BackendKeyData (B) message: the key a client needs to cancel a query.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{self, Reader};
use crate::tags::backend;
use crate::WireError;

/// Process id and secret key of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKeyData {
    /// Process id.
    pub process_id: i32,
    /// Secret key.
    pub secret_key: i32,
}

impl BackendKeyData {
    /// Encode.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(13);
        let at = frame::begin(&mut out, backend::BACKEND_KEY_DATA);
        out.put_i32(self.process_id);
        out.put_i32(self.secret_key);
        frame::finish(&mut out, at);
        out.freeze()
    }

    /// Decode a message body. Protocol 3.2 keys longer than four bytes are refused.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "BackendKeyData");
        let key = BackendKeyData {
            process_id: r.i32()?,
            secret_key: r.i32()?,
        };
        if !r.is_empty() {
            return Err(WireError::Invalid(
                "BackendKeyData longer than protocol 3.0",
            ));
        }
        Ok(key)
    }
}
