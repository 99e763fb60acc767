//! Value detectors: does a whole value look like a kind of sensitive data
//! ([`detect`]), and where inside a longer text are sensitive substrings
//! ([`scan`])?
//!
//! # Complexity
//!
//! Every detector is a hand-written forward scanner: no regular expressions,
//! no backtracking. A first pass over the bytes (one table lookup per byte)
//! computes which character classes occur, how many digits there are and the
//! longest run of base64 characters; each detector runs only when its
//! anchors can occur (`@` for e-mail, ≥ 4 digits for numbers, an aligned
//! 8-byte block of base64 characters for tokens, `$` for password hashes, `=`/`:` for
//! `key=value` contexts, URLs and IPv6, `-----BEGIN` for PEM keys). Each
//! detector visits a byte a bounded number of times: anchors are processed
//! left to right, look-behind is capped (≤ 64 bytes), and after a match or a
//! rejected run the scan resumes past it. The whole scan is O(n).

mod checks;
mod context;
mod digits;
mod email;
mod words;

use std::ops::Range;

use crate::Kind;

/// A sensitive substring found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub kind: Kind,
    /// Byte range in the scanned text (always on UTF-8 character boundaries:
    /// every detector starts and stops at ASCII bytes).
    pub range: Range<usize>,
}

// Character classes for the prefilter and the scanners.
pub(crate) const DIGIT: u16 = 1;
pub(crate) const UPPER: u16 = 1 << 1;
pub(crate) const LOWER: u16 = 1 << 2;
pub(crate) const AT: u16 = 1 << 3;
pub(crate) const DOLLAR: u16 = 1 << 4;
pub(crate) const DASH: u16 = 1 << 5;
pub(crate) const EQ: u16 = 1 << 6;
pub(crate) const COLON: u16 = 1 << 7;
/// Base64 / base64url alphabet: `A-Z a-z 0-9 + / _ -`.
pub(crate) const B64: u16 = 1 << 8;
/// Base64url alphabet without `+` and `/`: `A-Z a-z 0-9 _ -`.
pub(crate) const WORD: u16 = 1 << 9;
pub(crate) const HEX: u16 = 1 << 10;
pub(crate) const ALNUM: u16 = DIGIT | UPPER | LOWER;

const fn build_classes() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut k = 0u16;
        if c.is_ascii_digit() {
            k |= DIGIT | B64 | WORD | HEX;
        }
        if c.is_ascii_uppercase() {
            k |= UPPER | B64 | WORD;
        }
        if c.is_ascii_lowercase() {
            k |= LOWER | B64 | WORD;
        }
        if matches!(c, b'a'..=b'f' | b'A'..=b'F') {
            k |= HEX;
        }
        match c {
            b'@' => k |= AT,
            b'$' => k |= DOLLAR,
            b'-' => k |= DASH | B64 | WORD,
            b'_' => k |= B64 | WORD,
            b'+' | b'/' => k |= B64,
            b'=' => k |= EQ,
            b':' => k |= COLON,
            _ => {}
        }
        t[i] = k;
        i += 1;
    }
    t
}

pub(crate) static CLASS: [u16; 256] = build_classes();

#[inline]
pub(crate) fn class(c: u8) -> u16 {
    CLASS[c as usize]
}

#[inline]
pub(crate) fn is_alnum(c: u8) -> bool {
    class(c) & ALNUM != 0
}

