//! Strategies applied to values: redaction, partial masking, keyed tokens,
//! format-preserving substitution; masking of findings inside longer text.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, MaskingConfig, Rules};
use crate::detect::{scan_into, Finding};
use crate::report::MaskReport;
use crate::{Kind, Strategy};

/// What a redacted value (or a redacted part of a text) becomes.
pub const REDACTED: &str = "[REDACTED]";

/// Applies masking strategies with a per-deployment key.
///
/// Cheap to clone (the configuration is shared); create one per process and
/// hand clones to sessions. Tokens are HMAC-SHA256 over (kind, normalized
/// value) with the 32-byte key, so equal inputs give equal tokens under one
/// key and unrelated tokens under another.
#[derive(Clone)]
pub struct Masker {
    mac: Hmac<Sha256>,
    pub(crate) rules: Arc<Rules>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print the key
        f.debug_struct("Masker")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// A masker with the built-in defaults (automatic masking on, default
    /// strategies, no column overrides).
    pub fn new(key: &[u8; 32]) -> Masker {
        Masker::build(key, Rules::default())
    }

    /// A masker for a `[masking]` configuration. Fails on an invalid column
    /// rule key (it must be `table.column` or `schema.table.column`).
    pub fn with_config(key: &[u8; 32], config: &MaskingConfig) -> Result<Masker, ConfigError> {
        Ok(Masker::build(key, Rules::from_config(config)?))
    }

    fn build(key: &[u8; 32], rules: Rules) -> Masker {
        // HMAC accepts keys of any length; 32 bytes cannot fail
        let mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        Masker {
            mac,
            rules: Arc::new(rules),
        }
    }

    /// The strategy configured for a kind.
    pub fn strategy_for(&self, kind: Kind) -> Strategy {
        self.rules.strategies[kind.index()]
    }

    /// Mask a value known to be of `kind` with the configured strategy. A
    /// `null` strategy gives [`REDACTED`] here (a string cannot be NULL; see
    /// [`Masker::mask_with`]).
    pub fn mask(&self, kind: Kind, value: &str) -> String {
        self.mask_with(kind, self.strategy_for(kind), value)
            .unwrap_or_else(|| REDACTED.to_string())
    }

    /// Mask a value with an explicit strategy; `None` means SQL NULL.
    pub fn mask_with(&self, kind: Kind, strategy: Strategy, value: &str) -> Option<String> {
        Some(match strategy {
            Strategy::Redact => REDACTED.to_string(),
            Strategy::Null => return None,
            Strategy::Partial => partial(kind, value),
            Strategy::Token => self.token(kind, value),
            Strategy::FormatPreserving => self.format_preserving(kind, value),
        })
    }

    /// Replace every finding of [`crate::scan`] inside `text`. `None` when
    /// nothing was found (the caller keeps the original). The kinds found
    /// are returned in text order, one per finding. A masked part of a JSON
    /// document stays a valid JSON string: a finding whose bytes contain a
    /// quote or backslash, or whose replacement would, is redacted instead.
    pub fn mask_in_text(&self, text: &str) -> Option<(String, Vec<Kind>)> {
        let mut findings = Vec::new();
        scan_into(text.as_bytes(), &mut findings);
        if findings.is_empty() {
            return None;
        }
        let out = self.replace_findings(text.as_bytes(), &findings);
        let kinds = findings.iter().map(|f| f.kind).collect();
        // replacements are ASCII or copies of whole UTF-8 characters
        Some((String::from_utf8_lossy(&out).into_owned(), kinds))
    }

    /// [`Masker::mask_in_text`] over bytes, for the proxy's hot path:
    /// `findings` is scratch space reused between calls; kinds go to
    /// `report`. `None` when nothing was found.
    pub fn mask_bytes_in_text(
        &self,
        text: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
    ) -> Option<Vec<u8>> {
        scan_into(text, findings);
        self.replace_all(text, findings, report)
    }

    /// The text with every finding masked (its kinds counted in `report`);
    /// `None` when there is none.
    fn replace_all(
        &self,
        text: &[u8],
        findings: &[Finding],
        report: &mut MaskReport,
    ) -> Option<Vec<u8>> {
        if findings.is_empty() {
            return None;
        }
        for f in findings {
            report.record(f.kind);
        }
        Some(self.replace_findings(text, findings))
    }

