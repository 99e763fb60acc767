//! Reading facts off the parse tree.

use pg_query::protobuf::{self, a_const, AlterTableType, BoolExprType, ObjectType};
use pg_query::{NodeEnum, NodeRef};

use crate::facts::{Kind, Risk, StatementFacts};

/// Facts for every statement of a parse result.
pub fn statements(
    tree: &protobuf::ParseResult,
    sql: &str,
    scanned: &[protobuf::ScanToken],
) -> Vec<StatementFacts> {
    let tokens = token_risks(sql, scanned);
    tree.stmts
        .iter()
        .filter_map(|raw| {
            raw.stmt
                .as_ref()
                .and_then(|n| n.node.as_ref())
                .map(|n| (raw, n))
        })
        .map(|(raw, node)| {
            let mut facts = StatementFacts {
                kind: Some(top_kind(node)),
                ..StatementFacts::default()
            };
            visit(node, &mut facts);
            complete(node, &mut facts);
            let columns = crate::columns::of_statement(node);
            facts.columns_read = columns.read;
            facts.columns_written = columns.written;
            facts.outputs = crate::outputs::of_statement(node);
            if let (Some(copy), NodeEnum::CopyStmt(c)) = (facts.copy_out.as_mut(), node) {
                copy.sources = c
                    .query
                    .as_ref()
                    .and_then(|q| q.node.as_ref())
                    .and_then(crate::outputs::of_statement);
            }
            if let Some(k) = facts.kind {
                facts.actions.insert(k);
            }
            let start = raw.stmt_location.max(0) as usize;
            // A length of 0 means "to the end of the string".
            let end = if raw.stmt_len == 0 {
                usize::MAX
            } else {
                start + raw.stmt_len as usize
            };
            facts.risks.extend(
                tokens
                    .iter()
                    .filter(|(at, _)| (start..end).contains(at))
                    .map(|(_, r)| *r),
            );
            facts
        })
        .collect()
}

/// The kind of a top-level statement.
fn top_kind(node: &NodeEnum) -> Kind {
    use NodeEnum as N;
    match node {
        // SELECT … INTO creates a table, like CREATE TABLE AS.
        N::SelectStmt(s) if s.into_clause.is_some() => Kind::Ddl,
        N::SelectStmt(_) => Kind::Select,
        N::InsertStmt(_) => Kind::Insert,
        N::UpdateStmt(_) | N::MergeStmt(_) => Kind::Update,
        N::DeleteStmt(_) => Kind::Delete,
        N::TruncateStmt(_) => Kind::Truncate,
        N::DropStmt(_)
        | N::DropdbStmt(_)
        | N::DropRoleStmt(_)
        | N::DropOwnedStmt(_)
        | N::DropTableSpaceStmt(_) => Kind::Drop,
        N::CopyStmt(c) if c.is_from => Kind::CopyIn,
        N::CopyStmt(_) => Kind::CopyOut,
        N::GrantStmt(_)
        | N::GrantRoleStmt(_)
        | N::AlterDefaultPrivilegesStmt(_)
        | N::AlterOwnerStmt(_)
        | N::CreateRoleStmt(_)
        | N::AlterRoleStmt(_)
        | N::AlterRoleSetStmt(_)
        | N::ReassignOwnedStmt(_) => Kind::Grant,
        N::AlterSystemStmt(_)
        | N::VacuumStmt(_)
        | N::ClusterStmt(_)
        | N::ReindexStmt(_)
        | N::CheckPointStmt(_)
        | N::LoadStmt(_) => Kind::Admin,
        N::VariableSetStmt(s) if is_identity_setting(&s.name) && !is_reset(s.kind) => Kind::Admin,
        N::TransactionStmt(_)
        | N::VariableSetStmt(_)
        | N::VariableShowStmt(_)
        | N::ExplainStmt(_)
        | N::PrepareStmt(_)
        | N::ExecuteStmt(_)
        | N::DeallocateStmt(_)
        | N::DeclareCursorStmt(_)
        | N::FetchStmt(_)
        | N::ClosePortalStmt(_)
        | N::ListenStmt(_)
        | N::UnlistenStmt(_)
        | N::NotifyStmt(_)
        | N::LockStmt(_)
        | N::DiscardStmt(_)
        | N::CallStmt(_)
        | N::DoStmt(_)
        | N::ConstraintsSetStmt(_) => Kind::Other,
        // Everything else that changes the catalog.
        _ => Kind::Ddl,
    }
}

