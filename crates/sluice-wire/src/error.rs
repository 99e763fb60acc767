//! What can be wrong with bytes on the wire.

/// A malformed or unacceptable protocol message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The length field is smaller than the length field itself.
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength {
        /// Message type byte.
        tag: char,
        /// Length as sent.
        len: i64,
    },
    /// The message is larger than the configured limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length as sent.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// A message body ended before a field it must hold.
    #[error("truncated {0} message")]
    Truncated(&'static str),
    /// A string field is not NUL-terminated or not UTF-8.
    #[error("invalid string in {0} message")]
    BadString(&'static str),
    /// A message type that is not valid in this direction or state.
    #[error("unexpected message type {0:?}")]
    UnexpectedTag(char),
    /// A startup packet that is not a protocol this proxy speaks.
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// Anything else, described.
    #[error("{0}")]
    Invalid(&'static str),
    /// A field with an impossible value, described.
    #[error("{0}")]
    Malformed(String),
}
