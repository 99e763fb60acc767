//! Which columns a statement reads and writes, as `table.column` (the table
//! as written, schema-qualified when it was), resolved through aliases,
//! joins, subqueries and CTEs.
//!
//! Without the catalog an unqualified column in a query over several tables
//! could belong to any of them, so it is counted for each (more is safe for
//! a policy that forbids a column; it never hides one). `*` is `table.*`.
//! Any column reference the scoped walk does not reach (an expression form
//! it does not know) is still counted, for every table of the statement.

use std::collections::{BTreeSet, HashSet};

use pg_query::protobuf::{self, Node};
use pg_query::{NodeEnum, NodeRef};

/// What a FROM item makes visible.
#[derive(Debug, Clone)]
enum Source {
    /// A table (as written).
    Table(String),
    /// A subquery, CTE or function: its own columns were counted where it is defined.
    Derived,
}

/// One level of name visibility: the FROM items of one query.
#[derive(Debug, Default, Clone)]
struct Scope {
    /// (name used to refer to it, what it is)
    items: Vec<(String, Source)>,
}

/// Columns read and written.
#[derive(Debug, Default)]
pub struct Columns {
    /// `table.column` read.
    pub read: BTreeSet<String>,
    /// `table.column` written.
    pub written: BTreeSet<String>,
    /// Every table named anywhere (for column references the walk missed).
    tables: BTreeSet<String>,
    /// Column references already counted (by address).
    seen: HashSet<usize>,
    /// Names of CTEs visible at the current point (innermost last).
    ctes: Vec<String>,
}

fn addr<T>(r: &T) -> usize {
    r as *const T as usize
}

pub(crate) fn table_name(rv: &protobuf::RangeVar) -> String {
    if rv.schemaname.is_empty() {
        rv.relname.clone()
    } else {
        format!("{}.{}", rv.schemaname, rv.relname)
    }
}

/// The name a FROM item is referred to by: its alias, else its table's name.
pub(crate) fn range_alias(rv: &protobuf::RangeVar) -> String {
    rv.alias
        .as_ref()
        .map(|a| a.aliasname.clone())
        .unwrap_or_else(|| rv.relname.clone())
}

