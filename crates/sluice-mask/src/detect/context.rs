//! Detectors that need context: PEM private keys, `key=value` / `"key":
//! "value"` secrets, URL credentials and webhooks, IPv6 addresses, and
//! password hashes (`$2b$…`, `$argon2id$…`, `pbkdf2_sha256$…`,
//! `SCRAM-SHA-256$…`).

use std::net::Ipv6Addr;
use std::ops::Range;
use std::str::FromStr;

use super::{class, find1, find2, is_alnum, is_word_char, Finding, HEX};
use crate::Kind;

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from >= hay.len() || needle.is_empty() {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let off = hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&c| c == first)?;
        i += off;
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// `needle` (which starts with `-----`) from `from`. A window whose fifth
/// byte is not `-` cannot hold a match starting in its first five bytes,
/// so most of the text is skipped five bytes at a time.
fn find_dashes(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let mut i = from;
    while i + needle.len() <= hay.len() {
        if hay[i + 4] != b'-' {
            i += 5;
            continue;
        }
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// PEM blocks. Private keys (`-----BEGIN [RSA |EC |OPENSSH |ENCRYPTED ]PRIVATE
/// KEY-----`, PGP private key blocks) are findings up to their END line, or
/// to the end of the text when it is missing (fail closed). Other blocks
/// (certificates, public keys) are returned as quiet spans: public, but
/// their base64 body must not be mistaken for generic secrets.
pub(crate) fn scan_pem(b: &[u8], out: &mut Vec<Finding>, quiet: &mut Vec<Range<usize>>) {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut i = 0;
    while let Some(s) = find_dashes(b, i, BEGIN) {
        let label_start = s + BEGIN.len();
        let window = &b[label_start..b.len().min(label_start + 48)];
        let Some(label_len) = window.windows(5).position(|w| w == b"-----") else {
            i = label_start;
            continue;
        };
        let label = &b[label_start..label_start + label_len];
        let header_end = label_start + label_len + 5;
        let end = match find(b, header_end, b"-----END ") {
            Some(e) => {
                let tail = &b[e + 9..b.len().min(e + 9 + 48)];
                match tail.windows(5).position(|w| w == b"-----") {
                    Some(t) => e + 9 + t + 5,
                    None => b.len(),
                }
            }
            None => b.len(),
        };
        if label.windows(11).any(|w| w == b"PRIVATE KEY") {
            out.push(Finding {
                kind: Kind::PrivateKey,
                range: s..end,
            });
        } else {
            quiet.push(s..end);
        }
        i = end;
    }
}

/// `key=value`, `key: value`, `"key": "value"` where the key names a
/// password or credential; URL credentials (`scheme://user:pass@host`),
/// Slack/Discord webhook URLs; IPv6 addresses. URL spans are added to
/// `quiet`: path segments are identifiers, not secrets.
pub(crate) fn scan_context(
    b: &[u8],
    colons: bool,
    out: &mut Vec<Finding>,
    quiet: &mut Vec<Range<usize>>,
) {
    let n = b.len();
    let mut i = 0;
    let mut ipv6_done = 0;
    let mut url_end_cache = 0;
    while i < n {
        let Some(p) = find2(b, i, b'=', b':') else {
            break;
        };
        i = p + 1;
        if b[p] == b':' {
            if b[p + 1..].starts_with(b"//") {
                i = url(b, p, out, quiet, &mut url_end_cache);
                continue;
            }
            let hexish = |c: u8| class(c) & HEX != 0 || c == b':';
            let near = (p > 0 && hexish(b[p - 1])) || (p + 1 < n && hexish(b[p + 1]));
            if colons && p >= ipv6_done && near {
                let (found, done) = ipv6(b, p, out);
                ipv6_done = done;
                if found {
                    i = done;
                    continue;
                }
            }
        }
        if let Some(end) = key_value(b, p, out) {
            i = end;
        }
    }
}

/// Normalised key (lower case, no `_ - . space`) → kind of its value.
fn key_kind(k: &[u8]) -> Option<Kind> {
    let ends = |list: &[&[u8]]| list.iter().any(|s| k.ends_with(s));
    // most keys are rejected by their last byte alone
    match k.last()? {
        b'd' => ends(&[b"password", b"passwd", b"wachtwoord", b"pwd"]).then_some(Kind::Password),
        b't' if k.ends_with(b"passwort") => Some(Kind::Password),
        b't' if k.ends_with(b"secret") => Some(Kind::Secret),
        b'e' if ends(&[b"passphrase", b"motdepasse"]) => Some(Kind::Password),
        b'e' if k.ends_with(b"signature") => Some(Kind::Secret),
        b'a' => ends(&[b"contrasena", b"contrasenya", b"senha"]).then_some(Kind::Password),
        b's' if k == b"pass" => Some(Kind::Password),
        b's' if k.ends_with(b"credentials") => Some(Kind::Secret),
        b'w' if k == b"pw" => Some(Kind::Password),
        b'y' if k.ends_with(b"secretaccesskey") => Some(Kind::AwsKey),
        b'y' if ends(&[b"accountkey", b"sharedaccesskey"]) => Some(Kind::AzureKey),
        b'y' if ends(&[b"apikey", b"accesskey", b"authkey"]) => Some(Kind::ApiKey),
        b'y' if ends(&[b"secretkey", b"privatekey"]) => Some(Kind::Secret),
        b'g' if k == b"sig" => Some(Kind::AzureKey),
        b'n' if ends(&[b"token", b"authorization"]) => Some(Kind::ApiKey),
        b'h' if k == b"auth" => Some(Kind::ApiKey),
        b'r' if k == b"bearer" => Some(Kind::ApiKey),
        b'l' if k == b"credential" => Some(Kind::ApiKey),
        _ => None,
    }
}

/// The secret value after the separator at `p`, if the key before it names
/// a credential. Returns where scanning resumes.
fn key_value(b: &[u8], p: usize, out: &mut Vec<Finding>) -> Option<usize> {
    // key, backwards: optional spaces and one closing quote, then ≤ 48 key bytes
    let mut k = p;
    while k > 0 && p - k < 3 && b[k - 1] == b' ' {
        k -= 1;
    }
    if k > 0 && matches!(b[k - 1], b'"' | b'\'') {
        k -= 1;
    }
    let key_end = k;
    // every key of interest ends in one of these letters (see `key_kind`)
    if k == 0
        || !matches!(
            b[k - 1] | 0x20,
            b'd' | b't' | b'e' | b'a' | b's' | b'w' | b'y' | b'g' | b'n' | b'h' | b'r' | b'l'
        )
    {
        return None;
    }
    while k > 0 && key_end - k < 48 && (is_word_char(b[k - 1]) || matches!(b[k - 1], b'-' | b'.')) {
        k -= 1;
    }
    if k == key_end || (k > 0 && is_word_char(b[k - 1])) {
        return None;
    }
    let mut norm = [0u8; 48];
    let mut len = 0;
    for &c in &b[k..key_end] {
        if is_alnum(c) {
            norm[len] = c.to_ascii_lowercase();
            len += 1;
        }
    }
    let kind = key_kind(&norm[..len])?;
    // value, forwards
    let n = b.len();
    let mut v = p + 1;
    if v < n && b[v] == b'=' {
        v += 1; // `==`
    }
    while v < n && v - p < 6 && b[v] == b' ' {
        v += 1;
    }
    if v >= n {
        return None;
    }
    let (vs, ve, resume) = if matches!(b[v], b'"' | b'\'') {
        let q = b[v];
        let mut j = v + 1;
        let limit = n.min(v + 1 + 8192);
        while j < limit && b[j] != q && b[j] != b'\n' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        if j >= limit || b[j] != q {
            return None;
        }
        (v + 1, j, j + 1)
    } else {
        let mut j = v;
        while j < n
            && !matches!(
                b[j],
                b' ' | b'\t'
                    | b'\n'
                    | b'\r'
                    | b'&'
                    | b';'
                    | b','
                    | b'"'
                    | b'\''
                    | b'}'
                    | b')'
                    | b']'
                    | b'<'
                    | b'>'
                    | b'#'
            )
        {
            j += 1;
        }
        (v, j, j)
    };
    let value = &b[vs..ve];
    if !value_ok(kind, value) {
        return Some(resume.max(p + 1));
    }
    out.push(Finding {
        kind,
        range: vs..ve,
    });
    Some(resume)
}

fn value_ok(kind: Kind, v: &[u8]) -> bool {
    if v.is_empty() || v.iter().all(|&c| c == b'*' || c == b'x' || c == b'X') {
        return false;
    }
    let lower: Vec<u8> = v.iter().take(12).map(u8::to_ascii_lowercase).collect();
    if matches!(
        lower.as_slice(),
        b"null" | b"none" | b"true" | b"false" | b"undefined" | b"nil" | b"[redacted]"
    ) || v.starts_with(b"${")
        || v.starts_with(b"{{")
        || v.starts_with(b"%(")
        || v.starts_with(b"{")
        || v.starts_with(b"[")
        || v.starts_with(b"<")
    {
        return false;
    }
    kind == Kind::Password || v.len() >= 8
}

/// A URL at `scheme://`: credentials in the authority, webhook secrets in
/// the path. Returns where scanning resumes (the end of the authority, so
/// query-string `key=value` pairs are still examined).
fn url(
    b: &[u8],
    p: usize,
    out: &mut Vec<Finding>,
    quiet: &mut Vec<Range<usize>>,
    url_end_cache: &mut usize,
) -> usize {
    let n = b.len();
    let a = p + 3;
    let stop = |c: u8| {
        matches!(
            c,
            b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'\'' | b'<' | b'>' | b'`'
        )
    };
    let mut auth_end = a;
    while auth_end < n && !stop(b[auth_end]) && !matches!(b[auth_end], b'/' | b'?' | b'#') {
        auth_end += 1;
    }
    // a URL nested in another one's query ends where the outer one does:
    // reuse that end instead of reading the same bytes again
    let mut url_end = auth_end.max(*url_end_cache);
    while url_end < n && !stop(b[url_end]) {
        url_end += 1;
    }
    *url_end_cache = url_end;
    quiet.push(a..url_end);
    let authority = &b[a..auth_end];
    let mut host = authority;
    if let Some(at) = authority.iter().rposition(|&c| c == b'@') {
        let userinfo = &authority[..at];
        if let Some(colon) = userinfo.iter().position(|&c| c == b':') {
            if colon + 1 < at {
                out.push(Finding {
                    kind: Kind::Password,
                    range: a + colon + 1..a + at,
                });
            }
        }
        host = &authority[at + 1..];
    }
    let path = &b[auth_end..url_end];
    let webhook = |h: &[u8], prefix: &[u8], kind: Kind, out: &mut Vec<Finding>| {
        if host.eq_ignore_ascii_case(h) && path.starts_with(prefix) && path.len() > prefix.len() + 8
        {
            out.push(Finding {
                kind,
                range: auth_end + prefix.len()..url_end,
            });
        }
    };
    webhook(b"hooks.slack.com", b"/services/", Kind::SlackToken, out);
    webhook(b"hooks.slack.com", b"/workflows/", Kind::SlackToken, out);
    webhook(b"discord.com", b"/api/webhooks/", Kind::ApiKey, out);
    auth_end.max(p + 1)
}

/// An IPv6 address around the colon at `p`. Returns (found, scan-resume).
fn ipv6(b: &[u8], p: usize, out: &mut Vec<Finding>) -> (bool, usize) {
    let in_run = |c: u8| class(c) & HEX != 0 || c == b':' || c == b'.';
    let mut s = p;
    while s > 0 && p - s < 40 && in_run(b[s - 1]) {
        s -= 1;
    }
    let mut e = p + 1;
    while e < b.len() && in_run(b[e]) {
        e += 1;
    }
    let resume = e;
    while e > s && b[e - 1] == b'.' {
        e -= 1;
    }
    let text = &b[s..e];
    let bounded = (s == 0 || !is_word_char(b[s - 1])) && (e >= b.len() || !is_word_char(b[e]));
    if !bounded || !(6..=45).contains(&text.len()) {
        return (false, resume);
    }
    let colons = text.iter().filter(|&&c| c == b':').count();
    let hex = text.iter().filter(|&&c| class(c) & HEX != 0).count();
    let compressed = text.windows(2).any(|w| w == b"::");
    if hex < 3 || !(compressed || colons == 7) {
        return (false, resume);
    }
    let ok = std::str::from_utf8(text)
        .ok()
        .and_then(|t| Ipv6Addr::from_str(t).ok())
        .is_some();
    if ok {
        out.push(Finding {
            kind: Kind::IpAddress,
            range: s..e,
        });
    }
    (ok, resume)
}

fn is_hash_char(c: u8) -> bool {
    is_alnum(c)
        || matches!(
            c,
            b'.' | b'/' | b'+' | b'=' | b',' | b':' | b'$' | b'_' | b'-'
        )
}

/// Password hashes. The text is cut into runs of hash characters that
/// contain a `$`; each run is tried at its first `$` (modular crypt format)
/// and at the word before it (Django `pbkdf2_sha256$…`, `SCRAM-SHA-256$…`),
/// so each run is parsed a bounded number of times.
pub(crate) fn scan_hashes(b: &[u8], out: &mut Vec<Finding>) {
    let n = b.len();
    let mut i = 0;
    let mut run_end = 0; // end of the last run read, reused while inside it
    while i < n {
        let Some(f) = find1(b, i, b'$') else {
            break;
        };
        // start and end of the hash-character run around this `$`
        let mut rs = f;
        while rs > i && is_hash_char(b[rs - 1]) {
            rs -= 1;
        }
        let mut re = if f < run_end { run_end } else { f };
        while re < n && is_hash_char(b[re]) {
            re += 1;
        }
        run_end = re;
        // the alphanumeric word right before the `$`
        let mut w = f;
        while w > rs && (is_word_char(b[w - 1]) || b[w - 1] == b'-') {
            w -= 1;
        }
        let found = if w < f {
            word_hash(&b[w..re]).map(|len| w..w + len)
        } else {
            None
        }
        .or_else(|| crypt_hash(&b[f..re]).map(|len| f..f + len));
        match found {
            Some(r) => {
                i = r.end;
                out.push(Finding {
                    kind: Kind::PasswordHash,
                    range: r,
                });
            }
            None => i = re.max(f + 1),
        }
    }
}

fn is_b64ish(c: u8) -> bool {
    is_alnum(c) || matches!(c, b'.' | b'/' | b'+' | b'=')
}

fn field_len(t: &[u8], ok: fn(u8) -> bool) -> usize {
    t.iter().take_while(|&&c| ok(c)).count()
}

/// Modular crypt format at `t[0] == '$'`. Returns the hash length.
fn crypt_hash(t: &[u8]) -> Option<usize> {
    let id_len = field_len(&t[1..], |c| is_alnum(c) || c == b'-');
    if id_len == 0 || t.get(1 + id_len) != Some(&b'$') {
        return None;
    }
    let id = &t[1..1 + id_len];
    let rest = &t[2 + id_len..];
    let body = 2 + id_len;
    match id {
        b"2a" | b"2b" | b"2y" | b"2x" => {
            // $2b$12$ + 22 salt + 31 hash
            let ok = rest.len() >= 56
                && rest[..2].iter().all(u8::is_ascii_digit)
                && rest[2] == b'$'
                && rest[3..56]
                    .iter()
                    .all(|&c| is_alnum(c) || c == b'.' || c == b'/');
            let complete = rest.get(56).is_none_or(|&c| !is_b64ish(c));
            (ok && complete).then_some(body + 56)
        }
        b"1" | b"apr1" | b"md5" | b"5" | b"6" | b"7" | b"y" | b"gy" | b"argon2i" | b"argon2d"
        | b"argon2id" | b"scrypt" | b"pbkdf2" | b"pbkdf2-sha1" | b"pbkdf2-sha256"
        | b"pbkdf2-sha512" | b"bcrypt-sha256" | b"sha1" | b"sha256" | b"sha512" => {
            fields_hash(rest, 2).map(|l| body + l)
        }
        _ => None,
    }
}

/// `$`-separated fields after an algorithm id: at least `min_fields`
/// fields, the last (the hash) at least 16 base64 characters.
fn fields_hash(rest: &[u8], min_fields: usize) -> Option<usize> {
    let len = field_len(rest, |c| {
        is_b64ish(c) || matches!(c, b'$' | b',' | b'-' | b'_')
    });
    let run = &rest[..len];
    let fields = run.split(|&c| c == b'$').count();
    let last = run.rsplit(|&c| c == b'$').next().unwrap_or(&[]);
    (fields >= min_fields
        && last.len() >= 16
        && last.iter().all(|&c| is_b64ish(c) || c == b'-' || c == b'_'))
    .then_some(len)
}

/// `algorithm$…` hashes (Django, passlib, PostgreSQL SCRAM verifiers).
fn word_hash(t: &[u8]) -> Option<usize> {
    let w = field_len(t, |c| is_word_char(c) || c == b'-');
    let algo = &t[..w];
    let rest = &t[w + 1..];
    let body = w + 1;
    if algo.eq_ignore_ascii_case(b"SCRAM-SHA-256") {
        // iterations:salt$StoredKey:ServerKey
        let len = field_len(rest, |c| is_b64ish(c) || c == b':' || c == b'$');
        let r = &rest[..len];
        let dollar = r.iter().position(|&c| c == b'$')?;
        let ok =
            r[..dollar].contains(&b':') && r[dollar + 1..].contains(&b':') && len - dollar > 20;
        return ok.then_some(body + len);
    }
    match algo {
        b"pbkdf2_sha256" | b"pbkdf2_sha1" | b"argon2" | b"bcrypt" | b"bcrypt_sha256"
        | b"scrypt" | b"sha1" | b"md5" | b"unsalted_sha1" | b"crypt" => {
            fields_hash(rest, 2).map(|l| body + l)
        }
        _ => None,
    }
}
