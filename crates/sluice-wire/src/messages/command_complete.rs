//! CommandComplete (B) message: the command tag, such as `UPDATE 12`.

use crate::frame::Reader;
use crate::WireError;

/// Decode a CommandComplete body into its tag.
pub fn decode(body: &[u8]) -> Result<&str, WireError> {
    Reader::new(body, "CommandComplete").cstr()
}

/// The command word and the row count of a tag: `("UPDATE", Some(12))`,
/// `("INSERT", Some(1))` for `INSERT 0 1`, `("BEGIN", None)`.
pub fn rows(tag: &str) -> (&str, Option<u64>) {
    let mut words = tag.split(' ');
    let command = words.next().unwrap_or("");
    let count = tag
        .rsplit(' ')
        .next()
        .filter(|_| tag.contains(' '))
        .and_then(|n| n.parse().ok());
    match command {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "MOVE" | "FETCH" | "COPY" => {
            (command, count)
        }
        _ => (command, None),
    }
}

/// Encode a CommandComplete.
pub fn encode(tag: &str) -> bytes::Bytes {
    let mut out = bytes::BytesMut::with_capacity(tag.len() + 6);
    let at = crate::frame::begin(&mut out, b'C');
    crate::frame::put_cstr(&mut out, tag);
    crate::frame::finish(&mut out, at);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(rows("UPDATE 12"), ("UPDATE", Some(12)));
        assert_eq!(rows("INSERT 0 3"), ("INSERT", Some(3)));
        assert_eq!(rows("DELETE 0"), ("DELETE", Some(0)));
        assert_eq!(rows("CREATE TABLE"), ("CREATE", None));
        assert_eq!(rows("BEGIN"), ("BEGIN", None));
        assert_eq!(decode(b"SELECT 1\0").unwrap(), "SELECT 1");
        assert_eq!(&encode("UPDATE 1")[..], b"C\0\0\0\x0dUPDATE 1\0");
    }
}
