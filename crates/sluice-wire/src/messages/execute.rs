//! Execute (F) message: run a portal, up to a row limit.

use crate::frame::Reader;
use crate::WireError;

/// Decode an Execute body: the portal and the row limit (0: no limit).
pub fn decode(body: &[u8]) -> Result<(&str, i32), WireError> {
    let mut r = Reader::new(body, "Execute");
    let portal = r.cstr()?;
    let max_rows = r.i32()?;
    Ok((portal, max_rows))
}

/// A Flush message: makes the server send what it has buffered.
pub const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];

#[cfg(test)]
mod tests {
    #[test]
    fn portal_and_limit() {
        let mut body = b"p\0".to_vec();
        body.extend_from_slice(&50i32.to_be_bytes());
        assert_eq!(super::decode(&body).unwrap(), ("p", 50));
        assert!(super::decode(b"p\0").is_err());
    }
}
