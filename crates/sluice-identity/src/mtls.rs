//! Client certificates as identities: read the names in a certificate (the
//! subject's common name and the subjectAltName emails, URIs and DNS names)
//! and map them to a principal by rules from config.
//!
//! The certificate has already been verified against the configured client
//! CA by the TLS handshake; this only reads it. The DER reader is small and
//! bounds-checked: anything it does not understand yields no name, never a
//! panic.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::principal::{Principal, PrincipalKind};

/// The names a certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// Subject common name(s).
    pub cn: Vec<String>,
    /// subjectAltName rfc822Name entries.
    pub emails: Vec<String>,
    /// subjectAltName uniformResourceIdentifier entries.
    pub uris: Vec<String>,
    /// subjectAltName dNSName entries.
    pub dns: Vec<String>,
}

/// Which certificate field a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// Subject common name.
    Cn,
    /// SAN email.
    SanEmail,
    /// SAN URI (e.g. a SPIFFE id).
    SanUri,
    /// SAN DNS name.
    SanDns,
}

impl FromStr for CertField {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "cn" => CertField::Cn,
            "san_email" => CertField::SanEmail,
            "san_uri" => CertField::SanUri,
            "san_dns" => CertField::SanDns,
            other => {
                return Err(format!(
                    "unknown field {other:?}; expected cn, san_email, san_uri or san_dns"
                ))
            }
        })
    }
}

/// One `[[mtls]]` rule: which field, which values, and the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRule {
    /// The field read.
    pub from: CertField,
    /// Only values starting with this (empty: any).
    pub prefix: String,
    /// Principal name; `None` uses the field's value.
    pub name: Option<String>,
    /// Kind.
    pub kind: PrincipalKind,
    /// Groups.
    pub groups: Vec<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
}

/// The principal for a verified certificate: the first rule with a
/// matching value wins. `None` when no rule matches.
pub fn principal_for(names: &CertNames, rules: &[CertRule]) -> Option<Principal> {
    rules.iter().find_map(|rule| {
        let values = match rule.from {
            CertField::Cn => &names.cn,
            CertField::SanEmail => &names.emails,
            CertField::SanUri => &names.uris,
            CertField::SanDns => &names.dns,
        };
        let value = values.iter().find(|v| v.starts_with(&rule.prefix))?;
        let subject = names
            .cn
            .first()
            .map(|cn| format!("CN={cn}"))
            .unwrap_or_else(|| value.clone());
        Some(Principal {
            name: rule.name.clone().unwrap_or_else(|| value.clone()),
            kind: rule.kind,
            groups: rule.groups.clone(),
            attributes: rule.attributes.clone(),
            method: "mtls",
            subject: Some(subject),
            ..Default::default()
        })
    })
}

/// One DER element: (tag, contents, rest).
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

/// Iterate the elements of a constructed value.
fn children(mut b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, content, rest) = element(b)?;
        b = rest;
        Some((tag, content))
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3 commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17 subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

fn text(tag: u8, v: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, T61String (read as Latin-1-ish ASCII).
        0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(v).ok().map(str::to_owned),
        // BMPString: UTF-16BE.
        0x1e => {
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// Read the names of a DER certificate.
pub fn cert_names(der: &[u8]) -> CertNames {
    let mut out = CertNames::default();
    let _ = read_names(der, &mut out);
    out
}

fn read_names(der: &[u8], out: &mut CertNames) -> Option<()> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut fields = children(tbs).peekable();
    // version [0] EXPLICIT is optional.
    if fields.peek().is_some_and(|(t, _)| *t == 0xa0) {
        fields.next();
    }
    let _serial = fields.next()?;
    let _signature = fields.next()?;
    let _issuer = fields.next()?;
    let _validity = fields.next()?;
    let (SEQUENCE, subject) = fields.next()? else {
        return None;
    };
    for (tag, rdn) in children(subject) {
        if tag != SET {
            continue;
        }
        for (_, atv) in children(rdn) {
            let mut parts = children(atv);
            let (OID, oid) = parts.next()? else { continue };
            let (vt, v) = parts.next()?;
            if oid == OID_CN {
                if let Some(s) = text(vt, v) {
                    out.cn.push(s);
                }
            }
        }
    }
    let _spki = fields.next()?;
    for (tag, content) in fields {
        // extensions [3] EXPLICIT SEQUENCE OF Extension
        if tag != 0xa3 {
            continue;
        }
        let (SEQUENCE, exts, _) = element(content)? else {
            return None;
        };
        for (_, ext) in children(exts) {
            let mut parts = children(ext).peekable();
            let (OID, oid) = parts.next()? else { continue };
            if oid != OID_SAN {
                continue;
            }
            // critical BOOLEAN DEFAULT FALSE is optional.
            if parts.peek().is_some_and(|(t, _)| *t == 0x01) {
                parts.next();
            }
            let (0x04, value) = parts.next()? else {
                continue;
            };
            let (SEQUENCE, names, _) = element(value)? else {
                continue;
            };
            for (tag, v) in children(names) {
                let Ok(s) = std::str::from_utf8(v) else {
                    continue;
                };
                match tag {
                    0x81 => out.emails.push(s.to_owned()),
                    0x82 => out.dns.push(s.to_owned()),
                    0x86 => out.uris.push(s.to_owned()),
                    _ => {}
                }
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Sluice tests");
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_are_read() {
        let der = cert(
            "etl-job",
            vec![
                rcgen::SanType::Rfc822Name("etl@example.com".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://example.com/etl".try_into().unwrap()),
                rcgen::SanType::DnsName("etl.internal".try_into().unwrap()),
            ],
        );
        let n = cert_names(&der);
        assert_eq!(n.cn, ["etl-job"]);
        assert_eq!(n.emails, ["etl@example.com"]);
        assert_eq!(n.uris, ["spiffe://example.com/etl"]);
        assert_eq!(n.dns, ["etl.internal"]);
    }

    #[test]
    fn garbage_yields_nothing() {
        assert_eq!(cert_names(b""), CertNames::default());
        assert_eq!(
            cert_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            CertNames::default()
        );
        let der = cert("x", vec![]);
        for cut in [1, 10, der.len() / 2, der.len() - 1] {
            let _ = cert_names(&der[..cut]);
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let names = CertNames {
            cn: vec!["etl-job".into()],
            uris: vec!["spiffe://example.com/agents/summarizer".into()],
            ..Default::default()
        };
        let rule = |from, prefix: &str, name: Option<&str>, kind| CertRule {
            from,
            prefix: prefix.into(),
            name: name.map(str::to_owned),
            kind,
            groups: vec![],
            attributes: BTreeMap::new(),
        };
        let rules = [
            rule(
                CertField::SanUri,
                "spiffe://example.com/services/",
                None,
                PrincipalKind::Service,
            ),
            rule(
                CertField::SanUri,
                "spiffe://example.com/agents/",
                Some("summarizer"),
                PrincipalKind::Agent,
            ),
            rule(CertField::Cn, "", None, PrincipalKind::Service),
        ];
        let p = principal_for(&names, &rules).unwrap();
        assert_eq!(
            (p.name.as_str(), p.kind, p.method),
            ("summarizer", PrincipalKind::Agent, "mtls")
        );
        let p = principal_for(
            &CertNames {
                cn: vec!["x".into()],
                ..Default::default()
            },
            &rules,
        )
        .unwrap();
        assert_eq!(p.name, "x");
        assert!(principal_for(&CertNames::default(), &rules).is_none());
    }
}
