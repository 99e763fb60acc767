//! Random inputs built from the characters detectors react to: no panic,
//! findings sorted, disjoint and on character boundaries, masking total.

use sluice_mask::copy::{
    mask_csv_record, mask_text_row, parse_csv_record, BinaryCopyRewriter, CannotMaskPolicy,
    CsvFormat, RecordSplitter, TextFormat,
};
use sluice_mask::{
    detect, scan, scan_bytes, ColumnPlan, Kind, MaskReport, Masker, Strategy, ValueType,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "0",
    "1",
    "4",
    "9",
    "41",
    "123",
    "4111",
    "2024",
    " ",
    "-",
    ".",
    "/",
    "(",
    ")",
    "+",
    "@",
    "$",
    "=",
    ":",
    "::",
    ",",
    ";",
    "\"",
    "'",
    "\\",
    "\n",
    "\t",
    "a",
    "Z",
    "x",
    "eyJ",
    "AKIA",
    "AIza",
    "ghp_",
    "xoxb-",
    "sk_live_",
    "$2b$12$",
    "md5",
    "-----BEGIN PRIVATE KEY-----",
    "-----END ",
    "://",
    "password=",
    "\"token\": \"",
    "DE89",
    "GB82 WEST ",
    "é",
    "€",
    "日本",
    "\u{feff}",
    "example.com",
    "Bearer ",
    "SCRAM-SHA-256$",
    "pbkdf2_sha256$",
    "fe80::",
    "1.2.3.4",
    "rv:",
    "X",
    "2B",
];

fn random_text(rng: &mut Rng) -> String {
    let n = rng.below(40);
    (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect()
}

#[test]
fn random_texts_never_panic_and_findings_are_well_formed() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let maskers: Vec<Masker> = Strategy::ALL
        .iter()
        .map(|&s| {
            let cfg = sluice_mask::MaskingConfig {
                default_strategy: Kind::ALL.iter().map(|&k| (k, s)).collect(),
                ..Default::default()
            };
            Masker::with_config(&[3; 32], &cfg).expect("masker")
        })
        .collect();
    for i in 0..20_000 {
        let t = random_text(&mut rng);
        let f = scan(&t);
        let mut last = 0;
        for x in &f {
            assert!(
                x.range.start >= last && x.range.start < x.range.end,
                "{t:?}: {f:?}"
            );
            assert!(
                t.is_char_boundary(x.range.start) && t.is_char_boundary(x.range.end),
                "{t:?}"
            );
            last = x.range.end;
        }
        let _ = detect(&t);
        let m = &maskers[i % maskers.len()];
        if let Some((out, kinds)) = m.mask_in_text(&t) {
            assert_eq!(kinds.len(), f.len());
            assert!(!out.is_empty());
        }
        for k in [
            Kind::Card,
            Kind::Email,
            Kind::IpAddress,
            Kind::DateOfBirth,
            Kind::Iban,
            Kind::Name,
        ] {
            let _ = m.mask(k, &t);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0xfeed_beef_0bad_cafe);
    let m = Masker::new(&[1; 32]);
    let plans = vec![
        ColumnPlan::Scan {
            value_type: ValueType::Text,
        },
        ColumnPlan::Mask {
            kind: Kind::Email,
            strategy: Strategy::Token,
            value_type: ValueType::Jsonb,
        },
        ColumnPlan::Mask {
            kind: Kind::DateOfBirth,
            strategy: Strategy::Partial,
            value_type: ValueType::Date,
        },
        ColumnPlan::Mask {
            kind: Kind::IpAddress,
            strategy: Strategy::Token,
            value_type: ValueType::Inet,
        },
    ];
    let mut report = MaskReport::default();
    let mut findings = Vec::new();
    for _ in 0..20_000 {
        let n = rng.below(64);
        let bytes: Vec<u8> = (0..n)
            .map(|_| {
                let pool = b"0123456789 \t\n\\,\"'@$=:-N.AZaz\x01\x02\xff\xc3";
                pool[rng.below(pool.len())]
            })
            .collect();
        let _ = scan_bytes(&bytes);
        for p in &plans {
            let _ = m.mask_text(p, &bytes, &mut findings, &mut report);
            let _ = m.mask_binary(p, &bytes, &mut findings, &mut report);
        }
        let _ = mask_text_row(&m, &TextFormat::default(), &plans, &bytes, &mut report);
        let _ = mask_csv_record(&m, &CsvFormat::default(), &plans, &bytes, &mut report);
        let _ = parse_csv_record(&CsvFormat::default(), &bytes);
        let mut sp = RecordSplitter::csv(&CsvFormat::default());
        sp.push(&bytes);
        while sp.next_record().is_some() {}
        let mut rw = BinaryCopyRewriter::new(plans.clone(), CannotMaskPolicy::SendNull);
        let mut framed = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        framed.extend_from_slice(&bytes);
        let mut out = Vec::new();
        let _ = rw.push(&m, &framed, &mut out, &mut report);
    }
}
