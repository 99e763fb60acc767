//! `bytea` in PostgreSQL's text format: `\x6a6f…` (hex, the default) or the
//! escape format (`bytea_output = escape`: printable bytes as they are,
//! `\\` and `\ooo` for the rest).

/// Decode a text-format bytea into `out` (cleared first). `false` when the
/// text is neither valid hex nor valid escape format.
#[cfg(test)]
pub(crate) fn decode_text(text: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    match text.strip_prefix(b"\\x") {
        Some(hex) => decode_hex(hex, out),
        None => decode_escape(text, out),
    }
}

/// Is a decoded bytea text (UTF-8) worth scanning? Binary data (images,
/// hashes, compressed files) is not: scanning it costs time and its random
/// bytes can look like a finding, whose masking would corrupt the file.
/// Only the first 4 KiB are decoded before the check, so binary data, which
/// almost always fails within a few bytes, is skipped cheaply.
pub(crate) fn decode_text_if_utf8(text: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    const PROBE: usize = 4096;
    out.clear();
    let Some(hex) = text.strip_prefix(b"\\x") else {
        return Some(decode_escape(text, out) && std::str::from_utf8(out).is_ok());
    };
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let cut = hex.len().min(2 * PROBE);
    if !decode_hex(&hex[..cut], out) {
        return None;
    }
    if !is_text(out, cut < hex.len()) {
        return Some(false);
    }
    if !decode_hex(&hex[cut..], out) {
        return None;
    }
    Some(std::str::from_utf8(out).is_ok())
}

/// Valid UTF-8, allowing a character cut at the end when `open_end`.
fn is_text(bytes: &[u8], open_end: bool) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => open_end && e.error_len().is_none(),
    }
}

/// Is a window of a streamed bytea text? Valid UTF-8 except possibly a
/// character cut at the end, and at the start unless the window starts the
/// value.
pub fn window_is_text(bytes: &[u8], value_start: bool) -> bool {
    let start = if value_start {
        0
    } else {
        bytes
            .iter()
            .take(3)
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count()
    };
    is_text(&bytes[start..], true)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(hex: &[u8], out: &mut Vec<u8>) -> bool {
    if !hex.len().is_multiple_of(2) {
        return false;
    }
    out.reserve(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => return false,
        }
    }
    true
}

fn decode_escape(text: &[u8], out: &mut Vec<u8>) -> bool {
    out.reserve(text.len());
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        match text.get(i + 1..i + 4) {
            _ if text.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(&[a, b, c]) if (b'0'..=b'3').contains(&a) && is_octal(b) && is_octal(c) => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                i += 4;
            }
            _ => return false,
        }
    }
    true
}

fn is_octal(c: u8) -> bool {
    (b'0'..=b'7').contains(&c)
}

/// Append `bytes` as text-format bytea in hex (`\x…`), which every client
/// reads whatever `bytea_output` says.
pub(crate) fn encode_hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 + 2 * bytes.len());
    out.extend_from_slice(b"\\x");
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

/// Scan the hex digits of a streamed text-format bytea (`hex`: whole pairs,
/// without the `\x` prefix) and overwrite the pairs of every finding with
/// `2a` (`*`), keeping the length; `scratch` is reused between calls.
/// Returns the kinds found, or `None` when the bytes are not text (binary
/// data is left as it is, see [`window_is_text`]). Invalid hex is
/// overwritten whole (fail closed).
pub fn redact_hex_in_place(
    hex: &mut [u8],
    value_start: bool,
    scratch: &mut Vec<u8>,
    findings: &mut Vec<crate::Finding>,
) -> Option<Vec<crate::Kind>> {
    scratch.clear();
    let even = hex.len() - hex.len() % 2;
    if !decode_hex(&hex[..even], scratch) {
        fill_stars(hex);
        return Some(Vec::new());
    }
    if !window_is_text(scratch, value_start) {
        return None;
    }
    crate::scan_into(scratch, findings);
    for f in findings.iter() {
        if let Some(part) = hex.get_mut(2 * f.range.start..2 * f.range.end) {
            fill_stars(part);
        }
    }
    Some(findings.iter().map(|f| f.kind).collect())
}

/// `*` as hex pairs (`2a2a…`); a trailing odd byte becomes `a`.
fn fill_stars(hex: &mut [u8]) {
    for (i, c) in hex.iter_mut().enumerate() {
        *c = if i % 2 == 0 { b'2' } else { b'a' };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(t: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        decode_text(t.as_bytes(), &mut out).then_some(out)
    }

    #[test]
    fn hex_and_escape_round_trip() {
        assert_eq!(decode("\\x616263"), Some(b"abc".to_vec()));
        assert_eq!(decode("\\x6A6B"), Some(b"jk".to_vec()));
        assert_eq!(decode("\\x"), Some(Vec::new()));
        assert_eq!(decode("\\x6"), None);
        assert_eq!(decode("\\xzz"), None);
        assert_eq!(decode("a\\\\b\\000\\377"), Some(b"a\\b\0\xff".to_vec()));
        assert_eq!(decode("bad\\9"), None);
        let mut out = Vec::new();
        encode_hex(b"a\xff", &mut out);
        assert_eq!(out, b"\\x61ff");
    }

    #[test]
    fn streamed_hex_is_redacted_in_place() {
        let mut hex = Vec::new();
        encode_hex(b"mail bob@example.org now", &mut hex);
        let mut body = hex[2..].to_vec();
        let kinds = redact_hex_in_place(&mut body, true, &mut Vec::new(), &mut Vec::new());
        assert_eq!(kinds, Some(vec![crate::Kind::Email]));
        let mut back = Vec::new();
        assert!(decode_hex(&body, &mut back));
        assert_eq!(back.len(), 24);
        assert!(back.starts_with(b"mail ") && back.ends_with(b" now"));
        assert!(!back.windows(3).any(|w| w == b"bob"));
        // binary data is left alone
        let mut png = b"89504e470d0a1a0a".to_vec();
        assert_eq!(
            redact_hex_in_place(&mut png, true, &mut Vec::new(), &mut Vec::new()),
            None
        );
        assert_eq!(png, b"89504e470d0a1a0a");
        // a window may start or end inside a character
        assert!(window_is_text(&"é mail".as_bytes()[1..], false));
        assert!(!window_is_text(&"é mail".as_bytes()[1..], true));
        assert!(window_is_text(&"mail é".as_bytes()[..6], true));
        assert!(!window_is_text(b"\xff\xd8\xff\xe0", false));
    }

    #[test]
    fn only_text_is_decoded_whole() {
        let mut out = Vec::new();
        assert_eq!(decode_text_if_utf8(b"\\x616263", &mut out), Some(true));
        assert_eq!(out, b"abc");
        let mut big = b"\\x89".to_vec();
        big.extend(std::iter::repeat_n(b'6', 100_000));
        assert_eq!(decode_text_if_utf8(&big, &mut out), Some(false));
        assert!(out.len() <= 4096, "stopped after the probe");
        assert_eq!(decode_text_if_utf8(b"\\x61ff", &mut out), Some(false));
        assert_eq!(decode_text_if_utf8(b"a\\377", &mut out), Some(false));
        assert_eq!(decode_text_if_utf8(b"\\x6", &mut out), None);
    }
}
