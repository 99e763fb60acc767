//! Who is connecting.
//!
//! A [`Principal`] is the person, service or agent behind a session. This crate
//! verifies them: SCRAM-SHA-256 for local users (the verifiers made by
//! `sluice passwd`), OIDC ID and access tokens presented as the password
//! ([`oidc`], [`jwt`]), and client certificates ([`mtls`]).
#![warn(missing_docs)]

pub mod http;
pub mod jwt;
pub mod mtls;
pub mod oidc;
pub mod principal;
pub mod scram;

pub use principal::{OnExpiry, Principal, PrincipalKind, EXPIRED_MESSAGE};
pub use scram::{make_verifier, ScramError, ScramServer, ScramVerifier};
