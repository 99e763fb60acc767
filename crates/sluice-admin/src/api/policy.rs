//! `POST /api/policy/validate`: check Cedar text against Sluice's schema
//! and together with the policies in force, without installing it.
//!
//! Three steps, the first failure answers: parse (Cedar's message with the
//! line and column), validate the text alone against the schema (strict
//! mode, with the line), then load it together with the policy directory
//! and the built-in guardrails exactly as a reload would (catching, say, a
//! duplicate `@id`), in a temporary directory.

use std::path::Path;
use std::str::FromStr;

use cedar_policy::{PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use serde::Serialize;

use super::error::ApiError;

/// A valid submission.
#[derive(Debug, Clone, Serialize)]
pub struct Valid {
    /// Always true.
    pub valid: bool,
    /// Policies in the submitted text.
    pub policies: usize,
    /// Cedar's warnings (the policy is valid, but may not do what is meant).
    pub warnings: Vec<Warning>,
}

/// A validator warning.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    /// What Cedar says.
    pub message: String,
    /// 1-based line in the submitted text, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// 1-based (line, column) of a byte offset in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where a diagnostic points in `text`: its first label, else that of the
/// first related diagnostic that has one.
fn location(d: &dyn Diagnostic, text: &str) -> Option<(usize, usize)> {
    if let Some(span) = d.labels().and_then(|mut l| l.next()) {
        return Some(line_col(text, span.offset()));
    }
    d.related()?
        .find_map(|r| r.labels().and_then(|mut l| l.next()))
        .map(|span| line_col(text, span.offset()))
}

fn invalid(message: String, at: Option<(usize, usize)>, hint: Option<String>) -> ApiError {
    let mut e = ApiError::unprocessable(
        "policy_invalid",
        match at {
            Some((line, column)) => format!("line {line}, column {column}: {message}"),
            None => message,
        },
    )
    .with("valid", false);
    if let Some((line, column)) = at {
        e = e.with("line", line).with("column", column);
    }
    if let Some(h) = hint {
        e = e.with("hint", h);
    }
    e
}

/// Is `name` usable as a file name in the policy directory?
pub fn valid_file_name(name: &str) -> bool {
    name.len() <= 128
        && name.ends_with(".cedar")
        && name.len() > ".cedar".len()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Validate `text`. `dir` and `disabled` are the `[policy]` in force;
/// `replaces` names a file of `dir` the text would replace (else it is
/// added). Blocking (reads the policy directory).
pub fn validate(
    text: &str,
    dir: Option<&Path>,
    disabled: &[String],
    replaces: Option<&str>,
) -> Result<Valid, ApiError> {
    let set = PolicySet::from_str(text).map_err(|e| {
        invalid(
            e.to_string(),
            location(&e, text),
            e.help().map(|h| h.to_string()),
        )
    })?;
    let (schema, _) = Schema::from_cedarschema_str(sluice_policy::SCHEMA)
        .map_err(|e| ApiError::internal(format!("the built-in schema does not load: {e}")))?;
    let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
    if let Some(e) = result.validation_errors().next() {
        let id = set
            .policy(e.policy_id())
            .and_then(|p| p.annotation("id").map(str::to_owned))
            .unwrap_or_else(|| e.policy_id().to_string());
        return Err(invalid(
            format!("policy {id}: {e}"),
            location(e, text),
            e.help().map(|h| h.to_string()),
        ));
    }
    let warnings = result
        .validation_warnings()
        .map(|w| Warning {
            message: w.to_string(),
            line: location(w, text).map(|(l, _)| l),
        })
        .collect();
    load_together(text, dir, disabled, replaces)?;
    Ok(Valid {
        valid: true,
        policies: set.policies().count() + set.templates().count(),
        warnings,
    })
}

/// Load the text with the policy directory as a reload would.
fn load_together(
    text: &str,
    dir: Option<&Path>,
    disabled: &[String],
    replaces: Option<&str>,
) -> Result<(), ApiError> {
    let tmp = tempfile::Builder::new()
        .prefix("sluice-policy-check-")
        .tempdir()
        .map_err(|e| ApiError::internal(format!("cannot make a temporary directory: {e}")))?;
    let unavailable = |d: &Path, e: std::io::Error| {
        ApiError::unavailable(
            "policy_dir_unavailable",
            format!("cannot read the policy directory {}: {e}", d.display()),
        )
    };
    if let Some(d) = dir {
        for entry in std::fs::read_dir(d).map_err(|e| unavailable(d, e))? {
            let path = entry.map_err(|e| unavailable(d, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.extension().is_none_or(|x| x != "cedar") || Some(name) == replaces {
                continue;
            }
            let body = std::fs::read(&path).map_err(|e| unavailable(d, e))?;
            std::fs::write(tmp.path().join(name), body)
                .map_err(|e| ApiError::internal(format!("cannot copy a policy file: {e}")))?;
        }
    }
    let name = replaces.unwrap_or("submitted.cedar");
    let submitted = tmp.path().join(name);
    std::fs::write(&submitted, text)
        .map_err(|e| ApiError::internal(format!("cannot write a temporary file: {e}")))?;
    match sluice_policy::PolicyEngine::load(Some(tmp.path()), disabled) {
        Ok(_) => Ok(()),
        Err(e) => {
            let shown_dir = dir.map_or_else(String::new, |d| d.display().to_string());
            let message = e
                .to_string()
                .replace(&submitted.display().to_string(), "the submitted policy")
                .replace(&tmp.path().display().to_string(), &shown_dir);
            Err(invalid(
                format!("together with the policies in force: {message}"),
                None,
                None,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"@id("no-friday-drops")
@reason("no DROP on Fridays")
forbid (principal, action == Sluice::Action::"drop", resource)
when { context.hour_utc == 17 };
"#;

    #[test]
    fn good_policy_passes() {
        let v = validate(GOOD, None, &[], None).unwrap();
        assert!(v.valid);
        assert_eq!(v.policies, 1);
    }

    #[test]
    fn syntax_error_has_its_line() {
        let bad =
            "@id(\"x\")\nforbid (principal, action, resource)\nwhen { context.environment == };\n";
        let e = validate(bad, None, &[], None).unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        assert_eq!(e.field("line"), 3, "{e}");
    }

    #[test]
    fn schema_error_has_its_line() {
        let bad = "@id(\"ok\")\npermit (principal, action, resource);\n\n@id(\"typo\")\nforbid (principal, action, resource)\nwhen { context.enviroment == \"production\" };\n";
        let e = validate(bad, None, &[], None).unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        assert!(e.message.contains("typo"), "{e}");
        assert!(matches!(e.field("line").as_u64(), Some(4..=6)), "{e}");
    }

    #[test]
    fn duplicates_with_the_loaded_policies_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.cedar"), GOOD).unwrap();
        let e = validate(GOOD, Some(dir.path()), &[], None).unwrap_err();
        assert!(e.message.contains("duplicate"), "{e}");
        assert!(!e.message.contains("sluice-policy-check"), "{e}");
        // As a replacement of that same file it is fine.
        validate(GOOD, Some(dir.path()), &[], Some("mine.cedar")).unwrap();
    }

    #[test]
    fn file_names() {
        assert!(valid_file_name("a-b_c.cedar"));
        assert!(!valid_file_name("../x.cedar"));
        assert!(!valid_file_name(".cedar"));
        assert!(!valid_file_name("x.txt"));
    }
}
