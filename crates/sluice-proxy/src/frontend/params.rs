//! Which startup parameters a client may pass on to the upstream.
//!
//! Startup parameters can set any server setting, so they are input to
//! policy, not a pass-through string: a client must not pick the upstream
//! role, switch to an encoding whose bytes Sluice would read differently
//! from the server, or forge the `sluice.*` settings Sluice sets itself.

use sluice_identity::Principal;
use sluice_wire::messages::Startup;

use crate::error::SessionError;

/// Client encodings whose bytes mean the same to Sluice's UTF-8 reading as
/// to the server. (SJIS, BIG5, GBK, GB18030, UHC and JOHAB can hide a quote
/// or backslash inside a multibyte character.)
pub fn encoding_allowed(name: &str) -> bool {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(clean.as_str(), "utf8" | "unicode" | "sqlascii")
}

fn check_setting(name: &str, value: &str) -> Result<(), SessionError> {
    let lower = setting_name(name);
    match lower.as_str() {
        "client_encoding" if !encoding_allowed(value) => Err(SessionError::fatal_hint(
            "22023",
            format!("sluice: client_encoding \"{value}\" is not supported"),
            "use UTF8",
        )),
        "standard_conforming_strings" | "backslash_quote" => Err(SessionError::fatal(
            "42501",
            format!("sluice: the startup parameter \"{name}\" is not allowed; Sluice reads statements with standard_conforming_strings on"),
        )),
        "role" | "session_authorization" => Err(SessionError::fatal(
            "42501",
            format!("sluice: the startup parameter \"{name}\" is not allowed; Sluice chooses the upstream role"),
        )),
        _ if lower.starts_with("sluice.") => Err(SessionError::fatal(
            "42501",
            format!("sluice: the startup parameter \"{name}\" is reserved for Sluice"),
        )),
        _ => Ok(()),
    }
}

/// Split `options` as the server does: whitespace separates, backslash escapes.
fn split_options(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `name=value` settings of an `options` string: only `-c name=value`
/// and `--name=value` are accepted.
fn option_settings(options: &str) -> Result<Vec<(String, String)>, SessionError> {
    let words = split_options(options);
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().map(String::as_str)
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest)
        } else {
            w.strip_prefix("--")
        };
        let Some((name, value)) = setting.and_then(|s| s.split_once('=')) else {
            return Err(SessionError::fatal(
                "42501",
                format!(
                    "sluice: unsupported word {w:?} in the options parameter; use -c name=value"
                ),
            ));
        };
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// Check an `options` string, each setting like a startup parameter.
fn check_options(options: &str) -> Result<(), SessionError> {
    for (name, value) in option_settings(options)? {
        check_setting(&name, &value)?;
    }
    Ok(())
}

/// A setting's name as the server compares it.
fn setting_name(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('-', "_")
}

/// The search_path a session starts with when the client sets one: a
/// `search_path` parameter, else the last one in `options` (the server
/// applies `options` first, then the other parameters).
pub fn startup_search_path(params: &[(String, String)]) -> Option<String> {
    if let Some((_, v)) = params
        .iter()
        .rev()
        .find(|(k, _)| setting_name(k) == "search_path")
    {
        return Some(v.clone());
    }
    params
        .iter()
        .filter(|(k, _)| k == "options")
        .filter_map(|(_, v)| option_settings(v).ok())
        .flatten()
        .filter(|(n, _)| setting_name(n) == "search_path")
        .map(|(_, v)| v)
        .next_back()
}

/// The value of `standard_conforming_strings` the server reported at login,
/// when it is not `on`: Sluice would read string literals differently.
pub fn nonstandard_strings(server_params: &[(String, String)]) -> Option<&str> {
    server_params
        .iter()
        .find(|(k, _)| k == "standard_conforming_strings")
        .map(|(_, v)| v.as_str())
        .filter(|v| *v != "on")
}