fn is_identity_setting(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "role" | "session_authorization"
    )
}

fn is_reset(kind: i32) -> bool {
    kind == protobuf::VariableSetKind::VarReset as i32
        || kind == protobuf::VariableSetKind::VarResetAll as i32
}

fn relation_name(rv: &protobuf::RangeVar) -> String {
    if rv.schemaname.is_empty() {
        rv.relname.clone()
    } else {
        format!("{}.{}", rv.schemaname, rv.relname)
    }
}

/// Walk every node of `node` (and, where pg_query's walk stops, below it).
fn visit(node: &NodeEnum, facts: &mut StatementFacts) {
    for (n, _depth, _context, _) in node.nodes() {
        visit_one(n, facts);
    }
}

fn visit_one(n: NodeRef<'_>, facts: &mut StatementFacts) {
    match n {
        NodeRef::SelectStmt(_) => {
            facts.actions.insert(Kind::Select);
        }
        NodeRef::RangeVar(rv) => {
            facts.tables_read.insert(relation_name(rv));
        }
        NodeRef::TransactionStmt(_) => facts.transaction_control = true,
        NodeRef::ExplainStmt(e) => {
            facts.explain_only = !explain_analyzes(e, &mut facts.literal_sensitive)
        }
        NodeRef::InsertStmt(s) => {
            facts.dml_count += 1;
            facts.actions.insert(Kind::Insert);
            if let Some(rv) = &s.relation {
                facts.tables_written.insert(relation_name(rv));
            }
            let updates = s
                .on_conflict_clause
                .as_ref()
                .is_some_and(|c| c.action == protobuf::OnConflictAction::OnconflictUpdate as i32);
            if updates {
                // An upsert updates rows: as many as a VALUES list has rows,
                // or as many as a query returns.
                facts.actions.insert(Kind::Update);
                // A VALUES list of plain rows: one row each. A function in
                // it may return a set (`VALUES (generate_series(1, 1e6))`).
                let from_values = matches!(
                    s.select_stmt.as_deref().and_then(|n| n.node.as_ref()),
                    Some(NodeEnum::SelectStmt(sel)) if !sel.values_lists.is_empty()
                        && crate::sweep::sweep(&sel.values_lists).calls.is_empty()
                );
                facts.upsert = Some(if from_values {
                    crate::facts::Upsert::Values
                } else {
                    crate::facts::Upsert::Query
                });
            }
        }
        NodeRef::UpdateStmt(s) => filtered_write(
            Kind::Update,
            s.relation.as_ref(),
            s.where_clause.as_deref(),
            facts,
        ),
        NodeRef::DeleteStmt(s) => filtered_write(
            Kind::Delete,
            s.relation.as_ref(),
            s.where_clause.as_deref(),
            facts,
        ),
        NodeRef::MergeStmt(s) => {
            facts.dml_count += 1;
            facts
                .actions
                .extend([Kind::Insert, Kind::Update, Kind::Delete]);
            if let Some(rv) = &s.relation {
                facts.tables_written.insert(relation_name(rv));
            }
            // `ON true` matches every row of the target.
            if s.join_condition
                .as_deref()
                .is_none_or(|c| unfiltered(c, &mut facts.literal_sensitive))
            {
                facts.risks.insert(Risk::UnfilteredWrite);
            }
        }
        NodeRef::TruncateStmt(s) => {
            facts.actions.insert(Kind::Truncate);
            for r in &s.relations {
                if let Some(NodeEnum::RangeVar(rv)) = r.node.as_ref() {
                    facts.tables_written.insert(relation_name(rv));
                }
            }
        }
        NodeRef::DropStmt(s) => {
            facts.actions.insert(Kind::Drop);
            let kind = ObjectType::try_from(s.remove_type).unwrap_or(ObjectType::Undefined);
            if kind == ObjectType::ObjectExtension || kind == ObjectType::ObjectPolicy {
                facts.risks.insert(Risk::DisableRowSecurity);
            }
            if kind == ObjectType::ObjectTrigger || kind == ObjectType::ObjectRule {
                facts.risks.insert(Risk::HiddenEffect);
            }
            if kind == ObjectType::ObjectExtension
                && names_in(&s.objects).iter().any(|n| n.contains("pgcrypto"))
            {
                facts.risks.insert(Risk::Encryption);
            }
            for name in names_in(&s.objects) {
                facts.tables_written.insert(name);
            }
        }
        NodeRef::DropdbStmt(s) => {
            facts.actions.insert(Kind::Drop);
            facts
                .tables_written
                .insert(format!("database {}", s.dbname));
        }
        NodeRef::CopyStmt(s) => {
            // Its options are literals (`DELIMITER ';'`, `HEADER 'false'`)
            // that decide how masking reads the data: no verdict reuse.
            facts.literal_sensitive = true;
            facts.actions.insert(if s.is_from {
                Kind::CopyIn
            } else {
                Kind::CopyOut
            });
            if let Some(rv) = &s.relation {
                if s.is_from {
                    facts.tables_written.insert(relation_name(rv));
                }
            }
            if s.is_program {
                facts.risks.insert(Risk::CopyProgram);
            } else if !s.filename.is_empty() {
                facts.risks.insert(Risk::ServerFile);
            } else if !s.is_from {
                facts.copy_out = Some(copy_out(s));
            }
        }
        NodeRef::AlterSystemStmt(_) => {
            facts.risks.insert(Risk::AlterSystem);
        }
        // Statements that lock tables against writes (or reads) for as long
        // as they run or their transaction lasts.
        NodeRef::LockStmt(l) if l.mode >= EXCLUSIVE_LOCK => {
            facts.risks.insert(Risk::BlockingLock);
        }
        NodeRef::VacuumStmt(v)
            if v.is_vacuumcmd && option_on(&v.options, "full", &mut facts.literal_sensitive) =>
        {
            facts.risks.insert(Risk::BlockingLock);
        }
        NodeRef::ClusterStmt(_) => {
            facts.risks.insert(Risk::BlockingLock);
        }
        NodeRef::ReindexStmt(r)
            if !option_on(&r.params, "concurrently", &mut facts.literal_sensitive) =>
        {
            facts.risks.insert(Risk::BlockingLock);
        }
        NodeRef::RefreshMatViewStmt(r) if !r.concurrent => {
            facts.risks.insert(Risk::BlockingLock);
        }
        NodeRef::VariableSetStmt(s) => {
            if s.name.eq_ignore_ascii_case("search_path") {
                // The path differs by literal: no verdict reuse across them.
                facts.literal_sensitive = true;
                facts.search_path = Some(search_path_of(s));
            } else if s.kind == protobuf::VariableSetKind::VarResetAll as i32 {
                facts.search_path = Some(default_search_path());
            }
            setting(&s.name, !is_reset(s.kind), facts)
        }
        NodeRef::GrantStmt(_)
        | NodeRef::GrantRoleStmt(_)
        | NodeRef::AlterDefaultPrivilegesStmt(_) => {
            facts.risks.insert(Risk::Privileges);
        }
        NodeRef::CreateExtensionStmt(_) => {
            facts.risks.insert(Risk::CreateExtension);
        }
        NodeRef::DoStmt(_) => {
            facts.risks.insert(Risk::DynamicCode);
        }
        NodeRef::CreateFunctionStmt(_)
        | NodeRef::CreateTrigStmt(_)
        | NodeRef::RuleStmt(_)
        | NodeRef::CreateEventTrigStmt(_) => {
            facts.risks.insert(Risk::HiddenEffect);
        }
        NodeRef::LoadStmt(_) => {
            facts.risks.insert(Risk::LoadLibrary);
        }
        NodeRef::AlterTableStmt(s) => {
            if let Some(rv) = &s.relation {
                facts.tables_written.insert(relation_name(rv));
            }
            for cmd in &s.cmds {
                if let Some(NodeEnum::AlterTableCmd(c)) = cmd.node.as_ref() {
                    alter_table_cmd(c, facts);
                }
            }
        }
        NodeRef::CreatePolicyStmt(_) | NodeRef::AlterPolicyStmt(_) => {
            facts.risks.insert(Risk::DisableRowSecurity);
        }
        NodeRef::CreateStmt(s) => {
            if let Some(rv) = &s.relation {
                facts.tables_written.insert(relation_name(rv));
            }
        }
        NodeRef::PrepareStmt(s) => {
            facts.prepares = Some(s.name.clone());
            // pg_query's walk does not descend into PREPARE.
            if let Some(q) = s.query.as_ref().and_then(|q| q.node.as_ref()) {
                facts.prepared_kind = Some(top_kind(q));
                facts.actions.insert(top_kind(q));
                visit(q, facts);
            }
        }
        NodeRef::ExecuteStmt(s) => facts.executes = Some(s.name.clone()),
        NodeRef::DeclareCursorStmt(s) => facts.declares = Some(s.portalname.clone()),
        NodeRef::FetchStmt(s) if !s.ismove => facts.fetches = Some(s.portalname.clone()),
        NodeRef::DeallocateStmt(s) => {
            if s.isall || s.name.is_empty() {
                facts.deallocates_all = true;
            } else {
                facts.deallocates = Some(s.name.clone());
            }
        }
        NodeRef::DiscardStmt(s) => {
            facts.deallocates_all |= s.target == protobuf::DiscardMode::DiscardAll as i32;
        }
        _ => {}
    }
    if facts.kind == Some(Kind::Ddl) || matches!(facts.kind, Some(Kind::Drop)) {
        facts.risks.insert(Risk::SchemaChange);
    }
}

