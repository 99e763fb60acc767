//! RowDescription (B) message: the columns of a result.

use crate::frame::Reader;
use crate::WireError;

/// One result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name (or alias) as the client sees it.
    pub name: String,
    /// OID of the table the column comes from, 0 for a computed column.
    pub table_oid: u32,
    /// Column number in that table, 0 for a computed column.
    pub column: i16,
    /// OID of the column's type.
    pub type_oid: u32,
    /// Type size (negative: variable).
    pub type_size: i16,
    /// Type modifier.
    pub type_modifier: i32,
    /// 0 text, 1 binary (always 0 in the answer to Describe of a statement).
    pub format: i16,
}

/// Decode a RowDescription body.
pub fn decode(body: &[u8]) -> Result<Vec<Field>, WireError> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| WireError::Invalid("negative column count"))?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        fields.push(Field {
            name: r.cstr()?.to_owned(),
            table_oid: r.i32()? as u32,
            column: r.i16()?,
            type_oid: r.i32()? as u32,
            type_size: r.i16()?,
            type_modifier: r.i32()?,
            format: r.i16()?,
        });
    }
    Ok(fields)
}

/// Encode a RowDescription.
pub fn encode(fields: &[Field]) -> bytes::Bytes {
    let mut out = bytes::BytesMut::with_capacity(7 + fields.len() * 32);
    let at = crate::frame::begin(&mut out, b'T');
    out.extend_from_slice(&(fields.len() as i16).to_be_bytes());
    for f in fields {
        crate::frame::put_cstr(&mut out, &f.name);
        out.extend_from_slice(&f.table_oid.to_be_bytes());
        out.extend_from_slice(&f.column.to_be_bytes());
        out.extend_from_slice(&f.type_oid.to_be_bytes());
        out.extend_from_slice(&f.type_size.to_be_bytes());
        out.extend_from_slice(&f.type_modifier.to_be_bytes());
        out.extend_from_slice(&f.format.to_be_bytes());
    }
    crate::frame::finish(&mut out, at);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let fields = vec![
            Field {
                name: "email".into(),
                table_oid: 16384,
                column: 2,
                type_oid: 25,
                type_size: -1,
                type_modifier: -1,
                format: 0,
            },
            Field {
                name: "?column?".into(),
                table_oid: 0,
                column: 0,
                type_oid: 23,
                type_size: 4,
                type_modifier: -1,
                format: 1,
            },
        ];
        let wire = encode(&fields);
        assert_eq!(decode(&wire[5..]).unwrap(), fields);
        assert!(decode(&wire[5..wire.len() - 1]).is_err());
    }
}
