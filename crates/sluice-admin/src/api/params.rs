//! Query strings, checked strictly: only the parameters a route knows, each
//! at most once, UTF-8, no control characters, within length and range.
//! Anything else is a 400 that names the parameter. An empty name-like
//! value (`principal=`) counts as not given; an empty number, time, choice
//! or cursor is an error.

use percent_encoding::percent_decode_str;

use super::error::ApiError;

/// Longest accepted value of a name-like parameter, in characters.
pub const MAX_NAME: usize = 256;
/// Longest accepted `text` search, in characters.
pub const MAX_TEXT: usize = 1024;

/// The decoded parameters of one request.
#[derive(Debug, Default)]
pub struct Params {
    values: Vec<(String, String)>,
}

/// A short, printable rendering of something the client sent.
pub fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

fn decode(part: &str) -> Result<String, ApiError> {
    let plus = part.replace('+', " ");
    percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::bad_request("the query string is not percent-encoded UTF-8"))
}

/// Parse `query`, accepting only `allowed` names.
pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
    let mut params = Params::default();
    let mut seen: Vec<String> = Vec::new();
    for piece in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let key = decode(k)?;
        let value = decode(v)?;
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::bad_request(if allowed.is_empty() {
                format!(
                    "unknown query parameter {}: this path takes none",
                    shown(&key)
                )
            } else {
                format!(
                    "unknown query parameter {}; accepted: {}",
                    shown(&key),
                    allowed.join(", ")
                )
            }));
        }
        if seen.contains(&key) {
            return Err(ApiError::bad_request(format!(
                "query parameter {key} is given more than once"
            )));
        }
        seen.push(key.clone());
        params.values.push((key, value));
    }
    Ok(params)
}

/// Check a name-like value (also used for path segments).
pub fn check_text(name: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::bad_request(format!(
            "{name}: longer than {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name}: control characters are not allowed"
        )));
    }
    Ok(())
}

impl Params {
    fn raw(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A string of at most `max` characters without control characters
    /// (empty: not given).
    pub fn text(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.raw(name) {
            None | Some("") => Ok(None),
            Some(v) => {
                check_text(name, v, max)?;
                Ok(Some(v.to_owned()))
            }
        }
    }

    /// Like [`text`](Self::text), but an empty value is an error.
    pub fn nonempty(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.raw(name) {
            Some("") => Err(ApiError::bad_request(format!("{name}: must not be empty"))),
            _ => self.text(name, max),
        }
    }

    /// One of `choices`.
    pub fn choice(&self, name: &str, choices: &[&str]) -> Result<Option<String>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) if choices.contains(&v) => Ok(Some(v.to_owned())),
            Some(v) => Err(ApiError::bad_request(format!(
                "{name}: {} is not one of {}",
                shown(v),
                choices.join(", ")
            ))),
        }
    }

    /// A whole number in `min..=max`.
    pub fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::bad_request(format!(
                    "{name}: {} is not a whole number from {min} to {max}",
                    shown(v)
                ))),
            },
        }
    }

    /// A point in time: RFC 3339, a date, or an age like `30d` (ms since
    /// the epoch).
    pub fn time(&self, name: &str, now_ms: i64) -> Result<Option<i64>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            // The parser works on ASCII; anything else is not a time anyway.
            Some(v) if !v.is_ascii() || v.len() > 64 => Err(ApiError::bad_request(format!(
                "{name}: {} is not a time: expected RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01) or an age (30d)",
                shown(v)
            ))),
            Some(v) => sluice_audit::util::parse_time(v, now_ms)
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("{name}: {e}"))),
        }
    }

    /// A ULID (the `next_cursor` of a previous page).
    pub fn ulid(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(v)
                if v.len() == 26
                    && v.bytes().all(|b| {
                        b.is_ascii_digit()
                            || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'L' | b'O' | b'U'))
                    }) =>
            {
                Ok(Some(v.to_owned()))
            }
            Some(v) => Err(ApiError::bad_request(format!(
                "{name}: {} is not a cursor from a previous page",
                shown(v)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing() {
        let p = parse(Some("a=x+y&b=%2B1&c="), &["a", "b", "c"]).unwrap();
        assert_eq!(p.text("a", 10).unwrap().as_deref(), Some("x y"));
        assert_eq!(p.int("b", 0, 5).unwrap(), Some(1));
        assert_eq!(p.text("c", 10).unwrap(), None);
        assert!(p.int("c", 0, 5).is_err());
        assert_eq!(p.int("b", 2, 5).unwrap_err().status.as_u16(), 400);
        assert!(parse(Some("z=1"), &["a"]).is_err());
        assert!(parse(Some("a=1&a=2"), &["a"]).is_err());
        assert!(parse(Some("a=%ff"), &["a"]).is_err());
        let p = parse(Some("a=%00"), &["a"]).unwrap();
        assert!(p.text("a", 10).is_err());
        let p = parse(Some("t=2024-01-01T00:00:00%2B0%C3%A900"), &["t"]).unwrap();
        assert!(p.time("t", 0).is_err());
        let p = parse(Some("t=1h&u=01ARZ3NDEKTSV4RRFFQ69G5FAV"), &["t", "u"]).unwrap();
        assert_eq!(p.time("t", 7_200_000).unwrap(), Some(3_600_000));
        assert!(p.ulid("u").unwrap().is_some());
        let p = parse(Some("u=01arz3ndektsv4rrffq69g5fav"), &["u"]).unwrap();
        assert!(p.ulid("u").is_err());
    }
}