/// What a client reading a `COPY … TO STDOUT` needs to know.
fn copy_out(s: &protobuf::CopyStmt) -> crate::facts::CopyOut {
    use crate::facts::{CopyFormat, CopyOut};
    let mut out = CopyOut::default();
    for o in &s.options {
        let Some(NodeEnum::DefElem(d)) = o.node.as_ref() else {
            continue;
        };
        let arg = match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
            Some(NodeEnum::String(v)) => Some(v.sval.clone()),
            Some(NodeEnum::Boolean(b)) => Some(b.boolval.to_string()),
            Some(NodeEnum::Integer(i)) => Some(i.ival.to_string()),
            _ => None,
        };
        match d.defname.to_ascii_lowercase().as_str() {
            "format" => {
                out.format = match arg.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("csv") => CopyFormat::Csv,
                    Some("binary") => CopyFormat::Binary,
                    _ => CopyFormat::Text,
                }
            }
            "delimiter" => out.delimiter = arg,
            "null" => out.null = arg,
            "quote" => out.quote = arg,
            "escape" => out.escape = arg,
            "encoding" => out.encoding = arg,
            "header" => {
                out.header = !matches!(
                    arg.as_deref().map(str::to_ascii_lowercase).as_deref(),
                    Some("false" | "off" | "0" | "no")
                )
            }
            _ => {}
        }
    }
    out.probe = match (
        &s.relation,
        s.query.as_deref().and_then(|q| q.node.as_ref()),
    ) {
        (_, Some(q)) => q.deparse(pg_query::DeparseOptions::default()).ok(),
        (Some(rv), None) => {
            let cols: Vec<String> = s
                .attlist
                .iter()
                .filter_map(|c| match c.node.as_ref() {
                    Some(NodeEnum::String(v)) => Some(quote_ident(&v.sval)),
                    _ => None,
                })
                .collect();
            let list = if cols.is_empty() {
                "*".to_owned()
            } else {
                cols.join(", ")
            };
            let table = if rv.schemaname.is_empty() {
                quote_ident(&rv.relname)
            } else {
                format!(
                    "{}.{}",
                    quote_ident(&rv.schemaname),
                    quote_ident(&rv.relname)
                )
            };
            Some(format!("SELECT {list} FROM {table}"))
        }
        (None, None) => None,
    };
    out
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// PostgreSQL's default `search_path`.
pub fn default_search_path() -> Vec<String> {
    vec!["$user".to_owned(), "public".to_owned()]
}

