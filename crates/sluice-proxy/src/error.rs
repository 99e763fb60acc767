//! Errors of the proxy, by the part of the path that failed.

use sluice_wire::messages::{ErrorResponse, Severity};

/// Why a session could not start or had to end.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client's socket failed or closed.
    #[error("client I/O: {0}")]
    ClientIo(#[from] std::io::Error),
    /// The client sent something unacceptable; the client is told this error.
    #[error("{}", .0.message().unwrap_or("refused"))]
    Refused(ErrorResponse),
    /// The client closed the connection before finishing startup.
    #[error("client went away during startup")]
    ClientGone,
    /// Startup did not finish in time.
    #[error("startup timed out")]
    StartupTimeout,
}

impl SessionError {
    /// A FATAL refusal with SQLSTATE and message.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        SessionError::Refused(ErrorResponse::new(Severity::Fatal, code, message))
    }

    /// A FATAL refusal with a hint.
    pub fn fatal_hint(code: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        SessionError::Refused(ErrorResponse::new(Severity::Fatal, code, message).hint(hint))
    }

    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SessionError::ClientIo(_) => "client_io",
            SessionError::Refused(_) => "refused",
            SessionError::ClientGone => "client_gone",
            SessionError::StartupTimeout => "startup_timeout",
        }
    }
}

/// Why the upstream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// host:port.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// TLS to the upstream failed.
    #[error("TLS to upstream failed: {0}")]
    Tls(String),
    /// The upstream refused Sluice's login or the database.
    #[error("upstream refused the login: {0}")]
    Rejected(String),
    /// The upstream asked for something Sluice does not speak.
    #[error("upstream asked for {0}")]
    Unsupported(String),
    /// The upstream broke the protocol or closed.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// Socket error after connecting.
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
}
