use super::*;
use crate::{ColumnInfo, Kind, Strategy, ValueType};

const KEY: [u8; 32] = [9; 32];

fn plans(m: &Masker) -> Vec<ColumnPlan> {
    [
        ("id", "int4", 23),
        ("email", "text", 25),
        ("notes", "text", 25),
        ("ssn", "text", 25),
    ]
    .iter()
    .map(|(c, t, o)| {
        m.plan(&ColumnInfo {
            schema: Some("public".into()),
            table: Some("users".into()),
            column: (*c).into(),
            pg_type_name: (*t).into(),
            type_oid: *o,
        })
    })
    .collect()
}

#[test]
fn text_row_round_trip() {
    let m = Masker::new(&KEY);
    let p = plans(&m);
    let mut r = MaskReport::default();
    let row = b"7\tann@example.com\tcard 4111 1111 1111 1111\\nline two\\tx\t123-45-6789\n";
    let out = mask_text_row(&m, &TextFormat::default(), &p, row, &mut r)
        .expect("ok")
        .expect("changed");
    let s = String::from_utf8(out).expect("utf8");
    assert!(s.ends_with('\n'));
    let fields: Vec<&str> = s.trim_end_matches('\n').split('\t').collect();
    assert_eq!(fields.len(), 4);
    assert_eq!(fields[0], "7");
    assert!(fields[1].ends_with("@token.invalid"));
    assert_eq!(fields[2], "card **** **** **** 1111\\nline two\\tx");
    assert_eq!(fields[3], "***-**-6789");
    // NULLs stay NULL, unchanged rows are not copied
    let nulls = b"8\t\\N\t\\N\t\\N\n";
    assert_eq!(
        mask_text_row(&m, &TextFormat::default(), &p, nulls, &mut r),
        Ok(None)
    );
    let quiet = b"9\t\\N\tnothing here\t\\N";
    assert_eq!(
        mask_text_row(&m, &TextFormat::default(), &p, quiet, &mut r),
        Ok(None)
    );
    // wrong field count fails closed
    assert!(matches!(
        mask_text_row(&m, &TextFormat::default(), &p, b"1\t2\n", &mut r),
        Err(CopyError::ColumnCount {
            expected: 4,
            found: 2
        })
    ));
}

#[test]
fn text_escapes() {
    let mut v = Vec::new();
    unescape_text(b"a\\tb\\\\c\\nd\\101\\x41\\|e", &mut v);
    assert_eq!(v, b"a\tb\\c\ndAA|e");
    let mut e = Vec::new();
    escape_text(b"a\tb\\c\nd|e\r", b'|', &mut e);
    assert_eq!(e, b"a\\tb\\\\c\\nd\\|e\\r");
    // custom delimiter: an escaped delimiter does not split
    let m = Masker::new(&KEY);
    let p = plans(&m);
    let fmt = TextFormat {
        delimiter: b'|',
        null: b"NULL".to_vec(),
    };
    let mut r = MaskReport::default();
    let out = mask_text_row(&m, &fmt, &p, b"1|NULL|a\\|b bob@example.com|NULL\n", &mut r)
        .expect("ok")
        .expect("changed");
    let s = String::from_utf8(out).expect("utf8");
    assert!(
        s.starts_with("1|NULL|a\\|b u_") && s.ends_with("@token.invalid|NULL\n"),
        "{s}"
    );
    // an escaped backslash does not escape the delimiter after it
    let mut fields = Vec::new();
    split_text_fields(b"a\\\\|b\\|c|d", b'|', &mut fields);
    assert_eq!(fields, vec![0..3, 4..8, 9..10]);
}

#[test]
fn csv_round_trip_with_multiline_fields() {
    let m = Masker::new(&KEY);
    let p = plans(&m);
    let fmt = CsvFormat::default();
    let data = b"1,ann@example.com,\"first line\nsecond, with ssn 123-45-6789 and \"\"quotes\"\"\",\n2,,\"\",078-05-1121\n3,\"\",plain,\n";
    let mut sp = RecordSplitter::csv(&fmt);
    // feed in awkward chunks
    for chunk in data.chunks(7) {
        sp.push(chunk);
    }
    let mut records = Vec::new();
    while let Some(rec) = sp.next_record() {
        records.push(rec);
    }
    assert_eq!(sp.finish(), None);
    assert_eq!(records.len(), 3);
    let mut r = MaskReport::default();
    let out0 = mask_csv_record(&m, &fmt, &p, &records[0], &mut r)
        .expect("ok")
        .expect("changed");
    let f0 = parse_csv_record(&fmt, &out0).expect("parse");
    assert_eq!(f0.len(), 4);
    assert!(String::from_utf8_lossy(&f0[1].value).ends_with("@token.invalid"));
    assert_eq!(
        f0[2].value,
        b"first line\nsecond, with ssn ***-**-6789 and \"quotes\""
    );
    assert!(f0[3].value.is_empty() && !f0[3].quoted, "NULL stays NULL");
    let out1 = mask_csv_record(&m, &fmt, &p, &records[1], &mut r)
        .expect("ok")
        .expect("changed");
    assert_eq!(
        out1, b"2,,\"\",***-**-1121\n",
        "quoted empty string stays non-NULL"
    );
    // a quoted empty string under a masking plan is masked as a value, not NULL
    let out2 = mask_csv_record(&m, &fmt, &p, &records[2], &mut r)
        .expect("ok")
        .expect("changed");
    let f2 = parse_csv_record(&fmt, &out2).expect("parse");
    assert!(f2[1].quoted || !f2[1].value.is_empty());
}

