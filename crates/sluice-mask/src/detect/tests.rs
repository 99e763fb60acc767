use super::*;

fn kinds(text: &str) -> Vec<(Kind, &str)> {
    scan(text)
        .into_iter()
        .map(|f| (f.kind, &text[f.range]))
        .collect()
}

fn none(texts: &[&str]) {
    for t in texts {
        assert_eq!(kinds(t), vec![], "false positive in {t:?}");
    }
}

fn whole(kind: Kind, texts: &[&str]) {
    for t in texts {
        assert_eq!(detect(t), Some(kind), "{t:?} should be {kind}");
    }
}

#[test]
fn email() {
    whole(
        Kind::Email,
        &[
            "john.doe@example.com",
            "a+tag@sub.example.co.uk",
            " x_y-z@mail.example.org ",
        ],
    );
    assert_eq!(
        kinds("contact: Jane <jane.o'neil@example.de>, thanks."),
        vec![(Kind::Email, "jane.o'neil@example.de")]
    );
    assert_eq!(
        kinds("mailto:bob@example.com"),
        vec![(Kind::Email, "bob@example.com")]
    );
    none(&[
        "@handle",
        "user@localhost",
        "a@b.c",
        "price @ 5.00",
        "foo@bar",
        "name@.com",
        "..@example.com",
    ]);
    assert_eq!(kinds("x@1.2.3.4"), vec![(Kind::IpAddress, "1.2.3.4")]);
}

#[test]
fn phone() {
    whole(
        Kind::Phone,
        &[
            "(415) 555-2671",
            "415-555-2671",
            "415.555.2671",
            "+1-415-555-2671",
            "1-415-555-2671",
            "+14155552671",
            "+44 20 7946 0958",
            "+44(0)115 4960914",
            "020 7946 0958",
            "(0161) 4960066",
            "+49 30 1234567",
            "+49 (0) 9141 777631",
            "030 1234567",
            "0171 1234567",
            "01 23 45 67 89",
            "+33 (0)1 41 63 60 83",
            "+34 948 812 415",
            "612 345 678",
            "(0406)-812415",
            "0961073668",
            "797-386-9073x6625",
            "001-415-555-2671",
        ],
    );
    assert_eq!(
        kinds("call (415) 555-2671 after 5pm"),
        vec![(Kind::Phone, "(415) 555-2671")]
    );
    none(&[
        "2024-01-02",
        "2024-01-02 10:30:00",
        "2024-01-02T10:30:00Z",
        "01.02.2024 10:30",
        "02/03/2024 12",
        "1700000000",
        "4155552671",
        "1234567890123",
        "version 3.12.1",
        "v10.0.19041.1",
        "order 100023456789",
        "ORD-2024-000123",
        "SKU-4821-XL",
        "19.99",
        "1,234,567.00",
        "Total: 123 456 789 items",
        "0000123456",
        "page 12 of 300",
        "3.14159265358979",
    ]);
}

#[test]
fn ssn() {
    whole(Kind::Ssn, &["123-45-6789", "078-05-1121", "123 45 6789"]);
    assert_eq!(kinds("SSN: 219-09-9998."), vec![(Kind::Ssn, "219-09-9998")]);
    for bad in [
        "000-45-6789",
        "666-45-6789",
        "900-45-6789",
        "123-00-6789",
        "123-45-0000",
    ] {
        assert_ne!(detect(bad), Some(Kind::Ssn), "{bad}");
    }
    none(&["123-45-67890", "123456789", "A123-45-6789", "123-45-6789-0"]);
}