    /// Would [`Masker::mask_json_text`] change this JSON document?
    /// `findings` is scratch space.
    pub fn json_has_findings(text: &[u8], findings: &mut Vec<Finding>) -> bool {
        Self::json_has_findings_in(b"", text, findings)
    }

    /// [`Masker::json_has_findings`] for a document standing for a row of
    /// table `root` (the context of its top-level keys).
    pub fn json_has_findings_in(root: &[u8], text: &[u8], findings: &mut Vec<Finding>) -> bool {
        scan_into(text, findings);
        if findings.is_empty() {
            crate::json_keys::key_findings(text, root, findings);
        }
        !findings.is_empty()
    }

    /// [`Masker::mask_bytes_in_text`] for a JSON document: also every
    /// string under a key that names sensitive data (see `json_keys`).
    pub fn mask_json_text(
        &self,
        text: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
    ) -> Option<Vec<u8>> {
        self.mask_json_text_in(b"", text, findings, report)
    }

    /// [`Masker::mask_json_text`] for a document standing for a row of
    /// table `root` (the context of its top-level keys).
    pub fn mask_json_text_in(
        &self,
        root: &[u8],
        text: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
    ) -> Option<Vec<u8>> {
        scan_into(text, findings);
        crate::json_keys::key_findings(text, root, findings);
        crate::detect::resolve(findings);
        self.replace_all(text, findings, report)
    }

    fn replace_findings(&self, text: &[u8], findings: &[Finding]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 16);
        let mut pos = 0;
        // are we inside a double-quoted string (JSON, array or composite
        // literal)? tracked incrementally, so the whole pass stays linear
        let mut quotes = QuoteState::default();
        for f in findings {
            quotes.advance(&text[pos..f.range.start]);
            out.extend_from_slice(&text[pos..f.range.start]);
            let original = &text[f.range.clone()];
            let s = String::from_utf8_lossy(original);
            let strategy = self.strategy_for(f.kind);
            let replacement = self
                .mask_with(f.kind, strategy, &s)
                .filter(|r| {
                    !original.iter().any(|&c| c == b'"' || c == b'\\')
                        && !r.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20)
                })
                .unwrap_or_else(|| REDACTED.to_string());
            // a number in a value slot (`{"card": 4111…}`, `[1, 4111…]`)
            // replaced by something that is not a number must be quoted
            let bare_number = !quotes.inside
                && original
                    .iter()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+'))
                && !is_plain_number(&replacement)
                && value_slot(text, f.range.start, f.range.end);
            if bare_number {
                out.push(b'"');
                out.extend_from_slice(replacement.as_bytes());
                out.push(b'"');
            } else {
                out.extend_from_slice(replacement.as_bytes());
            }
            quotes.advance(original);
            pos = f.range.end;
        }
        out.extend_from_slice(&text[pos..]);
        out
    }

    /// [`Masker::mask_with`] written into `out`; `false` means SQL NULL
    /// (nothing written). The strategies of most masked columns (partial
    /// digits, e-mail and name tokens, redaction) take a path that does not
    /// allocate; the rest go through [`Masker::mask_with`].
    pub(crate) fn mask_into(
        &self,
        kind: Kind,
        strategy: Strategy,
        value: &str,
        out: &mut Vec<u8>,
    ) -> bool {
        match (strategy, kind) {
            (Strategy::Null, _) => return false,
            (Strategy::Redact, _) => out.extend_from_slice(REDACTED.as_bytes()),
            (Strategy::Partial, Kind::Card | Kind::Ssn | Kind::Phone | Kind::BankAccount)
                if value.is_ascii() =>
            {
                let keep = if kind == Kind::Phone { 2 } else { 4 };
                let only_digits = kind != Kind::BankAccount;
                star_ascii_keep_last(value.as_bytes(), keep, only_digits, out);
            }
            (Strategy::Partial, Kind::Email) if value.contains('@') => {
                if let Some(at) = value.rfind('@') {
                    out.extend_from_slice(b"****");
                    out.extend_from_slice(&value.as_bytes()[at..]);
                }
            }
            (Strategy::Token, Kind::Email) => {
                let d = self.digest(kind, value);
                out.extend_from_slice(b"u_");
                hex_into(&d[..8], out);
                out.extend_from_slice(b"@token.invalid");
            }
            (Strategy::Token, Kind::Name) => {
                let d = self.digest(kind, value);
                out.extend_from_slice(b"Name_");
                hex_into(&d[..6], out);
            }
            _ => match self.mask_with(kind, strategy, value) {
                Some(m) => out.extend_from_slice(m.as_bytes()),
                None => return false,
            },
        }
        true
    }

    /// HMAC-SHA256(key, kind ‖ 0 ‖ normalized value).
    fn digest(&self, kind: Kind, value: &str) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(kind.as_str().as_bytes());
        m.update(&[0]);
        if !feed_normalized(kind, value, &mut m) {
            m.update(normalize(kind, value).as_bytes());
        }
        m.finalize().into_bytes().into()
    }

    fn stream(&self, kind: Kind, value: &str) -> KeyStream {
        KeyStream::new(self.digest(kind, value))
    }

    /// Deterministic keyed token shaped like the kind where that is easy.
    pub(crate) fn token(&self, kind: Kind, value: &str) -> String {
        let d = self.digest(kind, value);
        let mut ks = KeyStream::new(d);
        match kind {
            Kind::Email => format!("u_{}@token.invalid", hex(&d[..8])),
            Kind::Card => card_digits(value, &mut ks, false),
            Kind::Ssn | Kind::Phone | Kind::BankAccount | Kind::PostalCode => {
                substitute(kind, value, &mut ks)
            }
            Kind::Iban => iban_like(value, &mut ks),
            Kind::IpAddress => ip_token(value, &d),
            Kind::DateOfBirth => date_token(&d),
            Kind::Name => format!("Name_{}", hex(&d[..6])),
            _ => format!("{}_{}", kind.as_str(), hex(&d[..8])),
        }
    }

    /// Same length and character classes, keyed; checksums made invalid.
    pub(crate) fn format_preserving(&self, kind: Kind, value: &str) -> String {
        let mut ks = self.stream(kind, value);
        match kind {
            Kind::Email => match value.rfind('@') {
                Some(at) => {
                    let local = substitute(Kind::Secret, &value[..at], &mut ks);
                    format!("{local}{}", &value[at..])
                }
                None => substitute(kind, value, &mut ks),
            },
            Kind::Card => card_digits(value, &mut ks, true),
            Kind::Iban => iban_like(value, &mut ks),
            Kind::IpAddress => ip_token(value, &self.digest(kind, value)),
            Kind::DateOfBirth => date_token(&self.digest(kind, value)),
            _ => substitute(kind, value, &mut ks),
        }
    }

    /// A keyed date for `date` values (text `YYYY-MM-DD`).
    pub(crate) fn date_token_for(&self, value: &str) -> (i32, u32, u32) {
        let d = self.digest(Kind::DateOfBirth, value);
        date_parts(&d)
    }
}

