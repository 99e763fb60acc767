//! The session state machine between client and upstream sockets.
//!
//! The path of one connection, file by file:
//! - [`server`]: accept loop, shared state, reload (SIGHUP) and drain (SIGTERM);
//! - [`frontend`]: startup negotiation, TLS, authentication of the caller;
//! - [`backend`]: the upstream connection, its TLS and its login;
//! - [`session`]: the relay loops that carry messages both ways;
//! - [`statements`], [`guard`], [`rows_guard`]: what each client statement
//!   is, whether policy lets it run, and the rows-affected limit (`names`:
//!   prepared statements and portals as the server confirmed them);
//! - [`flight`]: which statement each upstream answer belongs to;
//! - [`masking`], [`catalog`]: masking result values in flight;
//! - [`cancel`]: mapping a client's cancel key to the upstream backend;
//! - [`approval`], [`webhook`]: statements held for approval, chat messages;
//! - [`audit`], [`telemetry`]: what each statement did, as audit events and spans.
#![warn(missing_docs)]

pub mod approval;
pub mod audit;
pub mod backend;
pub mod cancel;
pub mod catalog;
pub mod copy_probe;
pub mod error;
pub mod flight;
pub mod frontend;
pub mod guard;
mod io;
pub mod masking;
pub mod metrics;
mod names;
pub mod rows_guard;
pub mod server;
pub mod session;
pub mod statements;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod webhook;

pub use metrics::Metrics;
pub use server::{ProxyState, Runtime};
