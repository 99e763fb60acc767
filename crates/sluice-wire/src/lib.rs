//! PostgreSQL wire protocol: framing and the few message codecs Sluice needs.
//!
//! No I/O here. The proxy reads bytes into a buffer, asks [`frame`] where each
//! message starts and ends, and forwards untouched messages as the upstream's
//! own bytes. Only messages that Sluice must read or write have a codec under
//! [`messages`], one file per message.
#![warn(missing_docs)]

pub mod error;
pub mod frame;
pub mod messages;
pub mod proxy_header;
pub mod tags;

pub use error::WireError;
pub use frame::{peek_header, Header, HEADER_LEN};