/// Double-quote state of a text read left to right (backslash escapes).
#[derive(Default)]
struct QuoteState {
    inside: bool,
    escaped: bool,
}

impl QuoteState {
    fn advance(&mut self, bytes: &[u8]) {
        for &c in bytes {
            if self.escaped {
                self.escaped = false;
            } else if c == b'\\' {
                self.escaped = true;
            } else if c == b'"' {
                self.inside = !self.inside;
            }
        }
    }
}

/// Digits without a leading zero: a number in JSON and in SQL literals.
fn is_plain_number(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b.len() == 1 || b[0] != b'0')
}

/// Between a value separator (`:`, `,`, `[`, `{`, `(` or the start) and a
/// value terminator (`,`, `}`, `]`, `)` or the end), spaces aside.
fn value_slot(text: &[u8], start: usize, end: usize) -> bool {
    let before = text[..start]
        .iter()
        .rev()
        .find(|c| !c.is_ascii_whitespace());
    let after = text[end..].iter().find(|c| !c.is_ascii_whitespace());
    matches!(before, None | Some(b':' | b',' | b'[' | b'{' | b'('))
        && matches!(after, None | Some(b',' | b'}' | b']' | b')'))
        && !(before.is_none() && after.is_none())
}

/// Per-kind normalization before hashing, so formatting does not change
/// the token: card/phone/SSN digits only, e-mail lower case, IBAN compact
/// upper case, names case- and space-folded, IPs canonical.
fn normalize(kind: Kind, v: &str) -> String {
    let v = v.trim();
    match kind {
        Kind::Card | Kind::Ssn | Kind::Phone | Kind::BankAccount => {
            v.chars().filter(char::is_ascii_digit).collect()
        }
        Kind::Email => v.to_lowercase(),
        Kind::Iban => v
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .collect(),
        Kind::Name => v
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase(),
        Kind::IpAddress => split_ip(v)
            .map(|(ip, _)| ip.to_string())
            .unwrap_or_else(|| v.to_string()),
        _ => v.to_string(),
    }
}