/// The schemas a `SET search_path` names.
fn search_path_of(s: &protobuf::VariableSetStmt) -> Vec<String> {
    let set_value = s.kind == protobuf::VariableSetKind::VarSetValue as i32;
    if !set_value {
        // RESET, DEFAULT, FROM CURRENT (the current path: no change).
        return default_search_path();
    }
    s.args
        .iter()
        .filter_map(|a| match a.node.as_ref() {
            Some(NodeEnum::AConst(c)) => match &c.val {
                Some(a_const::Val::Sval(v)) => Some(v.sval.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The schemas of a search_path value as text, as the server shows it
/// (`"$user", public, "My Schema"`): split at commas outside double
/// quotes, quotes removed (`""` inside them is one `"`), unquoted names
/// folded to lower case as the server folds them.
pub fn split_search_path(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut name = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = value.chars().peekable();
    let mut push = |name: &mut String, was_quoted: &mut bool| {
        let n = if *was_quoted {
            std::mem::take(name)
        } else {
            std::mem::take(name).trim().to_lowercase()
        };
        if !n.is_empty() {
            out.push(n);
        }
        *was_quoted = false;
    };
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                name.push('"');
            }
            '"' => {
                if !quoted {
                    // What came before the quote on this item was blanks.
                    name.clear();
                }
                quoted = !quoted;
                was_quoted = true;
            }
            ',' if !quoted => push(&mut name, &mut was_quoted),
            // Blanks after a closing quote.
            _ if !quoted && was_quoted => {}
            c => name.push(c),
        }
    }
    push(&mut name, &mut was_quoted);
    out
}

/// True for EXPLAIN (ANALYZE [true]) and EXPLAIN ANALYZE: the statement runs.
fn explain_analyzes(e: &protobuf::ExplainStmt, sensitive: &mut bool) -> bool {
    option_on(&e.options, "analyze", sensitive)
}

/// Whether the option `name` is given and not switched off (`FULL`,
/// `FULL true`, `FULL 'on'`). A value makes the verdict literal-sensitive:
/// `'off'` and `'on'` share a template.
fn option_on(options: &[protobuf::Node], name: &str, sensitive: &mut bool) -> bool {
    options.iter().any(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case(name) => {
            *sensitive |= d.arg.is_some();
            match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
                None => true,
                Some(NodeEnum::Boolean(b)) => b.boolval,
                Some(NodeEnum::String(s)) => !matches!(
                    s.sval.to_ascii_lowercase().as_str(),
                    "false" | "off" | "0" | "no"
                ),
                Some(NodeEnum::Integer(i)) => i.ival != 0,
                // Anything else: assume it is on.
                Some(_) => true,
            }
        }
        _ => false,
    })
}

