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
/// Lower-case hex digit `0-9 a-f` (digests, UUIDs without dashes).
pub(crate) const LHEX: u16 = 1 << 11;
/// Inside an identifier or number: `A-Z a-z 0-9 _` (see [`is_word_char`]).
pub(crate) const IDENT: u16 = 1 << 12;
pub(crate) const ALNUM: u16 = DIGIT | UPPER | LOWER;

const fn build_classes() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut k = 0u16;
        if c.is_ascii_digit() {
            k |= DIGIT | B64 | WORD | HEX | LHEX | IDENT;
        }
        if c.is_ascii_uppercase() {
            k |= UPPER | B64 | WORD | IDENT;
        }
        if c.is_ascii_lowercase() {
            k |= LOWER | B64 | WORD | IDENT;
        }
        if matches!(c, b'a'..=b'f' | b'A'..=b'F') {
            k |= HEX;
        }
        if matches!(c, b'a'..=b'f') {
            k |= LHEX;
        }
        match c {
            b'@' => k |= AT,
            b'$' => k |= DOLLAR,
            b'-' => k |= DASH | B64 | WORD,
            b'_' => k |= B64 | WORD | IDENT,
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
    class(c) & IDENT != 0
}

/// End of the run of class-`k` bytes starting at `j` (`k` one of `B64`,
/// `WORD`, `IDENT`, `LHEX`). At 8-byte-aligned offsets a whole word is
/// tested at once ([`word_all`]), so long runs (digests, tokens, words)
/// cost a few operations per eight bytes; the edges are read byte by byte.
#[inline]
pub(crate) fn run_end_in(b: &[u8], mut j: usize, k: u16) -> usize {
    let n = b.len();
    while j < n {
        if j.is_multiple_of(8) && j + 8 <= n && word_all(word_at(b, j), k) {
            j += 8;
            continue;
        }
        if class(b[j]) & k == 0 {
            break;
        }
        j += 1;
    }
    j
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

/// High bit set in each byte of `w` equal to `x`, exactly (no borrow
/// between bytes, unlike [`eq_mask`]).
#[inline]
fn eq_exact(w: u64, x: u8) -> u64 {
    let v = w ^ (LO * u64::from(x));
    !(((v & !HI).wrapping_add(!HI)) | v) & HI
}

/// High bit set in each ASCII byte of `w` in `lo..=hi` (`0 < lo ≤ hi < 0x80`).
/// The sums run on the low seven bits of each byte: for x < 0x80,
/// `x + (0x80 - lo)` and `x + (0x7f - hi)` stay below 0x100, so no carry
/// crosses into the next byte; non-ASCII bytes are then masked out.
#[inline]
pub(crate) fn in_range(w: u64, lo: u8, hi: u8) -> u64 {
    let low = w & !HI;
    let ge = low.wrapping_add(LO * u64::from(0x80 - lo));
    let gt = low.wrapping_add(LO * u64::from(0x7f - hi));
    ge & !gt & !w & HI
}

/// Is every byte of the word `w` of class `k` (`B64`, `WORD`, `IDENT` or
/// `LHEX`; any other class answers false)?
#[inline]
fn word_all(w: u64, k: u16) -> bool {
    let digit = in_range(w, b'0', b'9');
    let m = match k {
        LHEX => digit | in_range(w, b'a', b'f'),
        _ => {
            // `| 0x20` folds A-Z onto a-z and moves nothing else there
            let ident = digit | in_range(w | (LO * 0x20), b'a', b'z') | eq_exact(w, b'_');
            match k {
                IDENT => ident,
                WORD => ident | eq_exact(w, b'-'),
                B64 => ident | eq_exact(w, b'-') | eq_exact(w, b'+') | eq_exact(w, b'/'),
                _ => 0,
            }
        }
    };
    m == HI
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

/// ASCII digits in `b`, eight bytes at a time: per-byte 0/1 flags summed
/// in the bytes of one word (at most 255 words, so no byte overflows),
/// then added up across the word.
fn count_digits(b: &[u8]) -> usize {
    let mut total = 0usize;
    let mut chunks = b.chunks_exact(8);
    loop {
        let mut acc = 0u64;
        let mut words = 0;
        for c in (&mut chunks).take(255) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            acc += in_range(u64::from_le_bytes(a), b'0', b'9') >> 7;
            words += 1;
        }
        // byte lanes (≤ 255 each) → 16-bit lanes (≤ 510) → one 16-bit sum (≤ 2040)
        const LANES16: u64 = 0x00ff_00ff_00ff_00ff;
        let pairs = (acc & LANES16) + ((acc >> 8) & LANES16);
        total += (pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as usize;
        if words < 255 {
            break;
        }
    }
    total
        + chunks
            .remainder()
            .iter()
            .filter(|c| c.is_ascii_digit())
            .count()
}

/// What the first pass learned about a text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Profile {
    classes: u16,
    digits: usize,
    /// Bit k: aligned 8-byte block k (k < 64) is all base64 characters.
    /// Every run of ≥ 16 base64 characters contains such a block, so the
    /// token scanner only looks at runs around these blocks.
    pub(crate) b64_blocks: u64,
    /// Such a block exists beyond the first 64 (long texts: walk all runs).
    pub(crate) b64_far: bool,
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
        // counted only when there are digits at all
        let digits = if classes & DIGIT != 0 {
            count_digits(b)
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

    pub(crate) fn has(&self, k: u16) -> bool {
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
    if p.interesting() {
        scan_detectors(b, &p, out);
    }
}

/// The detectors whose anchors occur in `b`. Kept out of line so that the
/// first pass, all most texts get, stays small and fast.
#[inline(never)]
fn scan_detectors(b: &[u8], p: &Profile, out: &mut Vec<Finding>) {
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
    if p.b64_far || p.b64_blocks != 0 {
        words::scan_tokens(b, p, &quiet, out);
    }
    resolve(out);
}

/// Sort and merge overlapping findings, keeping the most specific kind.
pub(crate) fn resolve(out: &mut Vec<Finding>) {
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
