//! ParameterStatus (B) message: a run-time parameter's current value.

use bytes::{Bytes, BytesMut};

use crate::frame::{self, Reader};
use crate::tags::backend;
use crate::WireError;

/// Encode a ParameterStatus.
pub fn encode(name: &str, value: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(32);
    let at = frame::begin(&mut out, backend::PARAMETER_STATUS);
    frame::put_cstr(&mut out, name);
    frame::put_cstr(&mut out, value);
    frame::finish(&mut out, at);
    out.freeze()
}

/// Decode a body into `(name, value)`.
pub fn decode(body: &[u8]) -> Result<(&str, &str), WireError> {
    let mut r = Reader::new(body, "ParameterStatus");
    Ok((r.cstr()?, r.cstr()?))
}
