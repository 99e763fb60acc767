//! Token-shaped secrets: IBANs, JWTs, vendor keys with fixed prefixes, the
//! codice fiscale, bearer tokens and generic high-entropy strings.

use std::ops::Range;

use super::checks::{iban_length, iban_mod97_valid, it_codice_fiscale_valid};
use super::{class, is_alnum, run_end_in, Finding, Profile, B64, DIGIT, LHEX, LOWER, UPPER, WORD};
use crate::Kind;

fn is_upper_or_digit(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}

/// An IBAN starting at `i` (two capitals, two digits), compact
/// (`DE89370400440532013000`) or printed in groups (`DE89 3704 0044 0532
/// 0130 00`): country length table + mod-97. Returns its end.
pub(crate) fn scan_iban_at(b: &[u8], i: usize, out: &mut Vec<Finding>) -> Option<usize> {
    let n = b.len();
    if i + 4 > n
        || (i > 0 && is_alnum(b[i - 1]))
        || !b[i + 2].is_ascii_digit()
        || !b[i + 3].is_ascii_digit()
    {
        return None;
    }
    let len = iban_length(b[i], b[i + 1])?;
    let mut compact = [0u8; 34];
    compact[..4].copy_from_slice(&b[i..i + 4]);
    let mut count = 4;
    let mut j = i + 4;
    while count < len && j < n {
        if is_upper_or_digit(b[j]) {
            compact[count] = b[j];
            count += 1;
            j += 1;
        } else if b[j] == b' ' && j + 1 < n && is_upper_or_digit(b[j + 1]) {
            j += 1;
        } else {
            break;
        }
    }
    if count == len && (j >= n || !is_alnum(b[j])) && iban_mod97_valid(&compact[..len]) {
        out.push(Finding {
            kind: Kind::Iban,
            range: i..j,
        });
        return Some(j);
    }
    None
}

fn run_end(b: &[u8], mut j: usize, k: u16) -> usize {
    while j < b.len() && class(b[j]) & k != 0 {
        j += 1;
    }
    j
}

/// Token-shaped secrets in runs of ≥ 16 base64 characters: bearer tokens,
/// JWTs, vendor prefixes, the codice fiscale and generic secrets. When
/// every base64 block lies in the first 64 (`!p.b64_far`), only the runs
/// around those blocks are read; otherwise every run is walked.
/// `quiet` spans (URL paths, public PEM blocks) get no entropy check.
pub(crate) fn scan_tokens(b: &[u8], p: &Profile, quiet: &[Range<usize>], out: &mut Vec<Finding>) {
    let n = b.len();
    // a generic secret mixes cases: without both in the text, none can be
    let mixed_case = p.has(UPPER) && p.has(LOWER);
    let mut q = 0; // index into `quiet`, which is sorted
    let mut done = 0; // runs before this offset are handled
    let run = |s: usize, e: usize, q: &mut usize, out: &mut Vec<Finding>| {
        if e - s >= 16 {
            token_run(b, s, e, mixed_case, quiet, q, out)
        } else {
            e
        }
    };
    if !p.b64_far {
        let mut mask = p.b64_blocks;
        while mask != 0 {
            let k = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let mut s = 8 * k;
            if s < done {
                continue;
            }
            while s > done && class(b[s - 1]) & B64 != 0 {
                s -= 1;
            }
            let e = run_end_in(b, 8 * k + 8, B64);
            done = run(s, e, &mut q, out);
        }
    } else {
        let mut i = 0;
        while i < n {
            if class(b[i]) & B64 == 0 {
                i += 1;
                continue;
            }
            let e = run_end_in(b, i, B64);
            i = run(i, e, &mut q, out);
        }
    }
}

