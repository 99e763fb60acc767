//! Message framing: where one message ends and the next begins.
//!
//! Every message after startup is `tag: u8, len: i32, body: [u8; len - 4]`.
//! The length counts itself but not the tag.

use crate::WireError;

/// Bytes of a message header: the tag and the length field.
pub const HEADER_LEN: usize = 5;

/// A message header read from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte.
    pub tag: u8,
    /// Total length on the wire, tag included.
    pub total_len: usize,
}

impl Header {
    /// Length of the body (after the header).
    pub fn body_len(&self) -> usize {
        self.total_len - HEADER_LEN
    }
}

/// Read the header at the front of `buf`, if five bytes are there.
///
/// Refuses a length below 4 (which would make framing loop or go backwards)
/// and any message longer than `max_len`.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::BadLength {
            tag: tag as char,
            len: len.into(),
        });
    }
    let total_len = len as usize + 1;
    if total_len > max_len {
        return Err(WireError::TooLarge {
            len: total_len,
            limit: max_len,
        });
    }
    Ok(Some(Header { tag, total_len }))
}

/// Start of a message: tag, then a placeholder length patched by [`finish`].
pub fn begin(out: &mut bytes::BytesMut, tag: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    at
}

/// Patch the length of the message begun at `at`.
pub fn finish(out: &mut bytes::BytesMut, at: usize) {
    let len = (out.len() - at - 1) as i32;
    out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
}

/// Append a NUL-terminated string.
pub fn put_cstr(out: &mut bytes::BytesMut, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(&[0]);
}

/// A cursor over a message body, for the codecs.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Read `buf`, naming the message `what` in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(WireError::Truncated(self.what))?;
        self.buf = rest;
        Ok(b)
    }

    /// A big-endian i16.
    pub fn i16(&mut self) -> Result<i16, WireError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(self.what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::BadString(self.what))?;
        let s =
            std::str::from_utf8(&self.buf[..end]).map_err(|_| WireError::BadString(self.what))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0", 100), Ok(None));
    }

    #[test]
    fn reads_length() {
        let h = peek_header(b"Q\0\0\0\x09SELECT", 100).unwrap().unwrap();
        assert_eq!(h.tag, b'Q');
        assert_eq!(h.total_len, 10);
        assert_eq!(h.body_len(), 5);
    }

    #[test]
    fn refuses_short_and_negative_lengths() {
        assert!(matches!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(WireError::BadLength { .. })
        ));
        assert!(matches!(
            peek_header(b"Q\xff\xff\xff\xff", 100),
            Err(WireError::BadLength { .. })
        ));
    }

    #[test]
    fn refuses_over_limit() {
        assert_eq!(
            peek_header(b"D\0\0\x10\0", 100),
            Err(WireError::TooLarge {
                len: 4097,
                limit: 100
            })
        );
    }

    #[test]
    fn reader_reads_fields() {
        let mut r = Reader::new(b"ab\0\0\0\0\x07x", "test");
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.i32().unwrap(), 7);
        assert_eq!(r.u8().unwrap(), b'x');
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(WireError::Truncated("test")));
    }
}
