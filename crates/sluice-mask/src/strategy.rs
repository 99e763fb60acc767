//! Masking strategies and the default strategy for each kind.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Kind;

/// How a sensitive value is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Strategy {
    /// Replace the whole value with [`crate::REDACTED`].
    Redact,
    /// Keep a harmless part (last digits, the e-mail domain, the year) and
    /// star out the rest: `**** **** **** 1234`, `***-**-6789`.
    Partial,
    /// A deterministic keyed token (HMAC-SHA256 of kind and value): equal
    /// inputs give equal tokens, so joins and GROUP BY keep working. The token
    /// keeps the value's shape where that is easy (an e-mail token is an
    /// e-mail address under `.invalid`, a card token is digits that fail Luhn).
    Token,
    /// Send SQL NULL for a whole field (inside a longer text, where NULL is not
    /// possible, the finding is redacted).
    Null,
    /// Same length and character classes, keyed and deterministic; values that
    /// carry a checksum are made invalid (cards fail Luhn, IBANs get check
    /// digits `00`, SSNs get an area number in the 9xx range).
    FormatPreserving,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 5] = [
        Strategy::Redact,
        Strategy::Partial,
        Strategy::Token,
        Strategy::Null,
        Strategy::FormatPreserving,
    ];

    /// The configuration name: `redact`, `partial`, `token`, `null`, `format-preserving`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::Redact => "redact",
            Strategy::Partial => "partial",
            Strategy::Token => "token",
            Strategy::Null => "null",
            Strategy::FormatPreserving => "format-preserving",
        }
    }

    /// The built-in default for a kind.
    ///
    /// Credentials are redacted; values people look at in results keep a
    /// harmless part; names and e-mail addresses become tokens so joins,
    /// de-duplication and counting distinct values still work.
    pub const fn default_for(kind: Kind) -> Strategy {
        match kind {
            Kind::Email | Kind::Name => Strategy::Token,
            Kind::Phone
            | Kind::Ssn
            | Kind::Card
            | Kind::Iban
            | Kind::BankAccount
            | Kind::IpAddress
            | Kind::PostalCode
            | Kind::DateOfBirth => Strategy::Partial,
            Kind::Address | Kind::NationalId => Strategy::Redact,
            Kind::Jwt
            | Kind::AwsKey
            | Kind::GcpKey
            | Kind::AzureKey
            | Kind::GithubToken
            | Kind::SlackToken
            | Kind::StripeKey
            | Kind::PrivateKey
            | Kind::PasswordHash
            | Kind::Secret
            | Kind::Password
            | Kind::ApiKey => Strategy::Redact,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Strategy> for &'static str {
    fn from(s: Strategy) -> Self {
        s.as_str()
    }
}

/// A name that is not a known [`Strategy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown masking strategy {0:?} (known: redact, partial, token, null, format-preserving)")]
pub struct UnknownStrategy(pub String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    /// Parses `redact`, `partial`, `token`, `null`, `format-preserving`
    /// (also `format_preserving`, `fpe`); case does not matter.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match norm.as_str() {
            "redact" => Strategy::Redact,
            "partial" => Strategy::Partial,
            "token" => Strategy::Token,
            "null" => Strategy::Null,
            "format-preserving" | "fpe" => Strategy::FormatPreserving,
            _ => return Err(UnknownStrategy(s.to_string())),
        })
    }
}

impl TryFrom<String> for Strategy {
    type Error = UnknownStrategy;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_config_names() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        }
        assert_eq!("Format_Preserving".parse(), Ok(Strategy::FormatPreserving));
        assert!("hide".parse::<Strategy>().is_err());
    }

    #[test]
    fn secrets_are_redacted_by_default() {
        for k in Kind::ALL {
            if k.is_secret() {
                assert_eq!(Strategy::default_for(k), Strategy::Redact, "{k}");
            }
        }
        assert_eq!(Strategy::default_for(Kind::Card), Strategy::Partial);
        assert_eq!(Strategy::default_for(Kind::Email), Strategy::Token);
    }
}
