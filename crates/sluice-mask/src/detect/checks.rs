//! Checksums and number-range rules: Luhn, card issuer ranges, IBAN mod-97,
//! SSN ranges, EAN-13, Spanish DNI/NIE, Italian codice fiscale, French NIR.
//! All take ASCII digits/letters and run in time linear in their input.

/// Luhn (mod 10) over ASCII digits.
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    luhn_sum(digits).is_multiple_of(10)
}

/// The Luhn sum of ASCII digits, doubling every second digit from the right.
pub(crate) fn luhn_sum(digits: &[u8]) -> u32 {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum
}

/// EAN-13 / GTIN-13 check digit (weights 1, 3).
pub(crate) fn ean13_valid(digits: &[u8]) -> bool {
    if digits.len() != 13 {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits[..12].iter().enumerate() {
        let v = u32::from(d - b'0');
        sum += if i % 2 == 0 { v } else { 3 * v };
    }
    (10 - sum % 10) % 10 == u32::from(digits[12] - b'0')
}

fn prefix_num(digits: &[u8], n: usize) -> u32 {
    digits
        .iter()
        .take(n)
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
}

/// Does this digit string (13–19 ASCII digits) belong to a known card issuer
/// range with a length that issuer uses? Visa, Mastercard (incl. 2-series),
/// Amex, Discover, JCB, Diners, UnionPay, Maestro, Mir.
pub(crate) fn card_issuer_ok(digits: &[u8]) -> bool {
    let len = digits.len();
    if !(13..=19).contains(&len) {
        return false;
    }
    let p1 = prefix_num(digits, 1);
    let p2 = prefix_num(digits, 2);
    let p3 = prefix_num(digits, 3);
    let p4 = prefix_num(digits, 4);
    let p6 = prefix_num(digits, 6);
    // Visa
    if p1 == 4 {
        return matches!(len, 13 | 16 | 19);
    }
    // Mastercard, Mir
    if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) || (2200..=2204).contains(&p4) {
        return len == 16;
    }
    // Amex
    if p2 == 34 || p2 == 37 {
        return len == 15;
    }
    // JCB (15-digit legacy 1800/2131)
    if p4 == 1800 || p4 == 2131 {
        return len == 15;
    }
    if (3528..=3589).contains(&p4) {
        return len >= 16;
    }
    // Diners Club
    if (300..=305).contains(&p3) || p4 == 3095 || p2 == 36 || p2 == 38 || p2 == 39 {
        return len >= 14;
    }
    // Discover, UnionPay
    if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6) {
        return len >= 16;
    }
    if p2 == 62 || p2 == 81 {
        return len >= 16;
    }
    // Maestro
    if p2 == 50 || (56..=58).contains(&p2) || p2 == 63 || p2 == 67 || p2 == 60 || p2 == 69 {
        return len >= 13;
    }
    false
}

/// Luhn and issuer range. A 13-digit number that is also a valid EAN-13
/// barcode is taken as a barcode: 13-digit Visa numbers are legacy, barcodes
/// are everywhere in product tables.
pub(crate) fn card_valid(digits: &[u8]) -> bool {
    card_issuer_ok(digits) && luhn_valid(digits) && !(digits.len() == 13 && ean13_valid(digits))
}

/// US SSN ranges: area 001–899 except 666, group 01–99, serial 0001–9999.
pub(crate) fn ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    if area.len() != 3 || group.len() != 2 || serial.len() != 4 {
        return false;
    }
    let a = prefix_num(area, 3);
    let g = prefix_num(group, 2);
    let s = prefix_num(serial, 4);
    a != 0 && a != 666 && a < 900 && g != 0 && s != 0
}

/// IBAN length by country (SWIFT IBAN registry).
pub(crate) fn iban_length(c0: u8, c1: u8) -> Option<usize> {
    let len = match &[c0, c1] {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BI" => 27,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DJ" => 27,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FK" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HN" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"LY" => 25,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MN" => 20,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NI" => 28,
        b"NL" => 18,
        b"NO" => 15,
        b"OM" => 23,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"RU" => 33,
        b"SA" => 24,
        b"SC" => 31,
        b"SD" => 18,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"SO" => 23,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        b"YE" => 30,
        _ => return None,
    };
    Some(len)
}

