//! Codecs for the messages Sluice reads or writes itself, one file each.

pub mod authentication;
pub mod backend_key_data;
pub mod bind;
pub mod command_complete;
pub mod data_row;
pub mod describe;
pub mod error_response;
pub mod execute;
pub mod negotiate_protocol_version;
pub mod parameter_status;
pub mod password;
pub mod ready_for_query;
pub mod row_description;
pub mod startup;

pub use authentication::Authentication;
pub use backend_key_data::BackendKeyData;
pub use error_response::{ErrorResponse, Severity};
pub use ready_for_query::TransactionStatus;
pub use startup::{Startup, StartupPacket};