/// One run `[s, e)` of ≥ 16 base64 characters. Returns where scanning resumes.
fn token_run(
    b: &[u8],
    s: usize,
    e: usize,
    mixed_case: bool,
    quiet: &[Range<usize>],
    q: &mut usize,
    out: &mut Vec<Finding>,
) -> usize {
    let n = b.len();
    if s >= 7 && b[s - 7..s].eq_ignore_ascii_case(b"bearer ") {
        if let Some(f) = bearer(b, s) {
            let end = f.range.end;
            out.push(f);
            return end;
        }
    }
    if b[s..].starts_with(b"eyJ") && e < n && b[e] == b'.' {
        if let Some(end) = jwt_end(b, s) {
            out.push(Finding {
                kind: Kind::Jwt,
                range: s..end,
            });
            return end;
        }
    }
    // Lower-case hex (digests, UUIDs without dashes): no vendor prefix,
    // codice fiscale or mixed-case secret can be spelled with it, and the
    // bearer and JWT shapes were checked above.
    if run_end_in(b, s, LHEX) >= e {
        return e;
    }
    let before = out.len();
    // vendor prefixes on the base64url words of the run
    let mut w = s;
    while w < e {
        let we = run_end_in(b, w, WORD).min(e);
        if we - w >= 16 {
            if let Some(kind) = prefix_kind(&b[w..we]) {
                out.push(Finding { kind, range: w..we });
            }
        }
        w = we + 1;
    }
    if out.len() > before || e - s < 20 || !mixed_case {
        return e;
    }
    while *q < quiet.len() && quiet[*q].end <= s {
        *q += 1;
    }
    if *q < quiet.len() && quiet[*q].start <= s {
        return e;
    }
    // trailing base64 padding belongs to the secret
    let mut pe = e;
    while pe < n && pe - e < 2 && b[pe] == b'=' {
        pe += 1;
    }
    if looks_random(&b[s..e]) {
        out.push(Finding {
            kind: Kind::Secret,
            range: s..pe,
        });
    }
    pe
}

/// `Bearer <token>`: the token (or a JWT) starting at `t`.
fn bearer(b: &[u8], t: usize) -> Option<Finding> {
    let mut e = t;
    while e < b.len() && (class(b[e]) & B64 != 0 || matches!(b[e], b'.' | b'~' | b'=')) {
        e += 1;
    }
    if e - t < 16 {
        return None;
    }
    let kind = if b[t..].starts_with(b"eyJ") && jwt_end(b, t) == Some(e) {
        Kind::Jwt
    } else {
        Kind::ApiKey
    };
    Some(Finding { kind, range: t..e })
}

/// A JWS compact serialization starting at `s`: three base64url segments,
/// a header that decodes to a JSON object naming `alg`. Returns its end.
fn jwt_end(b: &[u8], s: usize) -> Option<usize> {
    let h = run_end(b, s, WORD);
    if h >= b.len() || b[h] != b'.' {
        return None;
    }
    let p = run_end(b, h + 1, WORD);
    if p == h + 1 || p >= b.len() || b[p] != b'.' {
        return None;
    }
    let sig = run_end(b, p + 1, WORD);
    if sig < b.len() && (b[sig] == b'.' || is_alnum(b[sig])) {
        return None;
    }
    // headers are short; a long one is read up to 1 KiB
    let header = decode_b64(&b[s..h.min(s + 1024)]);
    let ok = header.first() == Some(&b'{') && header.windows(5).any(|w| w == b"\"alg\"");
    ok.then_some(sig)
}

const AWS_PREFIXES: [&[u8; 4]; 11] = [
    b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"AGPA", b"AIDA", b"AROA", b"AIPA", b"ANPA", b"ANVA",
    b"APKA",
];