/// Whitespace as `char::is_whitespace` sees it in ASCII (vertical tab included).
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ')
}

/// Bytes gathered on the stack and handed to the MAC in blocks.
struct MacFeed<'a> {
    mac: &'a mut Hmac<Sha256>,
    buf: [u8; 64],
    len: usize,
}

impl MacFeed<'_> {
    fn push(&mut self, b: u8) {
        if self.len == self.buf.len() {
            self.mac.update(&self.buf);
            self.len = 0;
        }
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn finish(self) {
        self.mac.update(&self.buf[..self.len]);
    }
}

/// Feed `mac` exactly the bytes of [`normalize`] without allocating, for
/// ASCII values of the kinds masked on the hot path; `false` (nothing fed):
/// use [`normalize`].
fn feed_normalized(kind: Kind, v: &str, mac: &mut Hmac<Sha256>) -> bool {
    if !v.is_ascii() {
        return false;
    }
    let bytes = v.as_bytes();
    let mut feed = MacFeed {
        mac,
        buf: [0; 64],
        len: 0,
    };
    match kind {
        // digits are ASCII: trimming first changes nothing
        Kind::Card | Kind::Ssn | Kind::Phone | Kind::BankAccount => {
            for &b in bytes.iter().filter(|b| b.is_ascii_digit()) {
                feed.push(b);
            }
        }
        Kind::Email => {
            let start = bytes.iter().position(|&b| !is_ascii_space(b));
            let end = bytes.iter().rposition(|&b| !is_ascii_space(b));
            if let (Some(start), Some(end)) = (start, end) {
                for &b in &bytes[start..=end] {
                    feed.push(b.to_ascii_lowercase());
                }
            }
        }
        Kind::Name => {
            let words = bytes
                .split(|&b| is_ascii_space(b))
                .filter(|w| !w.is_empty());
            for (i, word) in words.enumerate() {
                if i > 0 {
                    feed.push(b' ');
                }
                for &b in word {
                    feed.push(b.to_ascii_lowercase());
                }
            }
        }
        _ => return false,
    }
    feed.finish();
    true
}

/// [`star_alnum_keep_last`] for ASCII text, appended to `out`.
fn star_ascii_keep_last(v: &[u8], keep: usize, only_digits: bool, out: &mut Vec<u8>) {
    let counts = |b: u8| {
        if only_digits {
            b.is_ascii_digit()
        } else {
            b.is_ascii_alphanumeric()
        }
    };
    let total = v.iter().filter(|&&b| counts(b)).count();
    let mut seen = 0;
    out.reserve(v.len());
    for &b in v {
        if counts(b) {
            seen += 1;
            out.push(if seen + keep > total { b } else { b'*' });
        } else {
            out.push(b);
        }
    }
}

fn hex_into(b: &[u8], out: &mut Vec<u8>) {
    const H: &[u8; 16] = b"0123456789abcdef";
    for &x in b {
        out.push(H[usize::from(x >> 4)]);
        out.push(H[usize::from(x & 15)]);
    }
}

fn hex(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len() * 2);
    hex_into(b, &mut out);
    // hex digits are ASCII
    String::from_utf8(out).unwrap_or_default()
}

/// Bytes derived from a digest: the digest itself, then SHA-256(digest ‖ i).
struct KeyStream {
    seed: [u8; 32],
    block: [u8; 32],
    pos: usize,
    counter: u32,
}

impl KeyStream {
    fn new(seed: [u8; 32]) -> KeyStream {
        KeyStream {
            seed,
            block: seed,
            pos: 0,
            counter: 0,
        }
    }