/// ISO 13616 mod-97 over a compact upper-case IBAN (no spaces).
pub(crate) fn iban_mod97_valid(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let mut r = 0u32;
    let rearranged = iban[4..].iter().chain(iban[..4].iter());
    for &c in rearranged {
        match c {
            b'0'..=b'9' => r = (r * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => r = (r * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        }
    }
    r == 1
}

/// Spanish DNI (8 digits + letter) or NIE (X/Y/Z + 7 digits + letter), mod 23.
pub(crate) fn es_dni_valid(v: &[u8]) -> bool {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    if v.len() != 9 {
        return false;
    }
    let lead = match v[0] {
        b'0'..=b'9' => u32::from(v[0] - b'0'),
        b'X' => 0,
        b'Y' => 1,
        b'Z' => 2,
        _ => return false,
    };
    if !v[1..8].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let n = v[1..8]
        .iter()
        .fold(lead, |acc, d| acc * 10 + u32::from(d - b'0'));
    LETTERS[(n % 23) as usize] == v[8]
}

/// Italian codice fiscale: pattern (with omocodia letters) and check letter.
pub(crate) fn it_codice_fiscale_valid(v: &[u8]) -> bool {
    const ODD: [u32; 26] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23,
    ];
    const OMOCODE: &[u8] = b"LMNPQRSTUV";
    const MONTHS: &[u8] = b"ABCDEHLMPRST";
    if v.len() != 16 {
        return false;
    }
    for (i, &c) in v.iter().enumerate() {
        let ok = match i {
            0..=5 | 11 | 15 => c.is_ascii_uppercase(),
            8 => MONTHS.contains(&c),
            _ => c.is_ascii_digit() || OMOCODE.contains(&c),
        };
        if !ok {
            return false;
        }
    }
    let mut sum = 0u32;
    for (i, &c) in v[..15].iter().enumerate() {
        // value 0..=25 for both digits and letters; odd positions (1-based) use the table
        let idx = if c.is_ascii_digit() {
            c - b'0'
        } else {
            c - b'A'
        } as usize;
        sum += if i % 2 == 0 { ODD[idx] } else { idx as u32 };
    }
    u32::from(v[15] - b'A') == sum % 26
}

/// French NIR (numéro de sécurité sociale): 13 digits + 2-digit key,
/// key = 97 − (number mod 97); sex 1/2, month 01–12 or ≥ 20.
pub(crate) fn fr_nir_valid(v: &[u8]) -> bool {
    if v.len() != 15 {
        return false;
    }
    // Corsica: department 2A / 2B, counted as 19 / 18 for the key
    let mut d = [0u8; 15];
    d.copy_from_slice(v);
    match &v[5..7] {
        b"2A" => d[5..7].copy_from_slice(b"19"),
        b"2B" => d[5..7].copy_from_slice(b"18"),
        _ => {}
    }
    if !d.iter().all(u8::is_ascii_digit) || (d[0] != b'1' && d[0] != b'2') {
        return false;
    }
    let month = prefix_num(&d[3..5], 2);
    if month == 0 || (13..20).contains(&month) {
        return false;
    }
    let n = d[..13]
        .iter()
        .fold(0u64, |acc, x| (acc * 10 + u64::from(x - b'0')) % 97);
    let key = prefix_num(&v[13..15], 2);
    u64::from(key) == 97 - n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"4111111111111112"));
    }

    #[test]
    fn issuers() {
        for ok in [
            &b"4111111111111111"[..],
            b"5555555555554444",
            b"2223003122003222",
            b"378282246310005",
            b"6011111111111117",
            b"3530111333300000",
            b"30569309025904",
            b"6200000000000005",
            b"6759649826438453",
            b"4222222222222",
        ] {
            assert!(card_issuer_ok(ok), "{}", String::from_utf8_lossy(ok));
            assert!(luhn_valid(ok), "{}", String::from_utf8_lossy(ok));
        }
        // Luhn-valid but no issuer uses the prefix/length
        assert!(!card_issuer_ok(b"1234567812345670"));
        assert!(!card_issuer_ok(b"9111111111111111"));
        assert!(!card_issuer_ok(b"37828224631000")); // amex needs 15
        assert!(!card_issuer_ok(b"5555555555554")); // mastercard needs 16
                                                    // a barcode that is also Luhn-valid with a Visa prefix
        assert!(ean13_valid(b"4006381333931"));
    }

    #[test]
    fn ssn_ranges() {
        assert!(ssn_valid(b"123", b"45", b"6789"));
        assert!(!ssn_valid(b"000", b"45", b"6789"));
        assert!(!ssn_valid(b"666", b"45", b"6789"));
        assert!(!ssn_valid(b"900", b"45", b"6789"));
        assert!(!ssn_valid(b"123", b"00", b"6789"));
        assert!(!ssn_valid(b"123", b"45", b"0000"));
    }

    #[test]
    fn iban() {
        assert!(iban_mod97_valid(b"DE89370400440532013000"));
        assert!(iban_mod97_valid(b"GB82WEST12345698765432"));
        assert!(!iban_mod97_valid(b"DE89370400440532013001"));
        assert_eq!(iban_length(b'D', b'E'), Some(22));
        assert_eq!(iban_length(b'Q', b'Q'), None);
    }

    #[test]
    fn national_ids() {
        assert!(es_dni_valid(b"12345678Z"));
        assert!(es_dni_valid(b"X1234567L"));
        assert!(!es_dni_valid(b"12345678A"));
        assert!(it_codice_fiscale_valid(b"RSSMRA85T10A562S"));
        assert!(!it_codice_fiscale_valid(b"RSSMRA85T10A562T"));
        assert!(fr_nir_valid(b"255081416802538"));
        assert!(fr_nir_valid(b"137082B03399364"));
        assert!(!fr_nir_valid(b"255081416802539"));
    }
}
