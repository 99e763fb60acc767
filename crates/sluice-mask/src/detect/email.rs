//! E-mail addresses, anchored on `@`.
//!
//! From each `@` the local part is read backwards (≤ 64 bytes, stops at the
//! previous `@`) and the domain forwards (≤ 253 bytes, stops at the next
//! `@`), so each byte is read at most twice.

use super::{find1, is_alnum, Finding};
use crate::Kind;

fn is_local(c: u8) -> bool {
    is_alnum(c) || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

fn is_domain(c: u8) -> bool {
    is_alnum(c) || matches!(c, b'.' | b'-')
}

pub(crate) fn scan_email(b: &[u8], out: &mut Vec<Finding>) {
    let n = b.len();
    let mut i = 0;
    while i < n {
        let Some(at) = find1(b, i, b'@') else {
            break;
        };
        i = at + 1;
        // local part, backwards
        let mut s = at;
        while s > 0 && at - s < 64 && is_local(b[s - 1]) {
            s -= 1;
        }
        if s > 0 && is_local(b[s - 1]) {
            continue; // longer than 64: not an address
        }
        // an apostrophe or dot can open a quotation, not an address
        while s < at && matches!(b[s], b'.' | b'\'') {
            s += 1;
        }
        if s == at || b[at - 1] == b'.' {
            continue;
        }
        // `scheme://user:pass@host` and `//user@host` are URL credentials
        if s > 0 && matches!(b[s - 1], b':' | b'/') && !b[..s].ends_with(b"mailto:") {
            continue;
        }
        // domain, forwards
        let mut e = at + 1;
        while e < n && e - at <= 253 && is_domain(b[e]) {
            e += 1;
        }
        while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if !domain_ok(&b[at + 1..e]) || b[s..at].windows(2).any(|w| w == b"..") {
            continue;
        }
        out.push(Finding {
            kind: Kind::Email,
            range: s..e,
        });
        i = e;
    }
}

fn domain_ok(d: &[u8]) -> bool {
    if d.is_empty() || d.len() > 253 {
        return false;
    }
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in d.split(|&c| c == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
        {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}
