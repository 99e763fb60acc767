//! Bind (F) message: the portal, its statement and the result formats.

use crate::frame::Reader;
use crate::WireError;

/// What Sluice reads from a Bind: names and the result column formats. The
/// parameter values are skipped, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal ("" is the unnamed portal).
    pub portal: &'a str,
    /// Source prepared statement ("" is the unnamed statement).
    pub statement: &'a str,
    /// Result format codes: empty (all text), one (applies to all), or one per column.
    pub result_formats: Vec<i16>,
    /// Number of parameter values.
    pub param_count: usize,
}

impl Bind<'_> {
    /// The format (0 text, 1 binary) of result column `i`.
    pub fn result_format(&self, i: usize) -> i16 {
        match self.result_formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        }
    }
}

/// Decode a Bind body.
pub fn decode(body: &[u8]) -> Result<Bind<'_>, WireError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let n_formats = count(r.i16()?, "parameter format count")?;
    r.bytes(n_formats * 2)?;
    let param_count = count(r.i16()?, "parameter count")?;
    for _ in 0..param_count {
        let len = r.i32()?;
        if len > 0 {
            r.bytes(len as usize)?;
        } else if len < -1 {
            return Err(WireError::Malformed(format!(
                "Bind: parameter length {len}"
            )));
        }
    }
    let n_results = count(r.i16()?, "result format count")?;
    let mut result_formats = Vec::with_capacity(n_results);
    for _ in 0..n_results {
        result_formats.push(r.i16()?);
    }
    Ok(Bind {
        portal,
        statement,
        result_formats,
        param_count,
    })
}

fn count(n: i16, what: &str) -> Result<usize, WireError> {
    usize::try_from(n).map_err(|_| WireError::Malformed(format!("Bind: negative {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_formats_past_the_parameters() {
        let mut body = Vec::new();
        body.extend_from_slice(b"p1\0s1\0");
        body.extend_from_slice(&1i16.to_be_bytes()); // one param format
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes()); // two params
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes()); // two result formats
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        let b = decode(&body).unwrap();
        assert_eq!((b.portal, b.statement, b.param_count), ("p1", "s1", 2));
        assert_eq!(b.result_formats, vec![1, 0]);
        assert_eq!((b.result_format(0), b.result_format(1)), (1, 0));
    }

    #[test]
    fn truncated_or_negative_is_an_error() {
        assert!(decode(b"p\0s\0").is_err());
        let mut body = b"\0\0".to_vec();
        body.extend_from_slice(&(-2i16).to_be_bytes());
        assert!(decode(&body).is_err());
    }
}
