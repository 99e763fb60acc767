//! Describe (F) and Close (F) messages: a statement or a portal, by name.

use crate::frame::Reader;
use crate::WireError;

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A prepared statement.
    Statement(&'a str),
    /// A portal.
    Portal(&'a str),
}

/// Decode a Describe or Close body (`S`/`P` then a name).
pub fn decode(body: &[u8]) -> Result<Target<'_>, WireError> {
    let mut r = Reader::new(body, "Describe/Close");
    let kind = r.u8()?;
    let name = r.cstr()?;
    match kind {
        b'S' => Ok(Target::Statement(name)),
        b'P' => Ok(Target::Portal(name)),
        _ => Err(WireError::Invalid("Describe/Close must name S or P")),
    }
}

/// Encode a Describe of a portal.
pub fn encode_describe_portal(portal: &str) -> bytes::Bytes {
    let mut out = bytes::BytesMut::with_capacity(portal.len() + 7);
    let at = crate::frame::begin(&mut out, b'D');
    out.extend_from_slice(b"P");
    crate::frame::put_cstr(&mut out, portal);
    crate::frame::finish(&mut out, at);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_and_portal() {
        assert_eq!(decode(b"Sst\0").unwrap(), Target::Statement("st"));
        assert_eq!(decode(b"P\0").unwrap(), Target::Portal(""));
        assert!(decode(b"Xa\0").is_err());
        assert!(decode(b"S").is_err());
        assert_eq!(&encode_describe_portal("p")[..], b"D\0\0\0\x07Pp\0");
    }
}
