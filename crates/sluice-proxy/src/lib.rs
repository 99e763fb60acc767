//! The session state machine between client and upstream sockets.
//!
//! The path of one connection, file by file:
//! - [`server`]: accept loop, shared state, reload (SIGHUP) and drain (SIGTERM);
//! - [`frontend`]: startup negotiation, TLS, authentication of the caller;
//! - [`backend`]: the upstream connection, its TLS and its login;
//! - [`session`]: the relay loops that carry messages both ways;
//! - [`cancel`]: mapping a client's cancel key to the upstream backend.
#![warn(missing_docs)]

pub mod backend;
pub mod cancel;
pub mod error;
pub mod frontend;
pub mod guard;
mod io;
pub mod metrics;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;

pub use metrics::Metrics;
pub use server::{ProxyState, Runtime};
