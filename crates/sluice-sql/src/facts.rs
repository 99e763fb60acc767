//! What analysis finds out about a statement.

use std::collections::BTreeSet;
use std::fmt;

/// The kind of action a statement performs, as policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Reads rows.
    Select,
    /// Adds rows.
    Insert,
    /// Changes rows.
    Update,
    /// Removes rows.
    Delete,
    /// Creates or changes schema objects.
    Ddl,
    /// Drops schema objects (tables, schemas, databases, …).
    Drop,
    /// Empties tables.
    Truncate,
    /// Grants, revokes, role and ownership changes.
    Grant,
    /// COPY … TO (data leaves the database).
    CopyOut,
    /// COPY … FROM (data enters the database).
    CopyIn,
    /// Server administration (ALTER SYSTEM, SET ROLE, VACUUM, LOAD, …).
    Admin,
    /// Anything else: transaction control, SET, SHOW, LISTEN, EXECUTE, …
    Other,
}

impl Kind {
    /// The policy action name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Ddl => "ddl",
            Kind::Drop => "drop",
            Kind::Truncate => "truncate",
            Kind::Grant => "grant",
            Kind::CopyOut => "copy_out",
            Kind::CopyIn => "copy_in",
            Kind::Admin => "admin",
            Kind::Other => "other",
        }
    }

    /// Every kind, for schemas and docs.
    pub const ALL: [Kind; 12] = [
        Kind::Select,
        Kind::Insert,
        Kind::Update,
        Kind::Delete,
        Kind::Ddl,
        Kind::Drop,
        Kind::Truncate,
        Kind::Grant,
        Kind::CopyOut,
        Kind::CopyIn,
        Kind::Admin,
        Kind::Other,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A risky capability a statement uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Risk {
    /// UPDATE or DELETE without WHERE, or with a WHERE that is always true.
    UnfilteredWrite,
    /// ALTER SYSTEM.
    AlterSystem,
    /// COPY … PROGRAM.
    CopyProgram,
    /// COPY to or from a server file.
    ServerFile,
    /// pg_read_file and friends.
    ServerFileFunction,
    /// lo_import / lo_export and other large-object functions.
    LargeObject,
    /// dblink / postgres_fdw connections out of the database.
    Dblink,
    /// SET ROLE / SET SESSION AUTHORIZATION / set_config of either.
    SetRole,
    /// GRANT, REVOKE, role changes.
    Privileges,
    /// CREATE EXTENSION.
    CreateExtension,
    /// Disabling or weakening row level security.
    DisableRowSecurity,
    /// Dropping or changing encryption (pgcrypto objects, encryption options).
    Encryption,
    /// DO blocks and other code whose effect cannot be seen before it runs.
    DynamicCode,
    /// Rules, triggers and functions that can hide an effect behind another statement.
    HiddenEffect,
    /// ALTER TABLE … DROP COLUMN.
    DropColumn,
    /// Any other schema change.
    SchemaChange,
    /// Disabling triggers.
    DisableTrigger,
    /// Changing client_encoding or how string literals are read (Sluice would
    /// read later statements differently from the server).
    ClientEncoding,
    /// Setting `sluice.*` settings that Sluice sets for the database.
    SluiceSetting,
    /// LOAD of a shared library.
    LoadLibrary,
    /// Ending or signalling other sessions (pg_terminate_backend, …).
    SignalBackend,
    /// Locking tables against writes or reads for as long as the statement
    /// or its transaction runs: `LOCK` in EXCLUSIVE or ACCESS EXCLUSIVE mode, `VACUUM
    /// FULL`, `CLUSTER`, `REINDEX` and `REFRESH MATERIALIZED VIEW` without
    /// `CONCURRENTLY`.
    BlockingLock,
}

impl Risk {
    /// Stable name used in policy context and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::UnfilteredWrite => "unfiltered_write",
            Risk::AlterSystem => "alter_system",
            Risk::CopyProgram => "copy_program",
            Risk::ServerFile => "server_file",
            Risk::ServerFileFunction => "server_file_function",
            Risk::LargeObject => "large_object",
            Risk::Dblink => "dblink",
            Risk::SetRole => "set_role",
            Risk::Privileges => "privileges",
            Risk::CreateExtension => "create_extension",
            Risk::DisableRowSecurity => "disable_row_security",
            Risk::Encryption => "encryption",
            Risk::DynamicCode => "dynamic_code",
            Risk::HiddenEffect => "hidden_effect",
            Risk::DropColumn => "drop_column",
            Risk::SchemaChange => "schema_change",
            Risk::DisableTrigger => "disable_trigger",
            Risk::ClientEncoding => "client_encoding",
            Risk::SluiceSetting => "sluice_setting",
            Risk::LoadLibrary => "load_library",
            Risk::SignalBackend => "signal_backend",
            Risk::BlockingLock => "blocking_lock",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Facts about one statement of a query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementFacts {
    /// The top-level kind.
    pub kind: Option<Kind>,
    /// Every kind of action found anywhere in the statement (a DELETE inside
    /// a CTE makes a SELECT also a delete).
    pub actions: BTreeSet<Kind>,
    /// Tables read (schema-qualified where written so).
    pub tables_read: BTreeSet<String>,
    /// Tables written, created, altered or dropped.
    pub tables_written: BTreeSet<String>,
    /// Columns read, as `table.column` (`table.*` for every column).
    pub columns_read: BTreeSet<String>,
    /// Columns written, as `table.column` (`table.*` for whole rows).
    pub columns_written: BTreeSet<String>,
    /// Functions called.
    pub functions: BTreeSet<String>,
    /// Risky capabilities used.
    pub risks: BTreeSet<Risk>,
    /// For `EXECUTE name`: the prepared statement executed.
    pub executes: Option<String>,
    /// For `DECLARE name CURSOR FOR …`: the cursor declared.
    pub declares: Option<String>,
    /// For `FETCH … name` (not `MOVE`): the cursor whose rows it returns.
    pub fetches: Option<String>,
    /// For `PREPARE name AS …`: the name being defined.
    pub prepares: Option<String>,
    /// For `PREPARE name AS …`: the kind of the statement prepared.
    pub prepared_kind: Option<Kind>,
    /// `DEALLOCATE name`: the prepared statement removed.
    pub deallocates: Option<String>,
    /// `DEALLOCATE ALL` or `DISCARD ALL`: every prepared statement removed.
    pub deallocates_all: bool,
    /// How many INSERT, UPDATE, DELETE and MERGE statements it contains
    /// (a data-modifying CTE counts as one more).
    pub dml_count: u32,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT and the like.
    pub transaction_control: bool,
    /// EXPLAIN without ANALYZE: the statement inside is planned, not run.
    pub explain_only: bool,
    /// `COPY … TO STDOUT`: what the client will receive.
    pub copy_out: Option<CopyOut>,
    /// `SET search_path`, `set_config('search_path', …)` or `RESET`: the
    /// schemas it names (`RESET`/`DEFAULT`: `"$user", public`).
    pub search_path: Option<Vec<String>>,
    /// True when a fact depends on a literal's value (`WHERE 1 = 1` versus
    /// `WHERE 1 = 2`, `set_config('role', …)`): such a statement's verdict
    /// must not be reused for another statement with the same template.
    pub literal_sensitive: bool,
    /// `INSERT … ON CONFLICT DO UPDATE`: where its rows come from.
    pub upsert: Option<Upsert>,
    /// The columns of its result and the table columns each is computed
    /// from (masking needs them for computed columns); `None` for a
    /// statement that returns no rows of its own.
    pub outputs: Option<Vec<crate::OutputColumn>>,
}

/// Where the rows of an upsert come from, which bounds what it updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A VALUES list: it updates at most as many rows as the client wrote.
    Values,
    /// A query: it may update any number of rows, and its tag (`INSERT 0 n`)
    /// does not tell updated rows from inserted ones.
    Query,
}

/// The analysis of a whole query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// One entry per statement, in order.
    pub statements: Vec<StatementFacts>,
    /// The text's fingerprint (see [`crate::fingerprint_and_normalize`]).
    pub fingerprint: String,
    /// The text with its constants replaced by `$n`.
    pub normalized: String,
}

