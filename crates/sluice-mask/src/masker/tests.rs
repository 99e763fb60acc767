use super::*;
use crate::{detect, scan, ColumnInfo, ColumnPlan, MaskingConfig, Outcome, ValueType};

const KEY: [u8; 32] = [42; 32];

fn m() -> Masker {
    Masker::new(&KEY)
}

#[test]
fn defaults_per_kind() {
    let m = m();
    assert_eq!(
        m.mask(Kind::Card, "4111 1111 1111 1234"),
        "**** **** **** 1234"
    );
    assert_eq!(m.mask(Kind::Card, "4111111111111111"), "************1111");
    assert_eq!(m.mask(Kind::Ssn, "123-45-6789"), "***-**-6789");
    assert_eq!(
        m.mask(Kind::Phone, "+1 (415) 555-2671"),
        "+* (***) ***-**71"
    );
    assert_eq!(
        m.mask(Kind::Iban, "DE89 3704 0044 0532 0130 00"),
        "DE** **** **** **** **30 00"
    );
    assert_eq!(m.mask(Kind::IpAddress, "192.168.10.20"), "192.168.0.0");
    assert_eq!(
        m.mask(Kind::IpAddress, "2001:db8:1:2:3:4:5:6"),
        "2001:db8:1::"
    );
    assert_eq!(m.mask(Kind::DateOfBirth, "1985-03-14"), "1985-01-01");
    assert_eq!(m.mask(Kind::DateOfBirth, "14/03/1985"), "**/**/1985");
    assert_eq!(m.mask(Kind::PostalCode, "SW1A 1AA"), "SW** ***");
    assert_eq!(m.mask(Kind::AwsKey, "AKIAIOSFODNN7EXAMPLE"), REDACTED);
    assert_eq!(m.mask(Kind::Password, "hunter2"), REDACTED);
    assert_eq!(m.mask(Kind::Address, "1 Main St"), REDACTED);
    let e = m.mask(Kind::Email, "Ann@Example.com");
    assert!(e.starts_with("u_") && e.ends_with("@token.invalid"), "{e}");
    assert_eq!(
        detect(&e),
        Some(Kind::Email),
        "an email token is still an email"
    );
    assert!(m.mask(Kind::Name, "Ann Lee").starts_with("Name_"));
}

#[test]
fn partial_strategy() {
    let m = m();
    let p = |k, v| m.mask_with(k, Strategy::Partial, v);
    assert_eq!(
        p(Kind::Email, "ann@example.com").as_deref(),
        Some("****@example.com")
    );
    assert_eq!(p(Kind::Name, "Ann Lee").as_deref(), Some("A** L**"));
    assert_eq!(
        p(
            Kind::GithubToken,
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"
        )
        .as_deref(),
        Some("ghp_****")
    );
    assert_eq!(p(Kind::Password, "short").as_deref(), Some("****"));
}

#[test]
fn tokens_are_deterministic_and_keyed() {
    let a = m();
    let b = Masker::new(&[43; 32]);
    for (k, v) in [
        (Kind::Email, "ann@example.com"),
        (Kind::Card, "4111111111111111"),
        (Kind::Name, "Ann Lee"),
        (Kind::Ssn, "123-45-6789"),
        (Kind::Secret, "q8Zt3LmW0xP7vR2kN9sB4yF6hJ1cD5gT"),
    ] {
        let t1 = a.mask_with(k, Strategy::Token, v);
        let t2 = a.mask_with(k, Strategy::Token, v);
        let t3 = b.mask_with(k, Strategy::Token, v);
        assert_eq!(t1, t2, "{k}");
        assert_ne!(t1, t3, "{k}: another key must give another token");
        assert_ne!(t1.as_deref(), Some(v));
    }
    // formatting does not change the token
    assert_eq!(
        a.mask_with(Kind::Email, Strategy::Token, "Ann@Example.COM"),
        a.mask_with(Kind::Email, Strategy::Token, "ann@example.com")
    );
    let c1 = a.token(Kind::Card, "4111 1111 1111 1111");
    let c2 = a.token(Kind::Card, "4111111111111111");
    assert_eq!(c1.replace(' ', ""), c2);
    // different inputs, different tokens
    assert_ne!(
        a.token(Kind::Email, "a@example.com"),
        a.token(Kind::Email, "b@example.com")
    );
}

