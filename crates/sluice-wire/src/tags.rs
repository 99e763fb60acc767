//! Message type bytes, by direction.

/// Messages a client sends after startup.
pub mod frontend {
    /// Bind a portal.
    pub const BIND: u8 = b'B';
    /// Close a statement or portal.
    pub const CLOSE: u8 = b'C';
    /// COPY data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY finished.
    pub const COPY_DONE: u8 = b'c';
    /// COPY aborted by the client.
    pub const COPY_FAIL: u8 = b'f';
    /// Describe a statement or portal.
    pub const DESCRIBE: u8 = b'D';
    /// Execute a portal.
    pub const EXECUTE: u8 = b'E';
    /// Flush pending output.
    pub const FLUSH: u8 = b'H';
    /// Legacy fast-path function call.
    pub const FUNCTION_CALL: u8 = b'F';
    /// Parse a statement.
    pub const PARSE: u8 = b'P';
    /// Password, SASL initial response or SASL response.
    pub const PASSWORD: u8 = b'p';
    /// Simple query.
    pub const QUERY: u8 = b'Q';
    /// End of an extended-protocol batch.
    pub const SYNC: u8 = b'S';
    /// Close the connection.
    pub const TERMINATE: u8 = b'X';

    /// True for every tag a client may send after authentication.
    pub fn is_valid(tag: u8) -> bool {
        matches!(
            tag,
            BIND | CLOSE
                | COPY_DATA
                | COPY_DONE
                | COPY_FAIL
                | DESCRIBE
                | EXECUTE
                | FLUSH
                | FUNCTION_CALL
                | PARSE
                | QUERY
                | SYNC
                | TERMINATE
        )
    }
}

/// Messages a server sends.
pub mod backend {
    /// Authentication request or result.
    pub const AUTHENTICATION: u8 = b'R';
    /// Cancel key data.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// Bind done.
    pub const BIND_COMPLETE: u8 = b'2';
    /// Close done.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// Command done, with its tag.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// COPY data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY finished.
    pub const COPY_DONE: u8 = b'c';
    /// Server waits for COPY data.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// Server sends COPY data.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// Both directions (replication).
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// One result row.
    pub const DATA_ROW: u8 = b'D';
    /// Empty query string.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// An error.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// Fast-path function result.
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    /// Protocol minor version or options not supported.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// Statement or portal returns no rows.
    pub const NO_DATA: u8 = b'n';
    /// A notice.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// LISTEN/NOTIFY notification.
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// Parameter types of a statement.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// A run-time parameter changed.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// Parse done.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// Execute stopped at its row limit.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// Ready for a new query, with transaction status.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// Result columns.
    pub const ROW_DESCRIPTION: u8 = b'T';
}
