//! Who is connecting.
//!
//! A [`Principal`] is the person, service or agent behind a session. This crate
//! verifies them: SCRAM-SHA-256 for local users today (the verifiers made by
//! `sluice passwd`), OIDC tokens behind the same seam later.
#![warn(missing_docs)]

pub mod principal;
pub mod scram;

pub use principal::{Principal, PrincipalKind};
pub use scram::{make_verifier, ScramError, ScramServer, ScramVerifier};