    fn next(&mut self) -> u8 {
        if self.pos == 32 {
            self.counter += 1;
            let mut h = Sha256::new();
            h.update(self.seed);
            h.update(self.counter.to_be_bytes());
            self.block = h.finalize().into();
            self.pos = 0;
        }
        let b = self.block[self.pos];
        self.pos += 1;
        b
    }

    fn digit(&mut self) -> char {
        char::from(b'0' + self.next() % 10)
    }

    fn below(&mut self, n: u8) -> u8 {
        self.next() % n
    }
}

/// Class-preserving keyed substitution: digit → digit, upper → upper,
/// lower → lower (other letters → lower-case ASCII); punctuation kept.
/// An SSN gets an area number in the 9xx range (never issued as an SSN).
fn substitute(kind: Kind, v: &str, ks: &mut KeyStream) -> String {
    let mut first_digit = true;
    v.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                let d = if first_digit && kind == Kind::Ssn {
                    '9'
                } else if first_digit && kind == Kind::Phone {
                    // keep a phone's first digit: trunk 0 or country code stays plausible
                    c
                } else {
                    ks.digit()
                };
                first_digit = false;
                d
            } else if c.is_ascii_uppercase() {
                char::from(b'A' + ks.below(26))
            } else if c.is_alphabetic() {
                char::from(b'a' + ks.below(26))
            } else {
                c
            }
        })
        .collect()
}

/// Card-shaped digits that always fail Luhn. As a token the first digit is
/// `0` (no issuer uses it); format-preserving keeps the first digit and the
/// last four.
fn card_digits(v: &str, ks: &mut KeyStream, keep_ends: bool) -> String {
    let total = v.chars().filter(char::is_ascii_digit).count();
    let mut digits: Vec<u8> = Vec::with_capacity(total);
    for (idx, c) in v.chars().filter(char::is_ascii_digit).enumerate() {
        let keep = keep_ends && (idx == 0 || idx + 4 >= total);
        let d = if keep {
            c as u8
        } else if idx == 0 {
            b'0'
        } else {
            ks.digit() as u8
        };
        digits.push(d);
    }
    if total >= 2 && crate::detect::luhn_ok(&digits) {
        // changing one digit always changes the Luhn sum: pick one we own
        let k = if keep_ends { 1 } else { total - 1 };
        if k < total {
            digits[k] = b'0' + (digits[k] - b'0' + 1) % 10;
        }
    }
    let mut it = digits.into_iter();
    v.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                it.next().map_or(c, char::from)
            } else {
                c
            }
        })
        .collect()
}

/// Country code kept, check digits `00` (never valid), the rest substituted.
fn iban_like(v: &str, ks: &mut KeyStream) -> String {
    let mut seen = 0;
    v.chars()
        .map(|c| {
            if !c.is_ascii_alphanumeric() {
                return c;
            }
            seen += 1;
            match seen {
                1 | 2 => c.to_ascii_uppercase(),
                3 | 4 => '0',
                _ if c.is_ascii_digit() => ks.digit(),
                _ => char::from(b'A' + ks.below(26)),
            }
        })
        .collect()
}

/// Split `addr[/prefix]` into an address and its suffix.
fn split_ip(v: &str) -> Option<(IpAddr, &str)> {
    let t = v.trim();
    let (addr, suffix) = match t.find('/') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    addr.parse::<IpAddr>().ok().map(|a| (a, suffix))
}

/// IPv4 tokens live in 240.0.0.0/4 (reserved), IPv6 tokens in 2001:db8::/32
/// (documentation): they parse, and never name a real host.
fn ip_token(v: &str, d: &[u8; 32]) -> String {
    match split_ip(v) {
        Some((IpAddr::V4(_), suffix)) => {
            format!(
                "{}{suffix}",
                Ipv4Addr::new(240 | (d[0] & 15), d[1], d[2], d[3])
            )
        }
        Some((IpAddr::V6(_), suffix)) => {
            let seg = |i: usize| u16::from_be_bytes([d[2 * i], d[2 * i + 1]]);
            let a = Ipv6Addr::new(
                0x2001,
                0x0db8,
                seg(0),
                seg(1),
                seg(2),
                seg(3),
                seg(4),
                seg(5),
            );
            format!("{a}{suffix}")
        }
        None => format!("ip_address_{}", hex(&d[..8])),
    }
}

