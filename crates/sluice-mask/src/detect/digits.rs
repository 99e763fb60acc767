//! Numbers: payment cards, US SSNs, phone numbers, IPv4 addresses and the
//! numeric national ids (French NIR, Spanish DNI).
//!
//! A *cluster* is a run of digit groups joined by short separators
//! (`415-555-2671`, `+44 (0)20 7946 0958`, `4111 1111 1111 1111`,
//! `10.0.0.1`). Windows of a cluster that start and end at a single space
//! are tried longest first, so `card 4111 1111 1111 1111 2x` still finds the
//! card. A cluster holds at most [`MAX_GROUPS`] groups, so the window search
//! is bounded per cluster and the scan stays linear.

use super::checks::{card_valid, es_dni_valid, fr_nir_valid, ssn_valid};
use super::words::scan_iban_at;
use super::{find_digit, is_word_char, run_end_in, Finding, IDENT};
use crate::Kind;

const MAX_GROUPS: usize = 12;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sep {
    None,
    Space,
    Dash,
    Dot,
    Slash,
    /// Contains `(` or `)`: `(415) 555`, `+44 (0)20`.
    Paren,
    /// Two different plain separators (`- `).
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Group {
    s: usize,
    e: usize,
}

impl Group {
    fn len(&self) -> usize {
        self.e - self.s
    }
}

struct Cluster {
    start: usize,
    groups: [Group; MAX_GROUPS],
    /// `seps[k]` is the separator before group `k` (`seps[0]` is `None`).
    seps: [Sep; MAX_GROUPS],
    n: usize,
    plus: bool,
    paren_first: bool,
}

fn sep_class(s: &[u8]) -> Option<Sep> {
    match s {
        [b' '] => Some(Sep::Space),
        [b'-'] => Some(Sep::Dash),
        [b'.'] => Some(Sep::Dot),
        [b'/'] => Some(Sep::Slash),
        [a, b] if a == b => None,
        _ if s.contains(&b'(') || s.contains(&b')') => Some(Sep::Paren),
        [_, _] => Some(Sep::Other),
        _ => None,
    }
}

fn is_sep_char(c: u8) -> bool {
    matches!(c, b' ' | b'-' | b'.' | b'/' | b'(' | b')')
}

/// Does a cluster go on after the digit run ending at `e` (one or two
/// separator bytes, then a digit)?
fn continues(b: &[u8], e: usize) -> bool {
    match (b.get(e), b.get(e + 1), b.get(e + 2)) {
        (Some(&s), Some(d), _) if is_sep_char(s) && d.is_ascii_digit() => true,
        (Some(&s), Some(&t), Some(d)) => is_sep_char(s) && is_sep_char(t) && d.is_ascii_digit(),
        _ => false,
    }
}

fn digit_run_end(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    j
}

fn parse_cluster(b: &[u8], p: usize) -> Cluster {
    let mut c = Cluster {
        start: p,
        groups: [Group { s: p, e: p }; MAX_GROUPS],
        seps: [Sep::None; MAX_GROUPS],
        n: 0,
        plus: false,
        paren_first: false,
    };
    if p > 0 && b[p - 1] == b'+' {
        c.start = p - 1;
        c.plus = true;
    } else if p > 0 && b[p - 1] == b'(' {
        c.start = p - 1;
        c.paren_first = true;
    }
    let mut j = p;
    loop {
        let e = digit_run_end(b, j);
        c.groups[c.n] = Group { s: j, e };
        c.n += 1;
        if c.n == MAX_GROUPS {
            break;
        }
        let mut k = e;
        while k < b.len() && k - e < 2 && is_sep_char(b[k]) {
            k += 1;
        }
        if k == e || k >= b.len() || !b[k].is_ascii_digit() {
            break;
        }
        match sep_class(&b[e..k]) {
            Some(s) => c.seps[c.n] = s,
            None => break,
        }
        j = k;
    }
    c
}

/// The byte before a number must not glue it to a word (`SKU-4821`,
/// `v1.2`, `abc123`). A comma does not glue: `(42,4111…)` is a composite.
fn left_ok(b: &[u8], start: usize) -> bool {
    if start == 0 {
        return true;
    }
    let c = b[start - 1];
    if is_word_char(c) {
        return false;
    }
    if matches!(c, b'.' | b'-' | b'/' | b'+') && start >= 2 && is_word_char(b[start - 2]) {
        return false;
    }
    true
}

/// The byte after a number must not glue it to a word.
fn right_ok(b: &[u8], e: usize) -> bool {
    if e >= b.len() {
        return true;
    }
    let c = b[e];
    if is_word_char(c) || c == b'@' {
        return false;
    }
    if matches!(c, b'-' | b'/') && e + 1 < b.len() && is_word_char(b[e + 1]) {
        return false;
    }
    true
}

/// `x123` / `ext123` after a phone number: the end of the extension.
fn extension_end(b: &[u8], e: usize) -> Option<usize> {
    let rest = &b[e..];
    let skip = if rest.starts_with(b"x") {
        1
    } else if rest.starts_with(b"ext") {
        3
    } else {
        return None;
    };
    let d = e + skip;
    let end = digit_run_end(b, d);
    ((1..=6).contains(&(end - d)) && right_ok(b, end)).then_some(end)
}

pub(crate) fn scan_digits(b: &[u8], out: &mut Vec<Finding>) {
    let n = b.len();
    let mut i = 0;
    while i < n {
        let Some(p) = find_digit(b, i) else {
            break;
        };
        i = p;
        if p > 0 && is_word_char(b[p - 1]) {
            // an IBAN: two capitals, then the check digits
            if p >= 2 && b[p - 1].is_ascii_uppercase() && b[p - 2].is_ascii_uppercase() {
                if let Some(end) = scan_iban_at(b, p - 2, out) {
                    i = end;
                    continue;
                }
            }
            // digits inside a word: a NIE (X1234567L) or nothing
            if p >= 1 && matches!(b[p - 1], b'X' | b'Y' | b'Z') && word_id(b, p - 1, out) {
                i = p + 8;
                continue;
            }
            i = run_end_in(b, i, IDENT);
            continue;
        }
        // fast path: a short number on its own (`200`, `12345`, `10:30`)
        // can be nothing here; skip it without building a cluster
        let run = digit_run_end(b, p);
        if run - p < 8 && !continues(b, run) && !(run < n && b[run].is_ascii_uppercase()) {
            i = run;
            continue;
        }
        let c = parse_cluster(b, p);
        let end = c.groups[c.n - 1].e;
        // nothing here has fewer than 8 digits, except a dotted IPv4 address
        let total: usize = c.groups[..c.n].iter().map(Group::len).sum();
        let worth = total >= 8 || (c.n >= 4 && total >= 4);
        if left_ok(b, c.start) {
            // ids mixing digits and a letter (DNI, Corsican NIR) first
            let letter_next = end < n && b[end].is_ascii_uppercase();
            if !(c.n == 1 && letter_next && word_id(b, p, out)) && worth {
                eval_cluster(b, &c, out);
            }
        }
        i = end.max(p + 1);
    }
}

/// A Spanish DNI/NIE (`12345678Z`, `X1234567L`) or a French NIR of a
/// person born in Corsica (`1 37 08 2B 033 993 64`, compact) starting at `s`.
fn word_id(b: &[u8], s: usize, out: &mut Vec<Finding>) -> bool {
    if s > 0 && is_word_char(b[s - 1]) && !matches!(b[s], b'X' | b'Y' | b'Z') {
        return false;
    }
    for len in [9, 15] {
        let e = s + len;
        if e > b.len() || !right_ok(b, e) {
            continue;
        }
        let ok = match len {
            9 => es_dni_valid(&b[s..e]),
            _ => fr_nir_valid(&b[s..e]),
        };
        if ok {
            out.push(Finding {
                kind: Kind::NationalId,
                range: s..e,
            });
            return true;
        }
    }
    false
}

fn eval_cluster(b: &[u8], c: &Cluster, out: &mut Vec<Finding>) {
    // windows start and end at single-space separators
    let mut a = 0;
    while a < c.n {
        let mut found = None;
        let mut z = c.n;
        while z > a {
            let last = z - 1;
            if last == c.n - 1 || c.seps[last + 1] == Sep::Space {
                if let Some(f) = eval_window(b, c, a, last) {
                    found = Some((f, last));
                    break;
                }
            }
            z -= 1;
        }
        match found {
            Some((f, last)) => {
                out.push(f);
                a = last + 1;
            }
            None => a += 1,
        }
        while a < c.n && c.seps[a] != Sep::Space {
            a += 1;
        }
    }
}

fn eval_window(b: &[u8], c: &Cluster, a: usize, z: usize) -> Option<Finding> {
    let groups = &c.groups[a..=z];
    let seps = &c.seps[a + 1..=z];
    let lens_buf: [usize; MAX_GROUPS] = {
        let mut l = [0; MAX_GROUPS];
        for (k, g) in groups.iter().enumerate() {
            l[k] = g.len();
        }
        l
    };
    let lens = &lens_buf[..groups.len()];
    let total: usize = lens.iter().sum();
    let plus = a == 0 && c.plus;
    let paren = a == 0 && c.paren_first;
    let start = if a == 0 { c.start } else { groups[0].s };
    let mut end = groups[groups.len() - 1].e;
    let at_end = z == c.n - 1;
    let mut ext = None;
    if at_end && !right_ok(b, end) {
        ext = Some(extension_end(b, end)?);
    }
    let mut digits = [0u8; 19];
    let mut nd = 0;
    if total <= 19 {
        for g in groups {
            for &d in &b[g.s..g.e] {
                digits[nd] = d;
                nd += 1;
            }
        }
    }
    let digits = &digits[..nd];
    let uniform = |s: Sep| seps.iter().all(|&x| x == s);
    let found = |kind, range| Some(Finding { kind, range });

    if ext.is_none() && !plus {
        // a `(` belongs to a phone number (`(415) 555-2671`) but is mere
        // punctuation before a card, an SSN or an address: `(4111…)`
        let start = groups[0].s;
        // IPv4: four dotted octets
        if lens.len() == 4
            && uniform(Sep::Dot)
            && groups.iter().all(|g| octet_ok(&b[g.s..g.e]))
            && (start == 0 || b[start - 1] != b'.')
            && !after_version_word(b, start)
        {
            return found(Kind::IpAddress, start..end);
        }
        // French NIR, bare or spaced; before cards: its key, sex and month
        // rules are stricter than Luhn on a legacy 15-digit JCB prefix (2131…)
        if total == 15 && (lens.len() == 1 || uniform(Sep::Space)) && fr_nir_valid(digits) {
            return found(Kind::NationalId, start..end);
        }
        // payment card
        if (13..=19).contains(&total)
            && (lens.len() == 1 || uniform(Sep::Space) || uniform(Sep::Dash))
            && card_shape(lens)
            && card_valid(digits)
        {
            return found(Kind::Card, start..end);
        }
        // US SSN
        if lens == [3, 2, 4]
            && (uniform(Sep::Dash) || uniform(Sep::Space))
            && ssn_valid(
                &b[groups[0].s..groups[0].e],
                &b[groups[1].s..groups[1].e],
                &b[groups[2].s..groups[2].e],
            )
        {
            return found(Kind::Ssn, start..end);
        }
    }
    if is_phone(b, groups, lens, seps, total, plus, paren) {
        if let Some(e) = ext {
            end = e;
        }
        return found(Kind::Phone, start..end);
    }
    None
}

/// `rv:1.9.2.20`, `version: 1.2.3.4`: a dotted quad after a version label.
fn after_version_word(b: &[u8], start: usize) -> bool {
    let mut e = start;
    while e > 0 && b[e - 1] == b' ' && start - e < 2 {
        e -= 1;
    }
    if e == 0 || b[e - 1] != b':' {
        return false;
    }
    let mut s = e - 1;
    while s > 0 && e - 1 - s < 8 && b[s - 1].is_ascii_alphabetic() {
        s -= 1;
    }
    let word = &b[s..e - 1];
    ["rv", "v", "ver", "version", "build"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
}

fn octet_ok(g: &[u8]) -> bool {
    match g {
        [_] => true,
        [b'0', ..] => false,
        [_, _] => true,
        [a, b, c] => {
            (u32::from(a - b'0') * 100 + u32::from(b - b'0') * 10 + u32::from(c - b'0')) <= 255
        }
        _ => false,
    }
}

fn card_shape(lens: &[usize]) -> bool {
    match lens {
        [_] => true,
        [4, 6, 5] | [4, 6, 4] => true,
        [init @ .., last] => init.iter().all(|&l| l == 4) && (1..=4).contains(last),
        [] => false,
    }
}

/// `2024-01-02`, `01.02.2024`, `1/2/24`, optionally followed by a time group.
fn date_like(b: &[u8], groups: &[Group], lens: &[usize], seps: &[Sep]) -> bool {
    if lens.len() < 3 || seps[0] != seps[1] || !matches!(seps[0], Sep::Dash | Sep::Dot | Sep::Slash)
    {
        return false;
    }
    if lens.len() > 3 && seps[2] != Sep::Space {
        return false;
    }
    let num = |g: &Group| {
        b[g.s..g.e].iter().fold(0u32, |acc, d| {
            acc.saturating_mul(10).saturating_add(u32::from(d - b'0'))
        })
    };
    let (x, y, z) = (num(&groups[0]), num(&groups[1]), num(&groups[2]));
    let day_month = |d: u32, m: u32| (1..=31).contains(&d) && (1..=12).contains(&m);
    match (lens[0], lens[1], lens[2]) {
        (4, 1..=2, 1..=2) => day_month(z, y) || day_month(y, z),
        (1..=2, 1..=2, 2 | 4) => day_month(x, y) || day_month(y, x),
        _ => false,
    }
}

fn is_phone(
    b: &[u8],
    groups: &[Group],
    lens: &[usize],
    seps: &[Sep],
    total: usize,
    plus: bool,
    paren: bool,
) -> bool {
    if seps.contains(&Sep::Slash) && !plus {
        return false;
    }
    if plus {
        // E.164: up to 15 digits, plus a national trunk "(0)"
        let trunk = groups.iter().any(|g| g.len() == 1 && b[g.s] == b'0');
        return (8..=15 + usize::from(trunk)).contains(&total);
    }
    if date_like(b, groups, lens, seps) {
        return false;
    }
    let digit = |k: usize| b[groups[0].s + k];
    let d0 = digit(0);
    let d1 = if lens[0] > 1 {
        digit(1)
    } else if groups.len() > 1 {
        b[groups[1].s]
    } else {
        return false;
    };
    let separated = lens.len() > 1 || paren;
    if d0 == b'0' {
        if d1 == b'0' {
            // international prefix 00 + country code
            // only with separators: bare 00… is a zero-padded id or a barcode
            let d2 = if lens[0] > 2 { digit(2) } else { b'0' };
            return separated && d2 != b'0' && (11..=17).contains(&total);
        }
        // national trunk prefix 0: UK, DE, FR, NL, IT, ES landlines …
        let min = if separated { 9 } else { 10 };
        return (min..=12).contains(&total);
    }
    let first_of = |k: usize| b[groups[k].s];
    // NANP (also Italian mobiles 3xx xxx xxxx)
    if lens == [3, 3, 4] && (b'2'..=b'9').contains(&d0) && (b'2'..=b'9').contains(&first_of(1)) {
        return true;
    }
    if lens == [1, 3, 3, 4] && d0 == b'1' && (b'2'..=b'9').contains(&first_of(1)) {
        return true;
    }
    // Spanish 9-digit numbers, grouped
    if (lens == [3, 3, 3] || lens == [3, 2, 2, 2])
        && (b'6'..=b'9').contains(&d0)
        && seps.iter().all(|&s| s == Sep::Space)
    {
        return true;
    }
    false
}