#[test]
fn card_tokens_never_look_like_cards() {
    let m = m();
    for i in 0..2000u64 {
        let pan = format!("4{:015}", i * 7919);
        let t = m.token(Kind::Card, &pan);
        assert_eq!(t.len(), 16);
        assert!(t.starts_with('0'));
        assert_ne!(detect(&t), Some(Kind::Card), "{t}");
        let f = m.format_preserving(Kind::Card, &pan);
        assert_eq!(&f[..1], "4");
        assert_eq!(&f[12..], &pan[12..]);
        assert!(!crate::detect::luhn_ok(f.as_bytes()), "{f}");
    }
}

#[test]
fn shaped_tokens_parse() {
    let m = m();
    let ssn = m.token(Kind::Ssn, "123-45-6789");
    assert!(
        ssn.starts_with('9') && ssn.len() == 11 && &ssn[3..4] == "-",
        "{ssn}"
    );
    assert_ne!(detect(&ssn), Some(Kind::Ssn));
    let iban = m.token(Kind::Iban, "DE89 3704 0044 0532 0130 00");
    assert!(iban.starts_with("DE00 "), "{iban}");
    assert_eq!(iban.len(), "DE89 3704 0044 0532 0130 00".len());
    assert_ne!(detect(&iban), Some(Kind::Iban));
    let ip = m.token(Kind::IpAddress, "10.1.2.3");
    let parsed: std::net::Ipv4Addr = ip.parse().expect("ipv4 token parses");
    assert!(parsed.octets()[0] >= 240);
    let ip6 = m.token(Kind::IpAddress, "2001:db8::1");
    assert!(
        ip6.parse::<std::net::Ipv6Addr>().is_ok() && ip6.starts_with("2001:db8:"),
        "{ip6}"
    );
    let dob = m.token(Kind::DateOfBirth, "1985-03-14");
    assert_eq!(dob.len(), 10);
    let phone = m.format_preserving(Kind::Phone, "+44 20 7946 0958");
    assert_eq!(phone.len(), "+44 20 7946 0958".len());
    assert!(phone.starts_with("+4"));
    let email = m.format_preserving(Kind::Email, "ann.lee@example.com");
    assert!(
        email.ends_with("@example.com") && email.len() == 19,
        "{email}"
    );
}