/// The data format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyFormat {
    /// Tab-separated text (the default).
    #[default]
    Text,
    /// CSV.
    Csv,
    /// PostgreSQL's binary COPY format.
    Binary,
}

/// A `COPY … TO STDOUT`, as far as reading its output needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyOut {
    /// A query with the same columns as the COPY's output, to learn their
    /// origins by Describe (`None` when it could not be written).
    pub probe: Option<String>,
    /// Data format.
    pub format: CopyFormat,
    /// DELIMITER, if given.
    pub delimiter: Option<String>,
    /// NULL, if given.
    pub null: Option<String>,
    /// QUOTE (CSV), if given.
    pub quote: Option<String>,
    /// ESCAPE (CSV), if given.
    pub escape: Option<String>,
    /// HEADER: the first line names the columns.
    pub header: bool,
    /// ENCODING, if given.
    pub encoding: Option<String>,
    /// For `COPY (query)`: the table columns each of its columns is
    /// computed from (see [`crate::OutputColumn`]).
    pub sources: Option<Vec<crate::OutputColumn>>,
}

/// Whether the rows a string changes can be read from its command tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowsEffect {
    /// It changes no rows by UPDATE, DELETE or MERGE.
    #[default]
    None,
    /// Every UPDATE, DELETE or MERGE in it is a statement of its own, so its
    /// command tag (`UPDATE n`) counts exactly the rows it changed.
    Countable,
    /// It updates or deletes where the tag does not say how many rows
    /// (a data-modifying CTE, `COPY (DELETE …) TO`, several statements in one).
    Uncountable,
}