#[test]
fn csv_custom_quote_escape_null() {
    let m = Masker::new(&KEY);
    let p = plans(&m);
    let fmt = CsvFormat {
        delimiter: b';',
        quote: b'\'',
        escape: b'\\',
        null: b"NULL".to_vec(),
    };
    let rec = b"5;NULL;'it\\'s 123-45-6789; ok';'NULL'\n";
    let mut r = MaskReport::default();
    let out = mask_csv_record(&m, &fmt, &p, rec, &mut r)
        .expect("ok")
        .expect("changed");
    let f = parse_csv_record(&fmt, &out).expect("parse");
    assert_eq!(f[1].value, b"NULL");
    assert!(!f[1].quoted);
    assert_eq!(f[2].value, b"it's ***-**-6789; ok");
    // the string 'NULL' (quoted) was a value: masked as an SSN column value
    assert!(f[3].quoted || f[3].value != b"NULL");
    let mut sp = RecordSplitter::csv(&fmt);
    sp.push(b"1;'a\\'\nb';c\n2;d;e\n");
    assert_eq!(sp.next_record().as_deref(), Some(&b"1;'a\\'\nb';c\n"[..]));
    assert_eq!(sp.next_record().as_deref(), Some(&b"2;d;e\n"[..]));
}

fn binary_copy(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
    let mut v = BINARY_SIGNATURE.to_vec();
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    for row in rows {
        v.extend_from_slice(&(row.len() as i16).to_be_bytes());
        for f in row {
            match f {
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
    }
    v.extend_from_slice(&(-1i16).to_be_bytes());
    v
}

fn parse_binary(data: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut rows = Vec::new();
    let mut p = 19;
    loop {
        let n = i16::from_be_bytes([data[p], data[p + 1]]);
        p += 2;
        if n == -1 {
            break;
        }
        let mut row = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]);
            p += 4;
            if len < 0 {
                row.push(None);
            } else {
                row.push(Some(data[p..p + len as usize].to_vec()));
                p += len as usize;
            }
        }
        rows.push(row);
    }
    assert_eq!(p, data.len());
    rows
}

#[test]
fn binary_copy_round_trip() {
    let m = Masker::new(&KEY);
    let p = plans(&m);
    let input = binary_copy(&[
        vec![
            Some(&1i32.to_be_bytes()[..]),
            Some(b"ann@example.com"),
            Some(b"hi 4111111111111111"),
            None,
        ],
        vec![
            Some(&2i32.to_be_bytes()[..]),
            None,
            Some(b"nothing"),
            Some(b"123-45-6789"),
        ],
    ]);
    for chunk_size in [1, 3, 19, 64, input.len()] {
        let mut rw = BinaryCopyRewriter::new(p.clone(), CannotMaskPolicy::Fail);
        let mut out = Vec::new();
        let mut r = MaskReport::default();
        for c in input.chunks(chunk_size) {
            rw.push(&m, c, &mut out, &mut r).expect("push");
        }
        assert!(rw.is_done());
        let rows = parse_binary(&out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0].as_deref(), Some(&1i32.to_be_bytes()[..]));
        assert!(rows[0][1]
            .as_ref()
            .is_some_and(|v| v.ends_with(b"@token.invalid")));
        assert_eq!(rows[0][2].as_deref(), Some(&b"hi ************1111"[..]));
        assert_eq!(rows[0][3], None);
        assert_eq!(rows[1][2].as_deref(), Some(&b"nothing"[..]));
        assert_eq!(rows[1][3].as_deref(), Some(&b"***-**-6789"[..]));
        assert_eq!(r.count(Kind::Email), 1);
    }
}

#[test]
fn binary_copy_fails_closed() {
    let m = Masker::new(&KEY);
    let arr = ColumnPlan::Scan {
        value_type: ValueType::Structured,
    };
    let masked_int = ColumnPlan::Mask {
        kind: Kind::Card,
        strategy: Strategy::Partial,
        value_type: ValueType::Other,
    };
    let input = binary_copy(&[vec![Some(b"\x00\x00\x00\x01"), Some(b"\x00\x01")]]);
    let mut out = Vec::new();
    let mut r = MaskReport::default();
    let mut fail = BinaryCopyRewriter::new(vec![ColumnPlan::Pass, arr], CannotMaskPolicy::Fail);
    assert_eq!(
        fail.push(&m, &input, &mut out, &mut r),
        Err(CopyError::CannotMask { column: 1 })
    );
    let mut null = BinaryCopyRewriter::new(vec![arr, masked_int], CannotMaskPolicy::SendNull);
    out.clear();
    null.push(&m, &input, &mut out, &mut r).expect("push");
    assert_eq!(parse_binary(&out), vec![vec![None, None]]);
    let mut bad = BinaryCopyRewriter::new(vec![], CannotMaskPolicy::Fail);
    assert!(bad
        .push(&m, b"NOTPGCOPY__________", &mut out, &mut r)
        .is_err());
}