/// `LOCK TABLE` in EXCLUSIVE mode blocks every write and most locks, and
/// in ACCESS EXCLUSIVE (the default) every read too, until the transaction
/// ends. SHARE and SHARE ROW EXCLUSIVE, which applications take to read a
/// table while it cannot change, are left alone.
const EXCLUSIVE_LOCK: i32 = 7;

/// An UPDATE or DELETE: the table it writes, and whether its WHERE filters.
fn filtered_write(
    kind: Kind,
    relation: Option<&protobuf::RangeVar>,
    where_clause: Option<&protobuf::Node>,
    facts: &mut StatementFacts,
) {
    facts.dml_count += 1;
    facts.actions.insert(kind);
    if let Some(rv) = relation {
        facts.tables_written.insert(relation_name(rv));
    }
    if where_clause.is_none_or(|w| unfiltered(w, &mut facts.literal_sensitive)) {
        facts.risks.insert(Risk::UnfilteredWrite);
    }
}

/// A WHERE (or MERGE `ON`) that does not pick rows: always true, or a
/// constant expression (`'t'::boolean`, `1 IN (1)`, `$1`) that names no
/// column, so it holds for every row or for none. A constant that is
/// always false (`1 = 0`, which ORMs write for an empty IN list) filters.
fn unfiltered(w: &protobuf::Node, sensitive: &mut bool) -> bool {
    if always_true(w, sensitive) {
        return true;
    }
    !names_column(w) && !always_false(w, sensitive)
}

/// Whether `w` refers to a column anywhere. `col = …` and `… = col` answer
/// at once, without a pass over the tree: most filters look like that.
fn names_column(w: &protobuf::Node) -> bool {
    let is_column = |e: &Option<Box<protobuf::Node>>| {
        matches!(
            e.as_deref().and_then(|n| n.node.as_ref()),
            Some(NodeEnum::ColumnRef(_))
        )
    };
    if let Some(NodeEnum::AExpr(e)) = &w.node {
        if is_column(&e.lexpr) || is_column(&e.rexpr) {
            return true;
        }
    }
    crate::sweep::sweep(w).column_refs > 0
}

