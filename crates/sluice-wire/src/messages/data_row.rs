//! DataRow (B) message: one result row, as length-prefixed values.

use crate::frame::Reader;
use crate::WireError;

/// The values of a DataRow body (`None` is SQL NULL), borrowed.
pub fn decode(body: &[u8]) -> Result<Vec<Option<&[u8]>>, WireError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| WireError::Invalid("negative column count"))?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32()?;
        values.push(match len {
            -1 => None,
            l if l < 0 => return Err(WireError::Invalid("DataRow: negative value length")),
            l => Some(r.bytes(l as usize)?),
        });
    }
    if !r.is_empty() {
        return Err(WireError::Invalid("DataRow: bytes after the last value"));
    }
    Ok(values)
}

/// Append a whole DataRow message with these values to `out`.
pub fn encode_into<'a>(
    out: &mut bytes::BytesMut,
    values: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
) {
    let at = crate::frame::begin(out, b'D');
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    crate::frame::finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_null() {
        let mut out = bytes::BytesMut::new();
        let vals: Vec<Option<&[u8]>> = vec![Some(b"abc"), None, Some(b"")];
        encode_into(&mut out, vals.clone().into_iter());
        assert_eq!(decode(&out[5..]).unwrap(), vals);
        assert!(decode(&out[5..out.len() - 1]).is_err());
        let mut extra = out[5..].to_vec();
        extra.push(0);
        assert!(decode(&extra).is_err());
    }
}