#[test]
fn null_strategy() {
    let m = m();
    assert_eq!(m.mask_with(Kind::Email, Strategy::Null, "a@b.co"), None);
    // `mask` cannot return NULL: it redacts
    let cfg: MaskingConfig =
        serde_json::from_str(r#"{"default_strategy": {"email": "null"}}"#).expect("cfg");
    let m2 = Masker::with_config(&KEY, &cfg).expect("masker");
    assert_eq!(m2.mask(Kind::Email, "a@example.com"), REDACTED);
}

#[test]
fn mask_in_text_keeps_json_valid() {
    let m = m();
    let doc = r#"{"user": {"email": "ann@example.com", "card": "4111 1111 1111 1111", "note": "pw is \"x\"", "password": "p\"a\\ss", "ip": "10.0.0.7"}, "key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n"}"#;
    let (out, kinds) = m.mask_in_text(doc).expect("findings");
    let v: serde_json::Value = serde_json::from_str(&out).expect("still valid JSON");
    assert!(v["user"]["email"]
        .as_str()
        .is_some_and(|s| s.ends_with("@token.invalid")));
    assert_eq!(v["user"]["card"], "**** **** **** 1111");
    assert_eq!(v["user"]["password"], REDACTED);
    assert_eq!(v["user"]["ip"], "10.0.0.0");
    assert_eq!(v["key"], format!("{REDACTED}\n"));
    assert!(kinds.contains(&Kind::PrivateKey) && kinds.contains(&Kind::Password));
    assert!(scan(&out)
        .iter()
        .all(|f| f.kind == Kind::Email || f.kind == Kind::IpAddress));
    assert_eq!(m.mask_in_text("nothing to see"), None);
}

#[test]
fn numbers_in_json_stay_valid() {
    let m = m();
    let doc = r#"{"card": 4111111111111111, "list": [5555555555554444, 1], "note": "a,4111111111111111", "pin": 4242}"#;
    let (out, _) = m.mask_in_text(doc).expect("findings");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["card"], "************1111");
    assert_eq!(v["list"][0], "************4444");
    assert_eq!(v["note"], "a,************1111");
    // a whole value that is a number is replaced as it is (no quotes added)
    assert_eq!(
        m.mask_in_text("4111111111111111").map(|x| x.0).as_deref(),
        Some("************1111")
    );
    // format-preserving digits stay a number; a token (leading 0) becomes a string
    for (strategy, number) in [("format-preserving", true), ("token", false)] {
        let cfg: MaskingConfig = serde_json::from_str(&format!(
            r#"{{"default_strategy": {{"card": "{strategy}"}}}}"#
        ))
        .expect("cfg");
        let t = Masker::with_config(&KEY, &cfg).expect("masker");
        let (out, _) = t
            .mask_in_text(r#"{"card": 4111111111111111}"#)
            .expect("findings");
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["card"].is_u64(), number, "{out}");
    }
    // PostgreSQL array literal
    let (out, _) = m
        .mask_in_text("{4111111111111111,5555555555554444}")
        .expect("findings");
    assert_eq!(out, r#"{"************1111","************4444"}"#);
}

#[test]
fn json_masking_under_every_strategy_stays_valid() {
    let doc = r#"["ann@example.com", "4111-1111-1111-1111", "123-45-6789", "DE89 3704 0044 0532 0130 00", "AKIAIOSFODNN7EXAMPLE", "+1 (415) 555-2671", "a\\b ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"]"#;
    for s in Strategy::ALL {
        let cfg = MaskingConfig {
            default_strategy: Kind::ALL.iter().map(|&k| (k, s)).collect(),
            ..MaskingConfig::default()
        };
        let m = Masker::with_config(&KEY, &cfg).expect("masker");
        let (out, kinds) = m.mask_in_text(doc).expect("findings");
        assert_eq!(kinds.len(), 7, "{s}: {kinds:?}");
        let v: Vec<String> =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{s}: {e}: {out}"));
        assert_eq!(v.len(), 7);
        assert!(!out.contains("4111-1111-1111-1111") && !out.contains("AKIAIOSFODNN7EXAMPLE"));
    }
}

fn col(schema: &str, table: &str, column: &str, ty: &str, oid: u32) -> ColumnInfo {
    ColumnInfo {
        schema: Some(schema.into()),
        table: Some(table.into()),
        column: column.into(),
        pg_type_name: ty.into(),
        type_oid: oid,
    }
}

#[test]
fn plans() {
    let m = m();
    let p = m.plan(&col("public", "users", "email", "varchar", 1043));
    assert_eq!(
        p,
        ColumnPlan::Mask {
            kind: Kind::Email,
            strategy: Strategy::Token,
            value_type: ValueType::Text
        }
    );
    assert_eq!(
        m.plan(&col("public", "users", "id", "int8", 20)),
        ColumnPlan::Pass
    );
    assert_eq!(
        m.plan(&col("public", "users", "bio", "text", 25)),
        ColumnPlan::Scan {
            value_type: ValueType::Text
        }
    );
    assert_eq!(
        m.plan(&col("public", "users", "name", "citext", 16_400)),
        ColumnPlan::Mask {
            kind: Kind::Name,
            strategy: Strategy::Token,
            value_type: ValueType::Text
        }
    );
    assert_eq!(
        m.plan(&col("public", "products", "name", "text", 25)),
        ColumnPlan::Scan {
            value_type: ValueType::Text
        }
    );
    // a computed column: no origin, classified by its alias or scanned
    let computed = ColumnInfo {
        column: "?column?".into(),
        pg_type_name: "text".into(),
        type_oid: 25,
        ..ColumnInfo::default()
    };
    assert_eq!(
        m.plan(&computed),
        ColumnPlan::Scan {
            value_type: ValueType::Text
        }
    );
    // redaction of a date would not be a date: NULL instead
    let cfg: MaskingConfig =
        serde_json::from_str(r#"{"default_strategy": {"date_of_birth": "redact"}}"#).expect("cfg");
    let m2 = Masker::with_config(&KEY, &cfg).expect("masker");
    assert_eq!(
        m2.plan(&col("public", "users", "dob", "date", 1082)),
        ColumnPlan::Mask {
            kind: Kind::DateOfBirth,
            strategy: Strategy::Null,
            value_type: ValueType::Date
        }
    );
    // arrays are scanned, not replaced whole
    assert_eq!(
        m.plan(&col("public", "users", "emails", "_text", 1009)),
        ColumnPlan::Scan {
            value_type: ValueType::Structured
        }
    );
}

#[test]
fn config_overrides() {
    let cfg: MaskingConfig = serde_json::from_str(
        r#"{
            "default_strategy": {"card": "token"},
            "columns": {
                "public.users.email": "none",
                "users.notes": "redact",
                "public.users.nick": "name:partial",
                "public.users.bio": "scan",
                "public.users.misc": "email"
            }
        }"#,
    )
    .expect("cfg");
    let m = Masker::with_config(&KEY, &cfg).expect("masker");
    assert_eq!(
        m.plan(&col("public", "users", "email", "text", 25)),
        ColumnPlan::Pass
    );
    assert_eq!(
        m.plan(&col("other", "users", "notes", "text", 25)),
        ColumnPlan::Mask {
            kind: Kind::Secret,
            strategy: Strategy::Redact,
            value_type: ValueType::Text
        }
    );
    assert_eq!(
        m.plan(&col("public", "users", "nick", "text", 25)),
        ColumnPlan::Mask {
            kind: Kind::Name,
            strategy: Strategy::Partial,
            value_type: ValueType::Text
        }
    );
    assert_eq!(
        m.plan(&col("public", "users", "misc", "text", 25)),
        ColumnPlan::Mask {
            kind: Kind::Email,
            strategy: Strategy::Token,
            value_type: ValueType::Text
        }
    );
    assert_eq!(
        m.plan(&col("public", "payments", "card_number", "text", 25)),
        ColumnPlan::Mask {
            kind: Kind::Card,
            strategy: Strategy::Token,
            value_type: ValueType::Text
        }
    );
    let off: MaskingConfig = serde_json::from_str(r#"{"enabled": false}"#).expect("cfg");
    let m = Masker::with_config(&KEY, &off).expect("masker");
    assert_eq!(
        m.plan(&col("public", "users", "email", "text", 25)),
        ColumnPlan::Pass
    );
    // bad rules are errors
    assert!(serde_json::from_str::<MaskingConfig>(r#"{"columns": {"a.b": "hide"}}"#).is_err());
    assert!(
        serde_json::from_str::<MaskingConfig>(r#"{"default_strategy": {"emial": "token"}}"#)
            .is_err()
    );
    assert!(serde_json::from_str::<MaskingConfig>(r#"{"bogus": 1}"#).is_err());
    let bad: MaskingConfig =
        serde_json::from_str(r#"{"columns": {"justcolumn": "redact"}}"#).expect("parses");
    assert!(Masker::with_config(&KEY, &bad).is_err());
}

#[test]
fn fields_text_and_binary() {
    let m = m();
    let mut f = Vec::new();
    let mut r = crate::MaskReport::default();
    let email = m.plan(&col("public", "users", "email", "text", 25));
    let Outcome::Masked(v) = m.mask_text(&email, b"ann@example.com", &mut f, &mut r) else {
        panic!("masked")
    };
    assert!(v.ends_with(b"@token.invalid"));
    // binary text = the text
    assert_eq!(
        m.mask_binary(&email, b"ann@example.com", &mut f, &mut r),
        Outcome::Masked(v)
    );
    // jsonb: version byte kept, whole value becomes a JSON string
    let addr = m.plan(&col("public", "users", "address", "jsonb", 3802));
    let Outcome::Masked(j) =
        m.mask_binary(&addr, b"\x01{\"street\": \"1 Main St\"}", &mut f, &mut r)
    else {
        panic!("masked")
    };
    assert_eq!(j, b"\x01\"[REDACTED]\"");
    assert_eq!(
        m.mask_binary(&addr, b"\x02{}", &mut f, &mut r),
        Outcome::CannotMask
    );
    // scan of a jsonb document in binary
    let doc = m.plan(&col("public", "events", "payload", "jsonb", 3802));
    let Outcome::Masked(j) = m.mask_binary(&doc, b"\x01{\"ssn\": \"123-45-6789\"}", &mut f, &mut r)
    else {
        panic!("masked")
    };
    assert_eq!(j, b"\x01{\"ssn\": \"***-**-6789\"}");
    // date of birth, binary: days since 2000-01-01 → Jan 1 of the same year
    let dob = m.plan(&col("public", "users", "birth_date", "date", 1082));
    let d1985_03_14: i32 = -5406;
    let Outcome::Masked(d) = m.mask_binary(&dob, &d1985_03_14.to_be_bytes(), &mut f, &mut r) else {
        panic!("masked")
    };
    assert_eq!(i32::from_be_bytes([d[0], d[1], d[2], d[3]]), -5478); // 1985-01-01
    assert_eq!(
        m.mask_text(&dob, b"1985-03-14", &mut f, &mut r),
        Outcome::Masked(b"1985-01-01".to_vec())
    );
    // inet, binary
    let ip = m.plan(&col("public", "sessions", "client", "inet", 869));
    let Outcome::Masked(i) = m.mask_binary(&ip, &[2, 32, 0, 4, 10, 1, 2, 3], &mut f, &mut r) else {
        panic!("masked")
    };
    assert_eq!(i, vec![2, 32, 0, 4, 10, 1, 0, 0]);
    // a number column named like a card: NULL in text, NULL in binary
    let n = m.plan(&col("public", "payments", "card_number", "numeric", 1700));
    assert_eq!(
        m.mask_text(&n, b"4111111111111111", &mut f, &mut r),
        Outcome::Null
    );
    assert_eq!(
        m.mask_binary(&n, b"\x00\x04", &mut f, &mut r),
        Outcome::Null
    );
    // an array scanned in binary cannot be masked
    let arr = m.plan(&col("public", "users", "tags", "_text", 1009));
    assert_eq!(
        m.mask_binary(&arr, b"\x00\x00\x00\x01", &mut f, &mut r),
        Outcome::CannotMask
    );
    assert!(r.count(Kind::Email) >= 2 && r.cannot_mask == 2 && r.values_nulled == 2);
}

/// Inputs for the fast paths: spacing, case, long values (more than one
/// 64-byte feed block), non-ASCII (the slow path), empty.
const FAST_PATH_INPUTS: &[&str] = &[
    "",
    "  ",
    "Mary.Smith1@Example.COM",
    " \t mary smith \x0b",
    "  Jean-Luc   PICARD\r\n",
    "José Álvarez",
    "+1 (415) 555-2671",
    "123-45-6789",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "acct 0012-3456-7890 ext",
    "a-very-long-local-part-that-goes-on-and-on-and-on.beyond.one.block@sub.example.org",
    "1234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "no at sign",
];

#[test]
fn digest_without_allocation_matches_normalize() {
    let m = m();
    for &kind in Kind::ALL.iter() {
        for v in FAST_PATH_INPUTS {
            let mut reference = m.mac.clone();
            reference.update(kind.as_str().as_bytes());
            reference.update(&[0]);
            reference.update(normalize(kind, v).as_bytes());
            let reference: [u8; 32] = reference.finalize().into_bytes().into();
            assert_eq!(m.digest(kind, v), reference, "{kind} {v:?}");
        }
    }
}

#[test]
fn mask_into_writes_what_mask_with_returns() {
    let m = m();
    for &kind in Kind::ALL.iter() {
        for strategy in Strategy::ALL {
            for v in FAST_PATH_INPUTS {
                let mut out = b"prefix".to_vec();
                let written = m.mask_into(kind, strategy, v, &mut out);
                match m.mask_with(kind, strategy, v) {
                    Some(expected) => {
                        assert!(written, "{kind} {strategy} {v:?}");
                        assert_eq!(
                            String::from_utf8_lossy(&out[6..]),
                            expected,
                            "{kind} {strategy} {v:?}"
                        );
                    }
                    None => assert!(!written && out == b"prefix", "{kind} {strategy} {v:?}"),
                }
            }
        }
    }
}

fn text(m: &Masker, plan: &ColumnPlan, v: &str) -> Outcome {
    m.mask_text(
        plan,
        v.as_bytes(),
        &mut Vec::new(),
        &mut MaskReport::default(),
    )
}

#[test]
fn date_arrays_of_birth_dates_are_masked_per_element() {
    let m = m();
    for (name, ty, oid) in [
        ("birth_dates", "_date", 1182),
        ("dob_history", "_date", 1182),
    ] {
        assert_eq!(
            m.plan(&col("public", "people", name, ty, oid)),
            ColumnPlan::Mask {
                kind: Kind::DateOfBirth,
                strategy: Strategy::Partial,
                value_type: ValueType::DateArray
            },
            "{name}"
        );
    }
    let plan = m.plan(&col("public", "people", "birth_dates", "_date", 1182));
    assert_eq!(
        text(&m, &plan, "{1985-03-14,NULL,infinity,1990-07-01}"),
        Outcome::Masked(b"{1985-01-01,NULL,infinity,1990-01-01}".to_vec())
    );
    assert_eq!(
        text(&m, &plan, "[0:1]={{1985-03-14},{1990-07-01}}"),
        Outcome::Masked(b"[0:1]={{1985-01-01},{1990-01-01}}".to_vec())
    );
    // not ISO (another DateStyle, BC): withheld whole
    assert_eq!(text(&m, &plan, "{03/14/1985}"), Outcome::Null);
    assert_eq!(text(&m, &plan, "{\"0044-03-15 BC\"}"), Outcome::Null);
    // timestamps, ranges and multiranges of dates can only be NULL
    for (ty, oid) in [
        ("_timestamptz", 1185),
        ("daterange", 3912),
        ("datemultirange", 4535),
        ("_datemultirange", 6155),
    ] {
        let p = m.plan(&col("public", "people", "date_of_birth", ty, oid));
        assert!(
            matches!(
                p,
                ColumnPlan::Mask {
                    kind: Kind::DateOfBirth,
                    strategy: Strategy::Null,
                    ..
                }
            ),
            "{ty}: {p:?}"
        );
    }
    // dates nobody named a birth date pass
    assert_eq!(
        m.plan(&col("public", "orders", "ship_dates", "_date", 1182)),
        ColumnPlan::Pass
    );
}

#[test]
fn binary_date_arrays_are_masked_per_element() {
    let m = m();
    let plan = m.plan(&col("public", "people", "birth_dates", "_date", 1182));
    // 1985-03-14 is day -5406 from 2000-01-01; 1985-01-01 is -5478
    let mut v = Vec::new();
    for x in [1i32, 1, 1082, 2, 1] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(&4i32.to_be_bytes());
    v.extend_from_slice(&(-5406i32).to_be_bytes());
    v.extend_from_slice(&(-1i32).to_be_bytes());
    let (mut f, mut r) = (Vec::new(), MaskReport::default());
    let Outcome::Masked(out) = m.mask_binary(&plan, &v, &mut f, &mut r) else {
        panic!("not masked");
    };
    assert_eq!(&out[..24], &v[..24]);
    assert_eq!(&out[24..28], &(-5478i32).to_be_bytes());
    assert_eq!(&out[28..], &(-1i32).to_be_bytes());
    assert_eq!(
        m.mask_binary(&plan, &v[..v.len() - 1], &mut f, &mut r),
        Outcome::CannotMask
    );
}

#[test]
fn bytea_holding_text_is_scanned_after_decoding() {
    let m = m();
    let scan = m.plan(&col("public", "t", "convert_to", "bytea", 17));
    assert_eq!(
        scan,
        ColumnPlan::Scan {
            value_type: ValueType::Bytea
        }
    );
    let hex = |s: &[u8]| -> String {
        let mut out = Vec::new();
        crate::bytea::encode_hex(s, &mut out);
        String::from_utf8(out).unwrap()
    };
    let decode = |o: Outcome| -> String {
        let Outcome::Masked(v) = o else {
            panic!("not masked: {o:?}");
        };
        let mut out = Vec::new();
        assert!(crate::bytea::decode_text(&v, &mut out));
        String::from_utf8_lossy(&out).into_owned()
    };
    let masked = decode(text(&m, &scan, &hex(b"ssn 123-45-6789")));
    assert_eq!(masked, "ssn ***-**-6789");
    // escape format (bytea_output = escape)
    let masked = decode(text(&m, &scan, "mail carol@example.net\\000"));
    assert!(!masked.contains("carol@") && masked.starts_with("mail "));
    // bytes that are not UTF-8 are binary data, never rewritten
    assert_eq!(
        text(&m, &scan, &hex(b"carol@example.net\xff")),
        Outcome::Unchanged
    );
    // images and hashes: nothing found, sent as they are
    assert_eq!(
        text(&m, &scan, &hex(&[0x89, b'P', b'N', b'G', 0, 1, 2, 3])),
        Outcome::Unchanged
    );
    // binary format: the bytes themselves
    let (mut f, mut r) = (Vec::new(), MaskReport::default());
    let Outcome::Masked(out) = m.mask_binary(&scan, b"to carol@example.net", &mut f, &mut r) else {
        panic!("not masked");
    };
    assert!(out.starts_with(b"to ") && !out.windows(6).any(|w| w == b"carol@"));
    // named like PII: withheld whole, in both formats
    let named = m.plan(&col("public", "t", "email", "bytea", 17));
    assert!(matches!(
        named,
        ColumnPlan::Mask {
            kind: Kind::Email,
            strategy: Strategy::Null,
            ..
        }
    ));
    assert_eq!(text(&m, &named, &hex(b"a@b.example")), Outcome::Null);
    assert_eq!(
        m.mask_binary(&named, b"a@b.example", &mut f, &mut r),
        Outcome::Null
    );
}
