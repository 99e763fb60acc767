//! Small helpers kept in-crate to avoid dependencies: ULIDs, UTC time
//! formatting and parsing, durations like `30d`, hex.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new ULID for the time `ms`: 48 bits of milliseconds and 80 random
/// bits, in Crockford base32 (26 characters, sorts by time).
pub fn ulid(ms: i64) -> String {
    let mut rnd = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut rnd);
    ulid_of(ms, &rnd)
}

/// The smallest ULID of the millisecond `ms` (`None` past the year 10889,
/// where ULIDs end): every ULID made at `ms` or later sorts at or after it,
/// so a time range is a ULID range and needs no index of its own.
pub fn ulid_floor(ms: i64) -> Option<String> {
    (ms < 1 << 48).then(|| ulid_of(ms, &[0; 10]))
}

fn ulid_of(ms: i64, rnd: &[u8; 10]) -> String {
    let mut v: u128 = (ms.max(0) as u128 & ((1 << 48) - 1)) << 80;
    for (i, b) in rnd.iter().enumerate() {
        v |= u128::from(*b) << (8 * (9 - i));
    }
    let mut out = [0u8; 26];
    for (i, c) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as u32;
        *c = CROCKFORD[((v >> shift) & 0x1f) as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The millisecond timestamp inside a ULID, if it is one.
pub fn ulid_time(ulid: &str) -> Option<i64> {
    if ulid.len() != 26 {
        return None;
    }
    let mut v: u128 = 0;
    for c in ulid.bytes() {
        let d = CROCKFORD
            .iter()
            .position(|&x| x == c.to_ascii_uppercase())? as u128;
        v = (v << 5) | d;
    }
    Some((v >> 80) as i64)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Parse hex (either case); `None` when malformed.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() & 1 == 1 {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 in UTC with milliseconds: `2024-05-01T12:00:00.123Z`.
pub fn format_time(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// The UTC day number (days since 1970-01-01) of a timestamp.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// Parse a duration: a number and a unit `ms`, `s`, `m`, `h`, `d` or `w`
/// (`30d`, `12h`). Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: a unit is needed (ms, s, m, h, d, w)"))?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by a unit, e.g. 30d"))?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d, w)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Parse a point in time: RFC 3339 (`2024-05-01T12:00:00Z`, with optional
/// fraction and `±hh:mm` offset), a date (`2024-05-01`, midnight UTC), or a
/// duration ago (`30d`, relative to `now_ms`).
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(d) = parse_duration_ms(s) {
        return now_ms
            .checked_sub(d)
            .ok_or_else(|| format!("{s:?}: too large"));
    }
    let bad = || {
        format!(
            "{s:?}: expected RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01) or an age (30d)"
        )
    };
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|x| x.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|x| x.parse().ok())
            .ok_or_else(bad)
    };
    // Everything below slices by byte offset: only ASCII can be valid.
    if !s.is_ascii() || s.len() < 10 || s.as_bytes()[4] != b'-' || s.as_bytes()[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    if s.len() == 10 {
        return Ok(ms);
    }
    let b = s.as_bytes();
    if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || s.len() < 19
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    ms += ((h * 60 + mi) * 60 + se) * 1000;
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        let f = &frac[..digits];
        let mut v: i64 = f
            .get(..3.min(digits))
            .and_then(|x| x.parse().ok())
            .ok_or_else(bad)?;
        for _ in digits..3 {
            v *= 10;
        }
        ms += v;
        rest = &frac[digits..];
    }
    match rest {
        "Z" | "z" | "" => Ok(ms),
        off if off.len() == 6
            && (off.starts_with('+') || off.starts_with('-'))
            && &off[3..4] == ":" =>
        {
            let oh: i64 = off[1..3].parse().map_err(|_| bad())?;
            let om: i64 = off[4..6].parse().map_err(|_| bad())?;
            let o = (oh * 60 + om) * 60_000;
            Ok(if off.starts_with('+') { ms - o } else { ms + o })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_roundtrip_and_order() {
        let a = ulid(1_700_000_000_000);
        let b = ulid(1_700_000_000_001);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert_eq!(ulid_time(&a), Some(1_700_000_000_000));
        let floor = ulid_floor(1_700_000_000_001).unwrap();
        assert!(a < floor && floor <= b, "{a} < {floor} <= {b}");
        assert_eq!(ulid_time(&floor), Some(1_700_000_000_001));
        assert_eq!(ulid_floor(-5), ulid_floor(0));
        assert_eq!(ulid_floor(1 << 48), None);
    }

    #[test]
    fn time_format_and_parse() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        let t = parse_time("2024-02-29T13:45:07.25Z", 0).unwrap();
        assert_eq!(format_time(t), "2024-02-29T13:45:07.250Z");
        assert_eq!(parse_time("2024-02-29T15:45:07.25+02:00", 0).unwrap(), t);
        assert_eq!(
            parse_time("2024-03-01", 0).unwrap(),
            days_from_civil(2024, 3, 1) * 86_400_000
        );
        assert_eq!(parse_time("30d", 31 * 86_400_000).unwrap(), 86_400_000);
        assert!(parse_time("yesterday", 0).is_err());
        assert!(parse_time("2024-02-29T13:45:07+0é:00", 0).is_err());
        assert!(parse_time("2024-02-29T13:45:07é", 0).is_err());
        assert!(parse_time("9223372036854775807ms", -10).is_err());
        assert_eq!(parse_duration_ms("400d").unwrap(), 400 * 86_400_000);
        assert!(parse_duration_ms("5").is_err());
    }

    #[test]
    fn hex_roundtrip() {
        assert_eq!(unhex(&hex(&[0, 1, 255])).unwrap(), vec![0, 1, 255]);
        assert!(unhex("zz").is_none());
    }
}