impl StatementFacts {
    fn writes(&self) -> bool {
        self.actions.contains(&Kind::Update) || self.actions.contains(&Kind::Delete)
    }

    /// Whether the rows this statement updates or deletes when it runs can
    /// be counted from its tag. (PREPARE defines and EXPLAIN plans: neither
    /// changes a row; `EXECUTE` is judged by what it executes.)
    pub fn rows_effect(&self) -> RowsEffect {
        if !self.writes() || self.prepares.is_some() || self.explain_only {
            return RowsEffect::None;
        }
        if self.upsert == Some(Upsert::Values) && self.dml_count == 1 {
            return RowsEffect::None;
        }
        if matches!(self.kind, Some(Kind::Update | Kind::Delete)) && self.dml_count == 1 {
            RowsEffect::Countable
        } else {
            RowsEffect::Uncountable
        }
    }

    /// For `PREPARE`: the rows effect of the statement it prepares.
    pub fn prepared_rows_effect(&self) -> RowsEffect {
        if self.prepares.is_none() || !self.writes() {
            return RowsEffect::None;
        }
        if self.upsert == Some(Upsert::Values) && self.dml_count == 1 {
            return RowsEffect::None;
        }
        if matches!(self.prepared_kind, Some(Kind::Update | Kind::Delete)) && self.dml_count == 1 {
            RowsEffect::Countable
        } else {
            RowsEffect::Uncountable
        }
    }
}

impl RowsEffect {
    /// The effect of running both.
    pub fn and(self, other: RowsEffect) -> RowsEffect {
        use RowsEffect::*;
        match (self, other) {
            (Uncountable, _) | (_, Uncountable) => Uncountable,
            (Countable, _) | (_, Countable) => Countable,
            _ => None,
        }
    }
}

impl Analysis {
    /// Whether the rows this string updates or deletes can be counted
    /// (statements that `EXECUTE` a prepared statement are not looked into).
    pub fn rows_effect(&self) -> RowsEffect {
        self.statements
            .iter()
            .fold(RowsEffect::None, |acc, s| acc.and(s.rows_effect()))
    }

    /// True when any statement controls transactions.
    pub fn controls_transactions(&self) -> bool {
        self.statements.iter().any(|s| s.transaction_control)
    }

    /// Whether the verdict may be reused for every statement with the same
    /// template (see [`crate::template`]).
    pub fn reusable_for_template(&self) -> bool {
        self.statements.iter().all(|s| !s.literal_sensitive)
    }

    /// Every action of every statement.
    pub fn actions(&self) -> BTreeSet<Kind> {
        self.statements
            .iter()
            .flat_map(|s| s.actions.iter().copied())
            .collect()
    }

    /// Every risk of every statement.
    pub fn risks(&self) -> BTreeSet<Risk> {
        self.statements
            .iter()
            .flat_map(|s| s.risks.iter().copied())
            .collect()
    }

    /// Every table read.
    pub fn tables_read(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.tables_read.iter().cloned())
            .collect()
    }

    /// Every table written.
    pub fn tables_written(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.tables_written.iter().cloned())
            .collect()
    }

    /// Every column read.
    pub fn columns_read(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.columns_read.iter().cloned())
            .collect()
    }

    /// Every column written.
    pub fn columns_written(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.columns_written.iter().cloned())
            .collect()
    }

    /// Every function called.
    pub fn functions(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.functions.iter().cloned())
            .collect()
    }
}