/// What only a complete pass over the tree finds (see `sweep.rs`): calls,
/// relations and settings wherever they sit, and data changes that the
/// walk above did not reach.
fn complete(node: &NodeEnum, facts: &mut StatementFacts) {
    let found = crate::sweep::sweep(node);
    for call in &found.calls {
        function(call, facts);
    }
    facts.tables_read.extend(found.relations);
    for name in &found.settings {
        setting(name, true, facts);
    }
    if found.do_blocks > 0 {
        facts.risks.insert(Risk::DynamicCode);
    }
    if found.dml as u32 > facts.dml_count {
        // A data change Sluice cannot place: count it, judge it unseen.
        facts.dml_count = found.dml as u32;
        facts.risks.insert(Risk::DynamicCode);
    }
    // Writing the system catalogs directly (as a superuser login can)
    // changes privileges, row security or triggers without the statements
    // that would be judged for it.
    if facts.tables_written.iter().any(|t| is_catalog(t)) {
        facts.risks.insert(Risk::Privileges);
    }
}

/// `pg_catalog.x`, or an unqualified `pg_x` (pg_catalog is searched first).
fn is_catalog(table: &str) -> bool {
    let lower = table.to_ascii_lowercase();
    lower.starts_with("pg_catalog.") || (!lower.contains('.') && lower.starts_with("pg_"))
}

fn setting(name: &str, sets_value: bool, facts: &mut StatementFacts) {
    let lower = name.to_ascii_lowercase();
    if !sets_value {
        return;
    }
    if is_identity_setting(&lower) {
        facts.risks.insert(Risk::SetRole);
    } else if matches!(
        lower.as_str(),
        "session_preload_libraries"
            | "local_preload_libraries"
            | "shared_preload_libraries"
            | "dynamic_library_path"
    ) {
        // Loads a library into later sessions: LOAD by another name.
        facts.risks.insert(Risk::LoadLibrary);
    } else if lower == "session_replication_role" {
        // `replica` switches off triggers and foreign-key checks.
        facts.risks.insert(Risk::DisableTrigger);
    } else if matches!(
        lower.as_str(),
        "client_encoding" | "names" | "standard_conforming_strings" | "backslash_quote"
    ) {
        facts.risks.insert(Risk::ClientEncoding);
    } else if lower.starts_with("sluice.") {
        facts.risks.insert(Risk::SluiceSetting);
    }
}

fn alter_table_cmd(c: &protobuf::AlterTableCmd, facts: &mut StatementFacts) {
    let t = AlterTableType::try_from(c.subtype).unwrap_or(AlterTableType::Undefined);
    match t {
        AlterTableType::AtDropColumn => {
            facts.risks.insert(Risk::DropColumn);
        }
        AlterTableType::AtDisableRowSecurity | AlterTableType::AtNoForceRowSecurity => {
            facts.risks.insert(Risk::DisableRowSecurity);
        }
        AlterTableType::AtDisableTrig
        | AlterTableType::AtDisableTrigAll
        | AlterTableType::AtDisableTrigUser => {
            facts.risks.insert(Risk::DisableTrigger);
        }
        AlterTableType::AtSetRelOptions
        | AlterTableType::AtSetOptions
        | AlterTableType::AtResetRelOptions => {
            let mentions_encryption = c.def.as_deref().map(|d| format!("{d:?}")).is_some_and(|d| {
                let d = d.to_ascii_lowercase();
                d.contains("encrypt") || d.contains("crypt")
            });
            if mentions_encryption {
                facts.risks.insert(Risk::Encryption);
            }
        }
        _ => {}
    }
}

/// What a call tells: its name, and for `set_config` the setting.
fn function(call: &crate::sweep::Call, facts: &mut StatementFacts) {
    let Some(base) = call.parts.last() else {
        return;
    };
    let base = base.to_ascii_lowercase();
    facts.functions.insert(call.parts.join("."));
    if base == "set_config" {
        facts.literal_sensitive = true;
        let [first, second] = &call.literal_args;
        if first
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case("search_path"))
        {
            match second {
                Some(value) => facts.search_path = Some(split_search_path(value)),
                // A computed path could name any schema.
                None => {
                    facts.risks.insert(Risk::DynamicCode);
                }
            }
        }
        match first {
            Some(name) => setting(name, true, facts),
            // A computed setting name could be anything.
            None => {
                facts.risks.insert(Risk::DynamicCode);
            }
        }
    }
    if let Some(risk) = function_risk(&base) {
        facts.risks.insert(risk);
    }
}