/// A letter, digit or `_`: the inside of an identifier or number.
#[inline]
pub(crate) fn is_word_char(c: u8) -> bool {
    c == b'_' || is_alnum(c)
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

#[inline]
fn word_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// High bit set in each byte of `w` equal to `x` (exact for the lowest
/// flagged byte, which is all the searches below use).
#[inline]
fn eq_mask(w: u64, x: u8) -> u64 {
    let v = w ^ (LO * u64::from(x));
    v.wrapping_sub(LO) & !v & HI
}

/// First byte at or after `from` equal to `x` or `y`, eight bytes at a time.
#[inline]
pub(crate) fn find2(b: &[u8], from: usize, x: u8, y: u8) -> Option<usize> {
    let mut i = from;
    while i + 8 <= b.len() {
        let w = word_at(b, i);
        let m = eq_mask(w, x) | eq_mask(w, y);
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(|&c| c == x || c == y)
        .map(|o| i + o)
}

/// First byte at or after `from` equal to `x`.
#[inline]
pub(crate) fn find1(b: &[u8], from: usize, x: u8) -> Option<usize> {
    find2(b, from, x, x)
}

/// First ASCII digit at or after `from` (`c ^ '0' < 10`, eight bytes at a time).
#[inline]
pub(crate) fn find_digit(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 8 <= b.len() {
        let v = word_at(b, i) ^ (LO * u64::from(b'0'));
        let m = v.wrapping_sub(LO * 10) & !v & HI;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(u8::is_ascii_digit)
        .map(|o| i + o)
}

/// What the first pass learned about a text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Profile {
    classes: u16,
    digits: usize,
    /// Bit k: aligned 8-byte block k (k < 64) is all base64 characters.
    /// Every run of ≥ 16 base64 characters contains such a block, so the
    /// token scanner only looks at runs around these blocks.
    b64_blocks: u64,
    /// Such a block exists beyond the first 64 (long texts: walk all runs).
    b64_far: bool,
}

impl Profile {
    #[inline]
    pub(crate) fn of(b: &[u8]) -> Profile {
        let mut classes = 0u16;
        let mut b64_blocks = 0u64;
        let mut b64_far = false;
        let mut chunks = b.chunks_exact(8);
        // eight independent lookups per step: no loop-carried chain but
        // the accumulators, so the CPU overlaps them
        for (i, c) in (&mut chunks).enumerate() {
            let k = [
                class(c[0]),
                class(c[1]),
                class(c[2]),
                class(c[3]),
                class(c[4]),
                class(c[5]),
                class(c[6]),
                class(c[7]),
            ];
            classes |= k[0] | k[1] | k[2] | k[3] | k[4] | k[5] | k[6] | k[7];
            let and = k[0] & k[1] & k[2] & k[3] & k[4] & k[5] & k[6] & k[7];
            if and & B64 != 0 {
                if i < 64 {
                    b64_blocks |= 1 << i;
                } else {
                    b64_far = true;
                }
            }
        }
        for &c in chunks.remainder() {
            classes |= class(c);
        }
        // counted only when there are digits at all (a vectorised count)
        let digits = if classes & DIGIT != 0 {
            b.iter().filter(|c| c.is_ascii_digit()).count()
        } else {
            0
        };
        Profile {
            classes,
            digits,
            b64_blocks,
            b64_far,
        }
    }

    fn has(&self, k: u16) -> bool {
        self.classes & k != 0
    }

    /// Could any detector fire at all? Ordinary prose fails this test after
    /// one pass: no `@`, few digits, no long tokens, no `$`, `=` or `:`.
    fn interesting(&self) -> bool {
        self.has(AT | DOLLAR | EQ | COLON)
            || self.digits >= 4
            || self.b64_blocks != 0
            || self.b64_far
    }
}

/// Sensitive substrings inside `text` (a column value, a JSON document, an
/// array literal, free prose). Findings are sorted by position and do not
/// overlap; where two detectors matched overlapping bytes the ranges are
/// merged and the more specific kind is kept.
pub fn scan(text: &str) -> Vec<Finding> {
    scan_bytes(text.as_bytes())
}

/// [`scan`] over bytes that may not be valid UTF-8 (ranges still start and
/// end at ASCII bytes).
pub fn scan_bytes(b: &[u8]) -> Vec<Finding> {
    let mut out = Vec::new();
    scan_into(b, &mut out);
    out
}

/// [`scan_bytes`] into a caller-owned vector (cleared first), so a hot loop
/// can reuse one allocation.
pub fn scan_into(b: &[u8], out: &mut Vec<Finding>) {
    out.clear();
    let p = Profile::of(b);
    if !p.interesting() {
        return;
    }
    // spans where generic entropy does not apply: URLs, public PEM blocks
    let mut quiet: Vec<Range<usize>> = Vec::new();
    if p.has(DASH) {
        context::scan_pem(b, out, &mut quiet);
    }
    if p.has(EQ | COLON) {
        context::scan_context(b, p.has(COLON), out, &mut quiet);
    }
    quiet.sort_unstable_by_key(|r| r.start);
    if p.has(DOLLAR) {
        context::scan_hashes(b, out);
    }
    if p.has(AT) {
        email::scan_email(b, out);
    }
    if p.digits >= 4 {
        // also finds IBANs: their check digits follow two capitals
        digits::scan_digits(b, out);
    }
    if p.b64_far {
        words::scan_tokens(b, None, &quiet, out);
    } else if p.b64_blocks != 0 {
        words::scan_tokens(b, Some(p.b64_blocks), &quiet, out);
    }
    resolve(out);
}

/// Sort and merge overlapping findings, keeping the most specific kind.
fn resolve(out: &mut Vec<Finding>) {
    if out.len() < 2 {
        return;
    }
    out.sort_unstable_by(|a, b| {
        a.range
            .start
            .cmp(&b.range.start)
            .then(b.range.end.cmp(&a.range.end))
    });
    let mut merged: Vec<Finding> = Vec::with_capacity(out.len());
    for f in out.drain(..) {
        match merged.last_mut() {
            Some(last) if f.range.start < last.range.end => {
                if f.kind.priority() > last.kind.priority() {
                    last.kind = f.kind;
                }
                last.range.end = last.range.end.max(f.range.end);
            }
            _ => merged.push(f),
        }
    }
    *out = merged;
}

/// Is the whole value (ignoring surrounding whitespace) one sensitive item?
/// `detect("4111 1111 1111 1111") == Some(Kind::Card)`;
/// `detect("card 4111 1111 1111 1111") == None` (use [`scan`] for that).
pub fn detect(value: &str) -> Option<Kind> {
    let t = value.trim();
    if t.is_empty() {
        return None;
    }
    let findings = scan(t);
    match findings.as_slice() {
        [f] if f.range == (0..t.len()) => Some(f.kind),
        // a secret given in a `key=value` context covers only the value;
        // the whole value is still that secret's carrier
        [f] if f.kind.is_secret() && context_covers(t, f) => Some(f.kind),
        _ => None,
    }
}

/// `aws_secret_access_key=XYZ` or `password: x` as a whole value: the part
/// before the finding is only a key and a separator.
fn context_covers(t: &str, f: &Finding) -> bool {
    let b = t.as_bytes();
    let head = &b[..f.range.start];
    let tail = &b[f.range.end..];
    !head.is_empty()
        && head.iter().all(|&c| {
            is_word_char(c) || matches!(c, b'-' | b'.' | b' ' | b'=' | b':' | b'"' | b'\'')
        })
        && tail.iter().all(|&c| matches!(c, b'"' | b'\''))
}

/// Luhn check for token generation (which must always fail it).
pub(crate) fn luhn_ok(digits: &[u8]) -> bool {
    checks::luhn_valid(digits)
}

#[cfg(test)]
mod tests;