/// The settings Sluice itself sends upstream, so the database can see who
/// is behind the session (e.g. in row level security policies with
/// `current_setting('sluice.attr.region', true)`): `sluice.principal`,
/// `sluice.kind`, `sluice.groups` (comma-separated), `sluice.method`,
/// `sluice.on_behalf_of` (when set) and `sluice.attr.<name>` per attribute.
/// Clients cannot send `sluice.*` themselves (see [`upstream_params`]), and
/// the guardrails refuse `SET sluice.*` later on.
pub fn identity_settings(p: &Principal) -> Vec<(String, String)> {
    // A NUL would end the value early in the startup packet.
    let clean = |v: &str| v.replace('\0', "");
    let mut out = vec![
        ("sluice.principal".to_owned(), clean(&p.name)),
        ("sluice.kind".to_owned(), p.kind.as_str().to_owned()),
        ("sluice.groups".to_owned(), clean(&p.groups.join(","))),
        ("sluice.method".to_owned(), p.method.to_owned()),
    ];
    if let Some(who) = &p.on_behalf_of {
        out.push(("sluice.on_behalf_of".to_owned(), clean(who)));
    }
    for (k, v) in &p.attributes {
        // Names that are not plain identifiers are kept for policy only.
        if sluice_config::valid_attribute_name(k) {
            out.push((format!("sluice.attr.{k}"), clean(v)));
        }
    }
    out
}

/// The parameters to send upstream (without user and database), or a refusal.
pub fn upstream_params(s: &Startup) -> Result<Vec<(String, String)>, SessionError> {
    let mut out = Vec::with_capacity(s.params.len());
    for (k, v) in &s.params {
        match k.as_str() {
            "user" | "database" | "replication" => continue,
            k if k.starts_with("_pq_.") => continue,
            "options" => check_options(v)?,
            _ => check_setting(k, v)?,
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Startup {
        Startup {
            minor_version: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn passes_ordinary_settings() {
        let p = upstream_params(&startup(&[
            ("user", "alice"),
            ("database", "app"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
            (
                "options",
                "-c search_path=app,public --statement-timeout=5s",
            ),
        ]))
        .unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0], ("application_name".into(), "psql".into()));
    }

    #[test]
    fn refuses_dangerous_settings() {
        for (k, v) in [
            ("client_encoding", "SJIS"),
            ("client_encoding", "gbk"),
            ("role", "postgres"),
            ("Session_Authorization", "postgres"),
            ("sluice.user", "admin"),
            ("options", "-c role=postgres"),
            ("options", "-crole=postgres"),
            ("options", "--client-encoding=BIG5"),
            ("options", "-c\\ client_encoding=BIG5"),
            ("options", "-B 100"),
        ] {
            assert!(upstream_params(&startup(&[(k, v)])).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn identity_settings_carry_the_principal() {
        let p = Principal {
            name: "alice@example.com".into(),
            groups: vec!["dev".into(), "ops".into()],
            attributes: [
                ("region".to_owned(), "eu".to_owned()),
                ("Bad-Name".to_owned(), "x".to_owned()),
            ]
            .into_iter()
            .collect(),
            method: "oidc",
            on_behalf_of: Some("bob".into()),
            ..Default::default()
        };
        let s = identity_settings(&p);
        let get = |k: &str| s.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("sluice.principal"), Some("alice@example.com"));
        assert_eq!(get("sluice.kind"), Some("human"));
        assert_eq!(get("sluice.groups"), Some("dev,ops"));
        assert_eq!(get("sluice.on_behalf_of"), Some("bob"));
        assert_eq!(get("sluice.attr.region"), Some("eu"));
        assert!(s.iter().all(|(k, _)| !k.contains("Bad")));
    }

    #[test]
    fn search_path_from_parameters_and_options() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(startup_search_path(&p(&[("application_name", "x")])), None);
        assert_eq!(
            startup_search_path(&p(&[("options", "-c search_path=hr")])).as_deref(),
            Some("hr")
        );
        assert_eq!(
            startup_search_path(&p(&[("options", "--search-path=a,b -csearch_path=hr")]))
                .as_deref(),
            Some("hr")
        );
        assert_eq!(
            startup_search_path(&p(&[
                ("options", "-c search_path=hr"),
                ("search_path", "app")
            ]))
            .as_deref(),
            Some("app")
        );
        assert_eq!(
            nonstandard_strings(&p(&[("standard_conforming_strings", "off")])),
            Some("off")
        );
        assert_eq!(
            nonstandard_strings(&p(&[("standard_conforming_strings", "on")])),
            None
        );
    }

    #[test]
    fn encodings() {
        for ok in ["UTF8", "utf-8", "Unicode", "SQL_ASCII"] {
            assert!(encoding_allowed(ok), "{ok}");
        }
        for bad in [
            "SJIS",
            "Shift_JIS_2004",
            "BIG5",
            "GB18030",
            "UHC",
            "JOHAB",
            "LATIN1",
        ] {
            assert!(!encoding_allowed(bad), "{bad}");
        }
    }
}
