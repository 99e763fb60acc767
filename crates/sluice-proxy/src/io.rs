//! Reading whole messages during startup and authentication, where there is
//! one message at a time and speed does not matter.

use std::io;

use bytes::{Bytes, BytesMut};
use sluice_wire::{peek_header, WireError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Read one whole tagged message; `Ok(None)` on a clean EOF between messages.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> io::Result<Option<(u8, Bytes)>> {
    loop {
        match peek_header(buf, max_len).map_err(invalid)? {
            Some(h) if buf.len() >= h.total_len => {
                let msg = buf.split_to(h.total_len).freeze();
                return Ok(Some((h.tag, msg.slice(5..))));
            }
            Some(h) => buf.reserve(h.total_len - buf.len()),
            None => buf.reserve(1024),
        }
        if r.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a message",
                ))
            };
        }
    }
}

/// A wire error as an I/O error of kind InvalidData.
pub fn invalid(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