fn date_parts(d: &[u8; 32]) -> (i32, u32, u32) {
    let year = 1930 + i32::from(u16::from_be_bytes([d[0], d[1]]) % 70);
    let month = 1 + u32::from(d[2] % 12);
    let day = 1 + u32::from(d[3] % 28);
    (year, month, day)
}

fn date_token(d: &[u8; 32]) -> String {
    let (y, m, day) = date_parts(d);
    format!("{y:04}-{m:02}-{day:02}")
}

fn star_alnum_keep_last(v: &str, keep: usize, only_digits: bool) -> String {
    let counts = |c: &char| {
        if only_digits {
            c.is_ascii_digit()
        } else {
            c.is_alphanumeric()
        }
    };
    let total = v.chars().filter(counts).count();
    let mut seen = 0;
    v.chars()
        .map(|c| {
            if counts(&c) {
                seen += 1;
                if seen + keep > total {
                    c
                } else {
                    '*'
                }
            } else {
                c
            }
        })
        .collect()
}

/// Keep a harmless part, star out the rest.
pub(crate) fn partial(kind: Kind, v: &str) -> String {
    if kind.is_secret() {
        // a recognisable prefix (`AKIA`, `ghp_`, `$2b$`) and nothing else
        let chars: Vec<char> = v.chars().collect();
        return if chars.len() >= 12 {
            let head: String = chars[..4].iter().collect();
            format!("{head}****")
        } else {
            "****".to_string()
        };
    }
    match kind {
        Kind::Card | Kind::Ssn => star_alnum_keep_last(v, 4, true),
        Kind::Phone => star_alnum_keep_last(v, 2, true),
        Kind::BankAccount => star_alnum_keep_last(v, 4, false),
        Kind::Email => match v.rfind('@') {
            Some(at) => format!("****{}", &v[at..]),
            None => star_alnum_keep_last(v, 0, false),
        },
        Kind::Iban => {
            let total = v.chars().filter(char::is_ascii_alphanumeric).count();
            let mut seen = 0;
            v.chars()
                .map(|c| {
                    if !c.is_ascii_alphanumeric() {
                        return c;
                    }
                    seen += 1;
                    if seen <= 2 || seen + 4 > total {
                        c
                    } else {
                        '*'
                    }
                })
                .collect()
        }
        Kind::IpAddress => match split_ip(v) {
            Some((IpAddr::V4(a), suffix)) => {
                let o = a.octets();
                format!("{}{suffix}", Ipv4Addr::new(o[0], o[1], 0, 0))
            }
            Some((IpAddr::V6(a), suffix)) => {
                let s = a.segments();
                format!("{}{suffix}", Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
            }
            None => star_alnum_keep_last(v, 0, false),
        },
        Kind::Name => v
            .split(' ')
            .map(|w| {
                let mut cs = w.chars();
                match cs.next() {
                    Some(first) => {
                        let rest: String = cs.map(|_| '*').collect();
                        format!("{first}{rest}")
                    }
                    None => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Kind::PostalCode => {
            let mut seen = 0;
            v.chars()
                .map(|c| {
                    if c.is_alphanumeric() {
                        seen += 1;
                        if seen <= 2 {
                            return c;
                        }
                        return '*';
                    }
                    c
                })
                .collect()
        }
        Kind::DateOfBirth => dob_partial(v),
        _ => {
            let n = v.chars().filter(|c| c.is_alphanumeric()).count();
            star_alnum_keep_last(v, if n >= 8 { 4 } else { 0 }, false)
        }
    }
}

/// `1985-03-14` → `1985-01-01` (still a date); other formats keep only a
/// four-digit year: `14/03/1985` → `**/**/1985`.
fn dob_partial(v: &str) -> String {
    let b = v.as_bytes();
    let iso = b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit);
    if iso {
        return format!("{}-01-01{}", &v[..4], &v[10..]);
    }
    // keep the first run of exactly four digits
    let mut out = String::with_capacity(v.len());
    let mut kept = false;
    let chars: Vec<char> = v.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            let run: String = chars[i..j].iter().collect();
            if !kept && j - i == 4 {
                out.push_str(&run);
                kept = true;
            } else {
                out.extend(std::iter::repeat_n('*', j - i));
            }
            i = j;
        } else {
            out.push(if chars[i].is_alphabetic() {
                '*'
            } else {
                chars[i]
            });
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