/// The risk of calling a function, by its (lower-case, unqualified) name.
pub fn function_risk(base: &str) -> Option<Risk> {
    match base {
        "pg_read_file"
        | "pg_read_binary_file"
        | "pg_ls_dir"
        | "pg_stat_file"
        | "pg_ls_logdir"
        | "pg_ls_waldir"
        | "pg_ls_tmpdir"
        | "pg_ls_archive_statusdir"
        | "pg_file_write"
        | "pg_file_rename"
        | "pg_file_unlink"
        | "pg_file_sync"
        | "pg_logdir_ls"
        | "pg_ls_logicalsnapdir"
        | "pg_ls_logicalmapdir"
        | "pg_ls_replslotdir" => Some(Risk::ServerFileFunction),
        // They run SQL given as text (or read whole tables and schemas
        // named by a string), which Sluice cannot see before it runs.
        "query_to_xml"
        | "query_to_xmlschema"
        | "query_to_xml_and_xmlschema"
        | "table_to_xml"
        | "table_to_xmlschema"
        | "table_to_xml_and_xmlschema"
        | "schema_to_xml"
        | "schema_to_xmlschema"
        | "schema_to_xml_and_xmlschema"
        | "database_to_xml"
        | "database_to_xmlschema"
        | "database_to_xml_and_xmlschema"
        | "ts_stat"
        | "ts_rewrite" => Some(Risk::DynamicCode),
        b if b.starts_with("lo_") || matches!(b, "loread" | "lowrite") => Some(Risk::LargeObject),
        b if b.starts_with("dblink") || b.starts_with("postgres_fdw") => Some(Risk::Dblink),
        "pg_terminate_backend"
        | "pg_cancel_backend"
        | "pg_reload_conf"
        | "pg_rotate_logfile"
        | "pg_promote" => Some(Risk::SignalBackend),
        "pgp_sym_decrypt" | "pgp_pub_decrypt" | "decrypt" | "decrypt_iv" => Some(Risk::Encryption),
        _ => None,
    }
}

/// Risks found from the tokens, independent of how deep the tree walk goes:
/// a risky function name anywhere outside a string literal counts, and a
/// Unicode-escaped identifier (which could spell any name) is dynamic code.
fn token_risks(sql: &str, tokens: &[protobuf::ScanToken]) -> Vec<(usize, Risk)> {
    const IDENT: i32 = 258;
    const UIDENT: i32 = 259;
    let mut out = Vec::new();
    for t in tokens {
        let at = t.start.max(0) as usize;
        match t.token {
            IDENT => {
                let text = sql.get(at..t.end.max(0) as usize).unwrap_or_default();
                let name = text.trim_matches('"').to_ascii_lowercase();
                if let Some(r) = function_risk(&name) {
                    out.push((at, r));
                }
            }
            UIDENT => out.push((at, Risk::DynamicCode)),
            _ => {}
        }
    }
    out
}

