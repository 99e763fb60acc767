//! The kinds of sensitive data Sluice knows, with stable lower-case names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A kind of sensitive data.
///
/// The names returned by [`Kind::as_str`] are stable: they appear in
/// configuration (`[masking.default_strategy]`), audit records and the
/// output of `sluice mask classify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Kind {
    /// An e-mail address (`email`).
    Email,
    /// A telephone number (`phone`).
    Phone,
    /// A US social security number (`ssn`).
    Ssn,
    /// A payment card number (PAN) (`card`).
    Card,
    /// An international bank account number (`iban`).
    Iban,
    /// A bank account or routing number found by column name (`bank_account`).
    BankAccount,
    /// An IPv4 or IPv6 address (`ip_address`).
    IpAddress,
    /// A JSON web token (`jwt`).
    Jwt,
    /// An AWS access key id or secret access key (`aws_key`).
    AwsKey,
    /// A Google Cloud API key or service-account private key (`gcp_key`).
    GcpKey,
    /// An Azure storage account key, connection-string key or SAS signature (`azure_key`).
    AzureKey,
    /// A GitHub token (`github_token`).
    GithubToken,
    /// A Slack token or incoming-webhook URL (`slack_token`).
    SlackToken,
    /// A Stripe secret or restricted key (`stripe_key`).
    StripeKey,
    /// A PEM private key block (`private_key`).
    PrivateKey,
    /// A password hash: bcrypt, argon2, sha-crypt, SCRAM, md5, pbkdf2 (`password_hash`).
    PasswordHash,
    /// A generic high-entropy secret (`secret`).
    Secret,
    /// A password in clear (`password`).
    Password,
    /// An API key, access token, refresh token or bearer token (`api_key`).
    ApiKey,
    /// A person's name: full, first or last (`name`).
    Name,
    /// A postal address or street (`address`).
    Address,
    /// A postal or ZIP code (`postal_code`).
    PostalCode,
    /// A date of birth (`date_of_birth`).
    DateOfBirth,
    /// A national identifier: tax id, passport, codice fiscale, NIF, BSN, NINO (`national_id`).
    NationalId,
}

impl Kind {
    /// Every kind, in declaration order (the order of [`Kind::index`]).
    pub const ALL: [Kind; 24] = [
        Kind::Email,
        Kind::Phone,
        Kind::Ssn,
        Kind::Card,
        Kind::Iban,
        Kind::BankAccount,
        Kind::IpAddress,
        Kind::Jwt,
        Kind::AwsKey,
        Kind::GcpKey,
        Kind::AzureKey,
        Kind::GithubToken,
        Kind::SlackToken,
        Kind::StripeKey,
        Kind::PrivateKey,
        Kind::PasswordHash,
        Kind::Secret,
        Kind::Password,
        Kind::ApiKey,
        Kind::Name,
        Kind::Address,
        Kind::PostalCode,
        Kind::DateOfBirth,
        Kind::NationalId,
    ];

    /// Number of kinds.
    pub const COUNT: usize = Kind::ALL.len();

    /// The stable lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Ssn => "ssn",
            Kind::Card => "card",
            Kind::Iban => "iban",
            Kind::BankAccount => "bank_account",
            Kind::IpAddress => "ip_address",
            Kind::Jwt => "jwt",
            Kind::AwsKey => "aws_key",
            Kind::GcpKey => "gcp_key",
            Kind::AzureKey => "azure_key",
            Kind::GithubToken => "github_token",
            Kind::SlackToken => "slack_token",
            Kind::StripeKey => "stripe_key",
            Kind::PrivateKey => "private_key",
            Kind::PasswordHash => "password_hash",
            Kind::Secret => "secret",
            Kind::Password => "password",
            Kind::ApiKey => "api_key",
            Kind::Name => "name",
            Kind::Address => "address",
            Kind::PostalCode => "postal_code",
            Kind::DateOfBirth => "date_of_birth",
            Kind::NationalId => "national_id",
        }
    }

    /// Position in [`Kind::ALL`]; handy for fixed-size counters.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Can the value detectors find this kind inside a longer text? Names,
    /// addresses, postal codes, dates of birth and national ids other than
    /// SSNs are known only from the column they are in.
    pub const fn found_by_detectors(self) -> bool {
        !matches!(
            self,
            Kind::Name
                | Kind::Address
                | Kind::PostalCode
                | Kind::DateOfBirth
                | Kind::NationalId
                | Kind::BankAccount
                | Kind::Password
        )
    }

    /// Credentials and key material: knowing them grants access, so they are
    /// redacted by default and never partially shown.
    pub const fn is_secret(self) -> bool {
        matches!(
            self,
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
                | Kind::ApiKey
        )
    }

    /// Which kind wins when two findings overlap: the more specific one.
    pub(crate) const fn priority(self) -> u8 {
        match self {
            Kind::PrivateKey => 30,
            Kind::Jwt => 29,
            Kind::AwsKey | Kind::GcpKey | Kind::AzureKey => 28,
            Kind::GithubToken | Kind::SlackToken | Kind::StripeKey => 27,
            Kind::PasswordHash => 26,
            Kind::Card => 25,
            Kind::Iban => 24,
            Kind::Ssn => 23,
            Kind::Email => 22,
            Kind::Password => 21,
            Kind::ApiKey => 20,
            Kind::NationalId => 19,
            Kind::Phone => 18,
            Kind::IpAddress => 17,
            Kind::Secret => 16,
            _ => 10,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Kind> for &'static str {
    fn from(k: Kind) -> Self {
        k.as_str()
    }
}

/// A name that is not a known [`Kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind of sensitive data {0:?} (known: email, phone, ssn, card, iban, bank_account, ip_address, jwt, aws_key, gcp_key, azure_key, github_token, slack_token, stripe_key, private_key, password_hash, secret, password, api_key, name, address, postal_code, date_of_birth, national_id)")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Parses the stable name, plus a few aliases (`token`, `ip`, `dob`,
    /// `credit_card`, `zip`, …); case and `-`/`_` do not matter.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .trim()
            .chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        if let Some(k) = Kind::ALL.iter().find(|k| k.as_str() == norm) {
            return Ok(*k);
        }
        Ok(match norm.as_str() {
            "e_mail" | "mail" => Kind::Email,
            "telephone" | "phone_number" => Kind::Phone,
            "credit_card" | "card_number" | "pan" => Kind::Card,
            "ip" | "ipv4" | "ipv6" => Kind::IpAddress,
            "token" | "access_token" | "apikey" => Kind::ApiKey,
            "pem" => Kind::PrivateKey,
            "hash" => Kind::PasswordHash,
            "dob" | "birth_date" => Kind::DateOfBirth,
            "zip" | "zip_code" | "postcode" => Kind::PostalCode,
            "tax_id" => Kind::NationalId,
            _ => return Err(UnknownKind(s.to_string())),
        })
    }
}

impl TryFrom<String> for Kind {
    type Error = UnknownKind;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_index_matches_order() {
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(k.as_str().parse::<Kind>(), Ok(*k));
        }
        assert_eq!("token".parse::<Kind>(), Ok(Kind::ApiKey));
        assert_eq!("Credit-Card".parse::<Kind>(), Ok(Kind::Card));
        assert!("nope".parse::<Kind>().is_err());
    }

    #[test]
    fn serde_uses_stable_names() {
        assert_eq!(
            serde_json::to_string(&Kind::IpAddress).ok().as_deref(),
            Some("\"ip_address\"")
        );
        let k: Result<Kind, _> = serde_json::from_str("\"aws_key\"");
        assert_eq!(k.ok(), Some(Kind::AwsKey));
    }
}
