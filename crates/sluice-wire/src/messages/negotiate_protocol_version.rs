//! NegotiateProtocolVersion (B) message: the newest minor version spoken here.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame;
use crate::tags::backend;

/// Encode: `minor` is the newest minor version supported, `unrecognized`
/// the protocol options (`_pq_.*`) that were not understood.
pub fn encode(minor: i32, unrecognized: &[&str]) -> Bytes {
    let mut out = BytesMut::with_capacity(32);
    let at = frame::begin(&mut out, backend::NEGOTIATE_PROTOCOL_VERSION);
    out.put_i32(minor);
    out.put_i32(unrecognized.len() as i32);
    for name in unrecognized {
        frame::put_cstr(&mut out, name);
    }
    frame::finish(&mut out, at);
    out.freeze()
}