pub(crate) fn strings(nodes: &[Node]) -> Vec<&str> {
    nodes
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// The columns of one top-level statement.
pub fn of_statement(node: &NodeEnum) -> Columns {
    let mut c = Columns::default();
    let outer: Vec<Scope> = Vec::new();
    c.statement(node, &outer);
    // Whatever the scoped walk did not reach still counts.
    let tables: Vec<String> = c.tables.iter().cloned().collect();
    for (n, _, _, _) in node.nodes() {
        if let NodeRef::ColumnRef(cr) = n {
            if !c.seen.contains(&addr(cr)) {
                let fields = strings(&cr.fields);
                if let Some(col) = fields.last() {
                    for t in &tables {
                        c.read.insert(format!("{t}.{col}"));
                    }
                }
            }
        }
    }
    c
}

impl Columns {
    fn statement(&mut self, node: &NodeEnum, outer: &[Scope]) {
        match node {
            NodeEnum::SelectStmt(s) => self.select(s, outer),
            NodeEnum::InsertStmt(s) => self.insert(s, outer),
            NodeEnum::UpdateStmt(s) => self.update(s, outer),
            NodeEnum::DeleteStmt(s) => self.delete(s, outer),
            NodeEnum::MergeStmt(s) => self.merge(s, outer),
            NodeEnum::CopyStmt(s) => self.copy(s, outer),
            NodeEnum::ExplainStmt(e) => {
                if let Some(q) = e.query.as_ref().and_then(|q| q.node.as_ref()) {
                    self.statement(q, outer);
                }
            }
            NodeEnum::PrepareStmt(p) => {
                if let Some(q) = p.query.as_ref().and_then(|q| q.node.as_ref()) {
                    self.statement(q, outer);
                }
            }
            NodeEnum::CreateTableAsStmt(c) => {
                if let Some(q) = c.query.as_ref().and_then(|q| q.node.as_ref()) {
                    self.statement(q, outer);
                }
            }
            NodeEnum::DeclareCursorStmt(d) => {
                if let Some(q) = d.query.as_ref().and_then(|q| q.node.as_ref()) {
                    self.statement(q, outer);
                }
            }
            _ => {}
        }
    }

    /// Enter a WITH clause: walk each CTE and make its name visible.
    fn with(&mut self, with: Option<&protobuf::WithClause>, outer: &[Scope]) -> usize {
        let before = self.ctes.len();
        let Some(w) = with else { return before };
        for cte in &w.ctes {
            if let Some(NodeEnum::CommonTableExpr(c)) = cte.node.as_ref() {
                // A recursive CTE sees itself.
                if w.recursive {
                    self.ctes.push(c.ctename.clone());
                }
                if let Some(q) = c.ctequery.as_ref().and_then(|q| q.node.as_ref()) {
                    self.statement(q, outer);
                }
                if !w.recursive {
                    self.ctes.push(c.ctename.clone());
                }
            }
        }
        before
    }

    fn relation(&mut self, rv: &protobuf::RangeVar) -> (String, Source) {
        let alias = range_alias(rv);
        if rv.schemaname.is_empty() && self.ctes.contains(&rv.relname) {
            return (alias, Source::Derived);
        }
        let name = table_name(rv);
        self.tables.insert(name.clone());
        (alias, Source::Table(name))
    }

    /// The items of a FROM clause; subqueries in it are walked.
    fn walk_from_clause(&mut self, items: &[Node], outer: &[Scope], scope: &mut Scope) {
        for item in items {
            self.walk_from_item(item, outer, scope);
        }
    }

    fn walk_from_item(&mut self, item: &Node, outer: &[Scope], scope: &mut Scope) {
        match item.node.as_ref() {
            Some(NodeEnum::RangeVar(rv)) => {
                let entry = self.relation(rv);
                scope.items.push(entry);
            }
            Some(NodeEnum::JoinExpr(j)) => {
                for side in [&j.larg, &j.rarg].into_iter().flatten() {
                    self.walk_from_item(side, outer, scope);
                }
                if let Some(q) = &j.quals {
                    let chain = chain(outer, scope);
                    self.expr(q, &chain);
                }
                // USING (a) reads a from both sides.
                for col in strings(&j.using_clause) {
                    self.unqualified(col, std::slice::from_ref(scope));
                }
                if let Some(a) = &j.alias {
                    scope.items.push((a.aliasname.clone(), Source::Derived));
                }
            }
            Some(NodeEnum::RangeSubselect(s)) => {
                if let Some(q) = s.subquery.as_ref().and_then(|q| q.node.as_ref()) {
                    // LATERAL sees the items before it.
                    let chain = if s.lateral {
                        chain(outer, scope)
                    } else {
                        outer.to_vec()
                    };
                    self.statement(q, &chain);
                }
                if let Some(a) = &s.alias {
                    scope.items.push((a.aliasname.clone(), Source::Derived));
                }
            }
            Some(NodeEnum::RangeFunction(f)) => {
                let chain = chain(outer, scope);
                for func in &f.functions {
                    self.expr(func, &chain);
                }
                let name = f.alias.as_ref().map(|a| a.aliasname.clone());
                scope
                    .items
                    .push((name.unwrap_or_default(), Source::Derived));
            }
            Some(other) => {
                // Other FROM forms (TABLESAMPLE, XMLTABLE, …): walk what they hold.
                let chain = chain(outer, scope);
                self.expr_enum(other, &chain);
            }
            None => {}
        }
    }

    fn select(&mut self, s: &protobuf::SelectStmt, outer: &[Scope]) {
        let ctes = self.with(s.with_clause.as_ref(), outer);
        let setop = s.op != protobuf::SetOperation::SetopNone as i32
            && s.op != protobuf::SetOperation::Undefined as i32;
        if setop {
            for side in [&s.larg, &s.rarg].into_iter().flatten() {
                self.select(side, outer);
            }
        } else {
            let mut scope = Scope::default();
            self.walk_from_clause(&s.from_clause, outer, &mut scope);
            let chain = chain(outer, &scope);
            for list in [
                &s.target_list,
                &s.distinct_clause,
                &s.group_clause,
                &s.window_clause,
                &s.sort_clause,
                &s.values_lists,
            ] {
                for n in list {
                    self.expr(n, &chain);
                }
            }
            for n in [
                &s.where_clause,
                &s.having_clause,
                &s.limit_count,
                &s.limit_offset,
            ]
            .into_iter()
            .flatten()
            {
                self.expr(n, &chain);
            }
        }
        self.ctes.truncate(ctes);
    }

    fn target_table(&mut self, rv: Option<&protobuf::RangeVar>) -> (Option<String>, Scope) {
        let mut scope = Scope::default();
        let Some(rv) = rv else {
            return (None, scope);
        };
        let (alias, source) = self.relation(rv);
        let name = match &source {
            Source::Table(t) => Some(t.clone()),
            Source::Derived => None,
        };
        scope.items.push((alias, source));
        (name, scope)
    }

    fn insert(&mut self, s: &protobuf::InsertStmt, outer: &[Scope]) {
        let ctes = self.with(s.with_clause.as_ref(), outer);
        let (table, scope) = self.target_table(s.relation.as_ref());
        if let Some(t) = &table {
            let cols: Vec<&str> = s
                .cols
                .iter()
                .filter_map(|c| match c.node.as_ref() {
                    Some(NodeEnum::ResTarget(r)) => Some(r.name.as_str()),
                    _ => None,
                })
                .collect();
            if cols.is_empty() {
                self.written.insert(format!("{t}.*"));
            }
            for c in cols {
                self.written.insert(format!("{t}.{c}"));
            }
        }
        if let Some(q) = s.select_stmt.as_ref().and_then(|q| q.node.as_ref()) {
            self.statement(q, outer);
        }
        let chain = chain(outer, &scope);
        if let Some(oc) = &s.on_conflict_clause {
            self.set_list(&oc.target_list, table.as_deref(), &chain);
            if let Some(w) = &oc.where_clause {
                self.expr(w, &chain);
            }
        }
        if let Some(r) = &s.returning_clause {
            for n in &r.exprs {
                self.expr(n, &chain);
            }
        }
        self.ctes.truncate(ctes);
    }

    /// `SET a = …, b = …`: a and b written, the values read.
    fn set_list(&mut self, targets: &[Node], table: Option<&str>, chain: &[Scope]) {
        for t in targets {
            if let Some(NodeEnum::ResTarget(r)) = t.node.as_ref() {
                if let Some(table) = table {
                    self.written.insert(format!("{table}.{}", r.name));
                }
                if let Some(v) = &r.val {
                    self.expr(v, chain);
                }
            }
        }
    }

    fn update(&mut self, s: &protobuf::UpdateStmt, outer: &[Scope]) {
        let ctes = self.with(s.with_clause.as_ref(), outer);
        let (table, mut scope) = self.target_table(s.relation.as_ref());
        self.walk_from_clause(&s.from_clause, outer, &mut scope);
        let chain = chain(outer, &scope);
        self.set_list(&s.target_list, table.as_deref(), &chain);
        if let Some(w) = &s.where_clause {
            self.expr(w, &chain);
        }
        if let Some(r) = &s.returning_clause {
            for n in &r.exprs {
                self.expr(n, &chain);
            }
        }
        self.ctes.truncate(ctes);
    }

    fn delete(&mut self, s: &protobuf::DeleteStmt, outer: &[Scope]) {
        let ctes = self.with(s.with_clause.as_ref(), outer);
        let (table, mut scope) = self.target_table(s.relation.as_ref());
        if let Some(t) = table {
            self.written.insert(format!("{t}.*"));
        }
        self.walk_from_clause(&s.using_clause, outer, &mut scope);
        let chain = chain(outer, &scope);
        if let Some(w) = &s.where_clause {
            self.expr(w, &chain);
        }
        if let Some(r) = &s.returning_clause {
            for n in &r.exprs {
                self.expr(n, &chain);
            }
        }
        self.ctes.truncate(ctes);
    }

    fn merge(&mut self, s: &protobuf::MergeStmt, outer: &[Scope]) {
        let ctes = self.with(s.with_clause.as_ref(), outer);
        let (table, mut scope) = self.target_table(s.relation.as_ref());
        if let Some(src) = &s.source_relation {
            self.walk_from_item(src, outer, &mut scope);
        }
        let chain = chain(outer, &scope);
        if let Some(j) = &s.join_condition {
            self.expr(j, &chain);
        }
        for w in &s.merge_when_clauses {
            if let Some(NodeEnum::MergeWhenClause(m)) = w.node.as_ref() {
                if let Some(c) = &m.condition {
                    self.expr(c, &chain);
                }
                self.set_list(&m.target_list, table.as_deref(), &chain);
                for v in &m.values {
                    self.expr(v, &chain);
                }
                if m.target_list.is_empty() {
                    if let Some(t) = &table {
                        // DELETE, or INSERT without a column list.
                        self.written.insert(format!("{t}.*"));
                    }
                }
            }
        }
        if let Some(r) = &s.returning_clause {
            for n in &r.exprs {
                self.expr(n, &chain);
            }
        }
        self.ctes.truncate(ctes);
    }

    fn copy(&mut self, s: &protobuf::CopyStmt, outer: &[Scope]) {
        if let Some(q) = s.query.as_ref().and_then(|q| q.node.as_ref()) {
            self.statement(q, outer);
        }
        let Some(rv) = &s.relation else { return };
        let table = table_name(rv);
        self.tables.insert(table.clone());
        let cols = strings(&s.attlist);
        let set = if s.is_from {
            &mut self.written
        } else {
            &mut self.read
        };
        if cols.is_empty() {
            set.insert(format!("{table}.*"));
        }
        for c in cols {
            set.insert(format!("{table}.{c}"));
        }
    }

    /// A column named without a table: every table of the innermost query
    /// that has tables could hold it.
    fn unqualified(&mut self, col: &str, chain: &[Scope]) {
        for scope in chain.iter().rev() {
            let tables: Vec<&String> = scope
                .items
                .iter()
                .filter_map(|(_, s)| match s {
                    Source::Table(t) => Some(t),
                    Source::Derived => None,
                })
                .collect();
            if !scope.items.is_empty() {
                for t in tables {
                    self.read.insert(format!("{t}.{col}"));
                }
                return;
            }
        }
    }

    fn column_ref(&mut self, cr: &protobuf::ColumnRef, chain: &[Scope]) {
        self.seen.insert(addr(cr));
        let star = matches!(
            cr.fields.last().and_then(|f| f.node.as_ref()),
            Some(NodeEnum::AStar(_))
        );
        let names = strings(&cr.fields);
        let col = if star {
            "*"
        } else {
            names.last().copied().unwrap_or("")
        };
        let qualifier: &[&str] = if star {
            &names[..]
        } else {
            &names[..names.len().saturating_sub(1)]
        };
        match qualifier {
            [] => self.unqualified(col, chain),
            [rel] => {
                for scope in chain.iter().rev() {
                    if let Some((_, source)) = scope.items.iter().find(|(n, _)| n == rel) {
                        if let Source::Table(t) = source {
                            self.read.insert(format!("{t}.{col}"));
                        }
                        return;
                    }
                }
                // Not a FROM item: a composite column (`(t).x`) or an outer name.
                self.unqualified(rel, chain);
            }
            // schema.table.column (or db.schema.table.column).
            [.., schema, table] => {
                self.read.insert(format!("{schema}.{table}.{col}"));
            }
        }
    }

    fn expr(&mut self, node: &Node, chain: &[Scope]) {
        if let Some(n) = node.node.as_ref() {
            self.expr_enum(n, chain);
        }
    }

    fn exprs(&mut self, nodes: &[Node], chain: &[Scope]) {
        for n in nodes {
            self.expr(n, chain);
        }
    }

    fn opt(&mut self, node: &Option<Box<Node>>, chain: &[Scope]) {
        if let Some(n) = node {
            self.expr(n, chain);
        }
    }

    fn expr_enum(&mut self, n: &NodeEnum, chain: &[Scope]) {
        use NodeEnum as N;
        match n {
            N::ColumnRef(cr) => self.column_ref(cr, chain),
            N::SelectStmt(_)
            | N::InsertStmt(_)
            | N::UpdateStmt(_)
            | N::DeleteStmt(_)
            | N::MergeStmt(_) => self.statement(n, chain),
            N::SubLink(s) => {
                self.opt(&s.testexpr, chain);
                if let Some(q) = s.subselect.as_ref().and_then(|q| q.node.as_ref()) {
                    self.statement(q, chain);
                }
            }
            N::ResTarget(r) => {
                self.opt(&r.val, chain);
                self.exprs(&r.indirection, chain);
            }
            N::AExpr(e) => {
                self.opt(&e.lexpr, chain);
                self.opt(&e.rexpr, chain);
            }
            N::BoolExpr(e) => self.exprs(&e.args, chain),
            N::FuncCall(f) => {
                self.exprs(&f.args, chain);
                self.exprs(&f.agg_order, chain);
                self.opt(&f.agg_filter, chain);
                if let Some(w) = &f.over {
                    self.exprs(&w.partition_clause, chain);
                    self.exprs(&w.order_clause, chain);
                }
            }
            N::TypeCast(t) => self.opt(&t.arg, chain),
            N::CaseExpr(c) => {
                self.opt(&c.arg, chain);
                self.exprs(&c.args, chain);
                self.opt(&c.defresult, chain);
            }
            N::CaseWhen(w) => {
                self.opt(&w.expr, chain);
                self.opt(&w.result, chain);
            }
            N::CoalesceExpr(c) => self.exprs(&c.args, chain),
            N::MinMaxExpr(m) => self.exprs(&m.args, chain),
            N::NullTest(t) => self.opt(&t.arg, chain),
            N::BooleanTest(t) => self.opt(&t.arg, chain),
            N::AArrayExpr(a) => self.exprs(&a.elements, chain),
            N::RowExpr(r) => self.exprs(&r.args, chain),
            N::SortBy(s) => self.opt(&s.node, chain),
            N::AIndirection(i) => {
                self.opt(&i.arg, chain);
                self.exprs(&i.indirection, chain);
            }
            N::CollateClause(c) => self.opt(&c.arg, chain),
            N::NamedArgExpr(a) => self.opt(&a.arg, chain),
            N::GroupingSet(g) => self.exprs(&g.content, chain),
            N::WindowDef(w) => {
                self.exprs(&w.partition_clause, chain);
                self.exprs(&w.order_clause, chain);
            }
            N::List(l) => self.exprs(&l.items, chain),
            // Constants, parameters and forms without column references of
            // their own; anything missed here is caught by the final sweep.
            _ => {}
        }
    }
}

/// The scopes visible inside a query: the outer ones, then its own.
pub(crate) fn chain<S: Clone>(outer: &[S], own: &S) -> Vec<S> {
    let mut v = outer.to_vec();
    v.push(own.clone());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(sql: &str) -> (Vec<String>, Vec<String>) {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap();
        let node = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .unwrap();
        let c = of_statement(node);
        (
            c.read.into_iter().collect(),
            c.written.into_iter().collect(),
        )
    }

    fn read(sql: &str) -> Vec<String> {
        cols(sql).0
    }

    #[test]
    fn aliases_joins_and_stars() {
        assert_eq!(
            read("select c.email, o.total from customers c join orders o on o.customer_id = c.id"),
            vec![
                "customers.email",
                "customers.id",
                "orders.customer_id",
                "orders.total"
            ]
        );
        assert_eq!(read("select * from app.users"), vec!["app.users.*"]);
        assert_eq!(read("select u.* from users u, teams"), vec!["users.*"]);
        assert_eq!(
            read("select \"Email\" from \"Users\" where id = 1"),
            vec!["Users.Email", "Users.id"]
        );
        assert_eq!(
            read("select app.users.email from app.users"),
            vec!["app.users.email"]
        );
    }

    #[test]
    fn ctes_and_subqueries_resolve_to_their_tables() {
        assert_eq!(
            read("with r as (select customer_id, total from orders) select customer_id from r where total > 1"),
            vec!["orders.customer_id", "orders.total"]
        );
        assert_eq!(
            read("select s.x from (select email as x from users) s"),
            vec!["users.email"]
        );
        assert_eq!(
            read("select name from users u where exists (select 1 from orders o where o.user_id = u.id)"),
            vec!["orders.user_id", "users.id", "users.name"]
        );
        // Unqualified in a query over two tables: counted for both.
        assert_eq!(
            read("select email from users join teams on true"),
            vec!["teams.email", "users.email"]
        );
    }

    #[test]
    fn writes() {
        assert_eq!(
            cols("insert into users (email, name) select email, name from staging"),
            (
                vec!["staging.email".into(), "staging.name".into()],
                vec!["users.email".into(), "users.name".into()]
            )
        );
        assert_eq!(
            cols("update users u set email = s.email from staging s where s.id = u.id returning u.name"),
            (
                vec![
                    "staging.email".into(),
                    "staging.id".into(),
                    "users.id".into(),
                    "users.name".into()
                ],
                vec!["users.email".into()]
            )
        );
        assert_eq!(cols("delete from users where id = 1").1, vec!["users.*"]);
        assert_eq!(cols("copy users (email) to stdout").0, vec!["users.email"]);
        assert_eq!(cols("insert into t values (1)").1, vec!["t.*"]);
    }

    #[test]
    fn expressions_of_every_shape_are_seen() {
        let r = read("select case when salary > 0 then coalesce(bonus, 0) end, array[ssn], row(dob), (addr).city, lower(email) collate \"C\" from staff");
        for c in [
            "staff.salary",
            "staff.bonus",
            "staff.ssn",
            "staff.dob",
            "staff.addr",
            "staff.email",
        ] {
            assert!(r.contains(&c.to_string()), "{c} in {r:?}");
        }
    }

    #[test]
    fn columns_inside_values_arrays_windows_and_cursors_are_read() {
        for (sql, col) in [
            ("select array(select email from users)", "users.email"),
            (
                "select array[(select email from users limit 1)]",
                "users.email",
            ),
            ("select array[u.ssn, u.email] from users u", "users.ssn"),
            ("values ((select email from users limit 1))", "users.email"),
            (
                "select * from (values ((select ssn from p limit 1))) v",
                "p.ssn",
            ),
            ("select (values (email)) from users", "users.email"),
            (
                "select v.x from users u, lateral (values (u.email)) v(x)",
                "users.email",
            ),
            (
                "insert into t values ((select email from users limit 1))",
                "users.email",
            ),
            (
                "with x as (values ((select ssn from p))) select * from x",
                "p.ssn",
            ),
            (
                "declare c cursor for select email from users",
                "users.email",
            ),
            (
                "select 1 from users u window w as (order by u.email)",
                "users.email",
            ),
            (
                "select row_number() over (partition by email) from users",
                "users.email",
            ),
            ("select email collate \"C\" from users", "users.email"),
            (
                "select x from t limit (select count(email) from users)",
                "users.email",
            ),
        ] {
            assert!(
                read(sql).contains(&col.to_owned()),
                "{sql}: {:?}",
                read(sql)
            );
        }
    }
}