#[test]
fn card() {
    whole(
        Kind::Card,
        &[
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555555555554444",
            "2223003122003222",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "6200000000000005",
            "6759649826438453",
            "4012888888881881",
            "4222222222222",
            "4000056655665556",
        ],
    );
    assert_eq!(
        kinds("paid with 4111 1111 1111 1111, exp 12/27"),
        vec![(Kind::Card, "4111 1111 1111 1111")]
    );
    none(&[
        "4111111111111112",         // Luhn fails
        "1234567812345670",         // Luhn ok, no issuer
        "9999999999999995",         // Luhn ok, no issuer
        "4111 1111-1111 1111",      // mixed separators
        "41111 11111 11111 1",      // not a card grouping
        "4006381333931",            // EAN-13 barcode, Luhn-valid 4-prefix
        "20240102153045123",        // compact timestamp
        "ref 41111111111111110000", // too long
    ]);
}

#[test]
fn iban() {
    whole(
        Kind::Iban,
        &[
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "IT60X0542811101000000123456",
            "ES9121000418450200051332",
        ],
    );
    assert_eq!(
        kinds("IBAN: DE89 3704 0044 0532 0130 00 (Berlin)"),
        vec![(Kind::Iban, "DE89 3704 0044 0532 0130 00")]
    );
    none(&[
        "DE89370400440532013001",
        "XX89370400440532013000",
        "DE8937040044053201300",
    ]);
}

#[test]
fn ip_addresses() {
    whole(
        Kind::IpAddress,
        &[
            "192.168.1.20",
            "8.8.8.8",
            "2001:db8::1",
            "fe80::1ff:fe23:4567:890a",
            "::ffff:10.0.0.1",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        ],
    );
    assert_eq!(
        kinds("from 10.0.0.1:5432 and 10.0.0.2"),
        vec![(Kind::IpAddress, "10.0.0.1"), (Kind::IpAddress, "10.0.0.2")]
    );
    none(&[
        "1.2.3",
        "256.1.1.1",
        "1.2.3.4.5",
        "01.02.03.04",
        "12:30:45",
        "00:1b:63:84:45:e6",
        "std::vector",
        "a::b",
        "v1.2.3.4a",
    ]);
}

#[test]
fn jwt() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    whole(Kind::Jwt, &[jwt]);
    let text = format!("Authorization: Bearer {jwt}");
    assert_eq!(kinds(&text), vec![(Kind::Jwt, jwt)]);
    // a header that does not decode to JSON with alg
    none(&["eyJzdWIiOiIxMjM0NTY3ODkwIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc"]);
}

#[test]
fn cloud_and_vendor_keys() {
    whole(
        Kind::AwsKey,
        &["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"],
    );
    assert_eq!(
        kinds("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        vec![(Kind::AwsKey, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")]
    );
    whole(Kind::GcpKey, &["AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"]);
    let azure = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;EndpointSuffix=core.windows.net";
    assert_eq!(
        kinds(azure),
        vec![(Kind::AzureKey, "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")]
    );
    let sas = "https://acct.blob.core.windows.net/c/f.txt?sv=2020-08-04&ss=b&srt=o&sp=r&se=2030-01-01&sig=a8Kd9%2FqZk2L0pXv7bN3mR5tW1yH6cJ4e%3D";
    assert_eq!(
        kinds(sas),
        vec![(Kind::AzureKey, "a8Kd9%2FqZk2L0pXv7bN3mR5tW1yH6cJ4e%3D")]
    );
    whole(
        Kind::GithubToken,
        &[
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
        ],
    );
    whole(
        Kind::SlackToken,
        &["xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"],
    );
    assert_eq!(
        kinds("hook https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX now"),
        vec![(Kind::SlackToken, "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX")]
    );
    whole(
        Kind::StripeKey,
        &[
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "rk_test_51H8abcdEFGHijklMNOPqrst",
        ],
    );
    // publishable keys are public by design
    assert_eq!(
        detect("pk_live_4eC39HqLyjWDarjtT1zdp7dc"),
        Some(Kind::Secret)
    );
}