/// Keys whose vendor prefix and length identify them.
fn prefix_kind(w: &[u8]) -> Option<Kind> {
    let n = w.len();
    let rest_all = |from: usize, f: fn(u8) -> bool| w[from..].iter().all(|&c| f(c));
    if n == 20 && AWS_PREFIXES.iter().any(|p| w.starts_with(*p)) && rest_all(4, is_upper_or_digit) {
        return Some(Kind::AwsKey);
    }
    if n == 39 && w.starts_with(b"AIza") {
        return Some(Kind::GcpKey);
    }
    if n >= 40
        && [b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_"]
            .iter()
            .any(|p| w.starts_with(*p))
        && rest_all(4, |c| c.is_ascii_alphanumeric())
    {
        return Some(Kind::GithubToken);
    }
    if n >= 50 && w.starts_with(b"github_pat_") {
        return Some(Kind::GithubToken);
    }
    if n >= 20
        && ((w.starts_with(b"xox")
            && matches!(w[3], b'a' | b'b' | b'p' | b'r' | b's' | b'e')
            && w[4] == b'-')
            || w.starts_with(b"xapp-"))
    {
        return Some(Kind::SlackToken);
    }
    if n >= 24
        && [b"sk_live_", b"sk_test_", b"rk_live_", b"rk_test_"]
            .iter()
            .any(|p| w.starts_with(*p))
    {
        return Some(Kind::StripeKey);
    }
    if n >= 30 && w.starts_with(b"whsec_") {
        return Some(Kind::StripeKey);
    }
    if n == 35 && w.starts_with(b"md5") && rest_all(3, |c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Some(Kind::PasswordHash);
    }
    if (n >= 26 && w.starts_with(b"glpat-"))
        || (n >= 40 && w.starts_with(b"npm_"))
        || (n >= 34 && w.starts_with(b"hf_"))
        || (n >= 40 && (w.starts_with(b"sk-proj-") || w.starts_with(b"sk-ant-")))
    {
        return Some(Kind::ApiKey);
    }
    if n == 16 && it_codice_fiscale_valid(w) {
        return Some(Kind::NationalId);
    }
    None
}

/// Generic high-entropy secret: 20–1024 characters mixing upper case, lower
/// case and digits (or ≥ 24 letters of both cases), switching character
/// class often (random strings do,
/// identifiers like `getUserAccountById2` do not), with a high Shannon
/// entropy, and not base64 of printable text. Hex strings (digests, UUIDs)
/// and single-case codes (ULIDs, product codes) never qualify.
pub(crate) fn looks_random(t: &[u8]) -> bool {
    let n = t.len();
    if !(20..=1024).contains(&n) {
        return false;
    }
    let mut seen = 0u16;
    let mut switches = 0usize;
    let mut prev = 0u16;
    for &c in t {
        let k = class(c) & (UPPER | LOWER | DIGIT);
        seen |= k;
        if k != prev {
            switches += 1;
        }
        prev = k;
    }
    // letters-only random strings switch case about every other character;
    // camelCase words far less often
    let mixed = match seen {
        x if x == UPPER | LOWER | DIGIT => switches * 100 >= n * 35,
        x if x == UPPER | LOWER => n >= 24 && switches * 100 >= n * 40,
        _ => false,
    };
    if !mixed {
        return false;
    }
    // Counted only now: most runs (hex digests, words, padding) are not
    // mixed-case and stop above, on the cheaper pass.
    let mut counts = [0u16; 128];
    for &c in t {
        counts[usize::from(c & 0x7f)] += 1;
    }
    let nf = n as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / nf;
            -p * p.log2()
        })
        .sum();
    // random base62 of length n has entropy close to log2(n) for small n
    let threshold = (nf.log2() - 0.75).min(4.2);
    if entropy < threshold {
        return false;
    }
    !base64_of_text(t)
}

/// Does `t` decode (standard or URL alphabet) to text: UTF-8 without
/// control characters other than tab and line breaks? Random key material
/// almost never does (24 random bytes are valid printable UTF-8 with
/// probability < 10⁻¹⁰).
fn base64_of_text(t: &[u8]) -> bool {
    if t.len() % 4 == 1 {
        return false;
    }
    let d = decode_b64(t);
    d.len() >= 8
        && std::str::from_utf8(&d).is_ok_and(|s| {
            s.chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
        })
}

fn b64_value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    }))
}

/// Lenient base64 decoding (either alphabet, no padding needed); stops at
/// the first character outside the alphabet.
pub(crate) fn decode_b64(t: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in t {
        let Some(v) = b64_value(c) else { break };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