fn names_in(objects: &[protobuf::Node]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| match o.node.as_ref() {
            Some(NodeEnum::List(l)) => Some(
                l.items
                    .iter()
                    .filter_map(|i| match i.node.as_ref() {
                        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("."),
            ),
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// True for a WHERE clause that holds for every row: `true`, `1 = 1`,
/// `'a' = 'a'`, `x = x`, `NOT false`, `… OR true`, `true AND true`.
/// `sensitive` is set when the answer depended on a literal's value.
fn always_true(node: &protobuf::Node, sensitive: &mut bool) -> bool {
    match node.node.as_ref() {
        Some(NodeEnum::AConst(c)) => {
            *sensitive = true;
            matches!(&c.val, Some(a_const::Val::Boolval(b)) if b.boolval)
        }
        Some(NodeEnum::TypeCast(tc)) => {
            tc.arg.as_deref().is_some_and(|a| always_true(a, sensitive))
        }
        Some(NodeEnum::BoolExpr(b)) => match BoolExprType::try_from(b.boolop) {
            // Evaluate every argument so that sensitivity is always noticed.
            Ok(BoolExprType::OrExpr) => b
                .args
                .iter()
                .fold(false, |acc, a| always_true(a, sensitive) | acc),
            Ok(BoolExprType::AndExpr) => b
                .args
                .iter()
                .fold(true, |acc, a| always_true(a, sensitive) & acc),
            Ok(BoolExprType::NotExpr) => b.args.first().is_some_and(|a| always_false(a, sensitive)),
            _ => false,
        },
        Some(NodeEnum::AExpr(e)) => {
            let op: Vec<&str> = e
                .name
                .iter()
                .filter_map(|n| match n.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            let (Some(l), Some(r)) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else {
                return false;
            };
            if constant(l).is_some() && constant(r).is_some()
                || matches!(
                    (l.node.as_ref(), r.node.as_ref()),
                    (Some(NodeEnum::AConst(_)), Some(NodeEnum::AConst(_)))
                )
            {
                *sensitive = true;
            }
            let same = same_expr(l, r);
            match op.as_slice() {
                ["="] | [">="] | ["<="] => same || compare_consts(l, r, op[0]),
                ["<>"] | ["!="] | [">"] | ["<"] => compare_consts(l, r, op[0]),
                _ => false,
            }
        }
        _ => false,
    }
}

fn always_false(node: &protobuf::Node, sensitive: &mut bool) -> bool {
    match node.node.as_ref() {
        Some(NodeEnum::AConst(c)) => {
            *sensitive = true;
            matches!(&c.val, Some(a_const::Val::Boolval(b)) if !b.boolval)
        }
        Some(NodeEnum::BoolExpr(b)) if b.boolop == BoolExprType::NotExpr as i32 => {
            b.args.first().is_some_and(|a| always_true(a, sensitive))
        }
        // `1 = 0`, `1 <> 1`: plain operators on small integers only, read
        // exactly (not `IS DISTINCT FROM`, not numbers a float would round).
        Some(NodeEnum::AExpr(e)) if e.kind == protobuf::AExprKind::AexprOp as i32 => {
            let (Some(l), Some(r)) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else {
                return false;
            };
            let op = match e.name.as_slice() {
                [n] => match n.node.as_ref() {
                    Some(NodeEnum::String(s)) => s.sval.as_str(),
                    _ => return false,
                },
                _ => return false,
            };
            let int = |n: &protobuf::Node| match n.node.as_ref() {
                Some(NodeEnum::AConst(c)) => match &c.val {
                    Some(a_const::Val::Ival(i)) => Some(i64::from(i.ival)),
                    _ => None,
                },
                _ => None,
            };
            let (Some(a), Some(b)) = (int(l), int(r)) else {
                return false;
            };
            *sensitive = true;
            match op {
                "=" => a != b,
                "<>" | "!=" => a == b,
                "<" => a >= b,
                ">" => a <= b,
                "<=" => a > b,
                ">=" => a < b,
                _ => false,
            }
        }
        _ => false,
    }
}

/// The same column or the same constant on both sides (ignoring positions).
fn same_expr(l: &protobuf::Node, r: &protobuf::Node) -> bool {
    match (l.node.as_ref(), r.node.as_ref()) {
        (Some(NodeEnum::ColumnRef(a)), Some(NodeEnum::ColumnRef(b))) => a.fields == b.fields,
        (Some(NodeEnum::AConst(a)), Some(NodeEnum::AConst(b))) => a.val == b.val && !a.isnull,
        _ => false,
    }
}

fn constant(n: &protobuf::Node) -> Option<f64> {
    match n.node.as_ref() {
        Some(NodeEnum::AConst(c)) => match &c.val {
            Some(a_const::Val::Ival(i)) => Some(i.ival as f64),
            Some(a_const::Val::Fval(f)) => f.fval.parse().ok(),
            _ => None,
        },
        Some(NodeEnum::TypeCast(tc)) => tc.arg.as_deref().and_then(constant),
        _ => None,
    }
}

fn compare_consts(l: &protobuf::Node, r: &protobuf::Node, op: &str) -> bool {
    let (Some(a), Some(b)) = (constant(l), constant(r)) else {
        return false;
    };
    match op {
        "=" => a == b,
        "<>" | "!=" => a != b,
        ">" => a > b,
        "<" => a < b,
        ">=" => a >= b,
        "<=" => a <= b,
        _ => false,
    }
}