#[test]
fn private_keys() {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----";
    whole(Kind::PrivateKey, &[pem]);
    let json = r#"{"type": "service_account", "private_key_id": "abc", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n", "client_email": "svc@proj.iam.gserviceaccount.com"}"#;
    let k = kinds(json);
    assert_eq!(k[0].0, Kind::PrivateKey);
    assert!(k[0].1.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(k[1], (Kind::Email, "svc@proj.iam.gserviceaccount.com"));
    // a missing END line masks to the end (fail closed)
    let cut = "key: -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49";
    assert_eq!(scan(cut)[0].range.end, cut.len());
    // certificates are public: no finding, and their body is not a "secret"
    none(&["-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ\n-----END CERTIFICATE-----"]);
}

#[test]
fn password_hashes() {
    whole(
        Kind::PasswordHash,
        &[
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "$2y$10$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a",
            "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            "$6$rounds=5000$saltstring$qnQ9O0Zh6P3nCvC4dFRy5hR0l9mI1g4bYHgd0T3nO2qHw1bY7V5r8jTAm7hk3s1W6bqjXqQ0Gq0yq3o4ZQ2Vb1",
            "$5$saltsalt$Fh4y3JtP0Q0z8kzqB9pH9y6pFQ3vV0KZc8wB1bI2o3C",
            "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVka2V5c3RvcmVka2V5c3RvcmVrZXk=:c2VydmVya2V5c2VydmVya2V5c2VydmVya2V5",
            "md5f5a2b1a89d3a4c7b1c8e9f0a1b2c3d4e",
            "pbkdf2_sha256$260000$Q0h1Z3JxZ2hZ$0n1bL2q+0Rc7lY9KX1nF0vPQ7sVQ1Yzq3vT0m8kqk5g=",
        ],
    );
    none(&[
        "costs $2 to $5",
        "$HOME/$USER",
        "echo $PATH",
        "price: $19.99",
    ]);
}

#[test]
fn context_secrets() {
    assert_eq!(
        kinds("host=db port=5432 user=app password=s3cr3t! sslmode=require"),
        vec![(Kind::Password, "s3cr3t!")]
    );
    assert_eq!(
        kinds(r#"{"user": "bob", "password": "hunter2", "token_count": 12}"#),
        vec![(Kind::Password, "hunter2")]
    );
    assert_eq!(
        kinds("postgres://app:Sup3rS3cret@db.internal:5432/app"),
        vec![(Kind::Password, "Sup3rS3cret")]
    );
    assert_eq!(
        kinds("GET /v1/items?api_key=abcd1234efgh5678&page=2"),
        vec![(Kind::ApiKey, "abcd1234efgh5678")]
    );
    assert_eq!(
        kinds("client_secret: 'ZmFrZS1jbGllbnQtc2VjcmV0LXZhbHVl'"),
        vec![(Kind::Secret, "ZmFrZS1jbGllbnQtc2VjcmV0LXZhbHVl")]
    );
    none(&[
        "password: null",
        r#"{"password_changed_at": "2024-01-02", "token_count": 5, "email_verified": true}"#,
        "password=${DB_PASSWORD}",
        "token: abc",
        "https://example.com/search?q=rust&page=2",
        "https://user@example.com/path",
    ]);
}

#[test]
fn national_ids() {
    whole(
        Kind::NationalId,
        &[
            "RSSMRA85T10A562S",
            "12345678Z",
            "X1234567L",
            "255081416802538",
            "137082B03399364",
        ],
    );
    none(&["12345678A", "RSSMRA85T10A562T"]);
}

#[test]
fn generic_secrets() {
    whole(
        Kind::Secret,
        &[
            "q8Zt3LmW0xP7vR2kN9sB4yF6hJ1cD5gT",
            "9vQ2xL7mK4pR8tZ1wN6bY3hF5jC0dG2s+Ke/Lq==",
            "kiywkvzFljQziLiKewMGvvELQAMsoxvV",
        ],
    );
    none(&[
        "550e8400-e29b-41d4-a716-446655440000",
        "d41d8cd98f00b204e9800998ecf8427e",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "SKU-4821-XL-BLUE-2024-RELEASE",
        "/usr/local/lib/python3.11/site-packages/faker/providers/__init__.py",
        "https://cdn.example.com/a8F3kLmN0pQrS9tUvW2xYz4Bc/img.png",
        "getUserAccountSettingsById2",
        "getUserAccountSettingsByIdAndName",
        "AbstractSingletonProxyFactoryBean",
        "VGhlIHF1aWNrIGJyb3duIGZveCBqdW1wcyBvdmVyIHRoZSBsYXp5IGRvZw==",
        "com.example.service.CustomerAccountRepositoryImpl",
        "The quick brown fox jumps over the lazy dog.",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36",
    ]);
}

#[test]
fn composite_and_array_values() {
    assert_eq!(
        kinds(r#"{alice@example.com,"bob@example.org"}"#),
        vec![
            (Kind::Email, "alice@example.com"),
            (Kind::Email, "bob@example.org")
        ]
    );
    assert_eq!(
        kinds("(42,4111111111111111,\"x\")"),
        vec![(Kind::Card, "4111111111111111")]
    );
    assert_eq!(
        kinds("ids (4111111111111111), (123-45-6789) and (10.0.0.1)."),
        vec![
            (Kind::Card, "4111111111111111"),
            (Kind::Ssn, "123-45-6789"),
            (Kind::IpAddress, "10.0.0.1")
        ]
    );
}

#[test]
fn findings_do_not_overlap() {
    let t = "api_key=ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 and AKIAIOSFODNN7EXAMPLE";
    let f = scan(t);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].kind, Kind::GithubToken);
    assert!(f[0].range.end <= f[1].range.start);
}

#[test]
fn ordinary_text_is_quiet() {
    none(&[
        "",
        "Hello, world!",
        "Order #12345 shipped on 2024-03-01 to the warehouse in aisle 7.",
        "Temperature was 21.5 degrees at 14:30 on 2024-06-01T14:30:00+02:00.",
        "Product SKU-4821-XL costs 19.99 EUR (was 24.99).",
        "Release 10.4.2 fixes bug 4521 and improves startup by 35%.",
        "{\"id\": 42, \"name\": \"widget\", \"tags\": [\"a\", \"b\"], \"ratio\": 0.25}",
        "c3f0e2a1-9b7d-4e5f-8a6b-1c2d3e4f5a6b",
    ]);
}

/// Adversarial inputs finish and find nothing (or the right thing). The scan
/// is linear by construction (see the module docs); this guards against a
/// regression to quadratic behaviour, which at 1 MB would take minutes.
#[test]
fn adversarial_inputs_complete() {
    let mb = 1 << 20;
    let inputs: Vec<Vec<u8>> = vec![
        b"a".repeat(mb / 2)
            .into_iter()
            .chain(b"@".repeat(mb / 2))
            .collect(),
        b"a@".repeat(mb / 2),
        b"1".repeat(mb),
        b"1 ".repeat(mb / 2),
        b"1-".repeat(mb / 2),
        b"$2b$".repeat(mb / 4),
        b"$1$a".repeat(mb / 4),
        b"password=".repeat(mb / 9),
        b"a://".repeat(mb / 4),
        b"::::".repeat(mb / 4),
        b"a:a:".repeat(mb / 4),
        b"-----BEGIN PRIVATE KEY-----".repeat(mb / 27),
        b"eyJ".repeat(mb / 3),
        b"eyJhbGciOiJIUzI1NiJ9.".repeat(mb / 21),
        b"DE89 ".repeat(mb / 5),
        b"Ab1".repeat(mb / 3),
        b"\"password\": \"".repeat(mb / 14),
    ];
    for input in &inputs {
        let f = scan_bytes(input);
        assert!(f.len() <= input.len());
    }
}

#[test]
fn swar_searches_match_naive() {
    let text = b"ab=cd:ef 0123@x$y  z9\xff\x80=:";
    for from in 0..=text.len() {
        let naive2 = text[from..]
            .iter()
            .position(|&c| c == b'=' || c == b':')
            .map(|o| o + from);
        assert_eq!(find2(text, from, b'=', b':'), naive2, "from {from}");
        let naive1 = text[from..]
            .iter()
            .position(|&c| c == b'$')
            .map(|o| o + from);
        assert_eq!(find1(text, from, b'$'), naive1);
        let naived = text[from..]
            .iter()
            .position(u8::is_ascii_digit)
            .map(|o| o + from);
        assert_eq!(find_digit(text, from), naived, "from {from}");
    }
    // every byte value, in every lane
    for v in 0..=255u8 {
        for lane in 0..8 {
            let mut buf = [b'x'; 16];
            buf[lane] = v;
            assert_eq!(
                find_digit(&buf, 0),
                v.is_ascii_digit().then_some(lane),
                "{v}"
            );
            assert_eq!(find1(&buf, 0, b'@'), (v == b'@').then_some(lane));
        }
    }
}

/// The word-at-a-time helpers agree with the byte table on every byte
/// value, at every position of a word, and on random texts.
#[test]
fn word_at_a_time_helpers_agree_with_the_byte_table() {
    let classes = [B64, WORD, IDENT, LHEX];
    let base = *b"aZ09_-+/";
    for c in 0..=255u8 {
        for pos in 0..8 {
            for filler in [b'a', b'7', b'_', b'-', b'/', b'f', b'G'] {
                let mut bytes = [filler; 8];
                bytes[pos] = c;
                let w = u64::from_le_bytes(bytes);
                for k in classes {
                    let want = bytes.iter().all(|&x| class(x) & k != 0);
                    assert_eq!(
                        word_all(w, k),
                        want,
                        "byte {c:#04x} at {pos} in {bytes:?}, class {k:#x}"
                    );
                }
                assert_eq!(
                    (in_range(w, b'0', b'9') >> 7).wrapping_mul(LO) >> 56,
                    bytes.iter().filter(|x| x.is_ascii_digit()).count() as u64
                );
                let eq = eq_exact(w, b'_');
                for (i, &x) in bytes.iter().enumerate() {
                    assert_eq!(eq >> (8 * i + 7) & 1 == 1, x == b'_', "{bytes:?}");
                }
            }
        }
        let w = u64::from_le_bytes(base);
        assert!(word_all(w, B64) && !word_all(w, WORD));
    }
    // random texts: runs and digit counts as a byte loop computes them
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"abcdef0123456789xyzXYZ_-+/ .\xc3\xa9@";
    for _ in 0..2000 {
        // some past 255 words, where the digit count flushes its lanes
        let len = (next() % if next() % 4 == 0 { 5000 } else { 700 }) as usize;
        let text: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        assert_eq!(
            count_digits(&text),
            text.iter().filter(|c| c.is_ascii_digit()).count()
        );
        for k in classes {
            let from = if len == 0 {
                0
            } else {
                (next() % len as u64) as usize
            };
            let mut want = from;
            while want < len && class(text[want]) & k != 0 {
                want += 1;
            }
            assert_eq!(
                run_end_in(&text, from, k),
                want,
                "class {k:#x} from {from} in {text:?}"
            );
        }
    }
}

/// Digests and digests followed by padding are never findings, and a
/// secret after a long hex run is still found.
#[test]
fn hex_runs_are_crossed_without_missing_what_follows() {
    none(&[
        "c4ca4238a0b923820dcc509a6f75849b",
        "c81e728d9d4c2f636f067f89cc14862cxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    ]);
    let t = "c4ca4238a0b923820dcc509a6f75849b key AKIAIOSFODNN7EXAMPLE";
    assert_eq!(kinds(t), vec![(Kind::AwsKey, "AKIAIOSFODNN7EXAMPLE")]);
    let t = "c4ca4238a0b923820dcc509a6f75849b,4111 1111 1111 1111";
    assert_eq!(kinds(t), vec![(Kind::Card, "4111 1111 1111 1111")]);
}
