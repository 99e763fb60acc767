//! Where each column of a statement's result comes from: the table columns
//! its value is computed from, through expressions, aggregates, subqueries,
//! CTEs, set operations and `RETURNING`.
//!
//! Masking needs this for computed columns. PostgreSQL names the table and
//! column of a result field only when the field *is* a table column; for
//! `first_name || ' ' || last_name` or `max(dob)` it reports none, so
//! without the statement a person's name would pass as plain text.
//!
//! Names resolve as in [`crate::columns`]: without the catalog an
//! unqualified column in a query over several tables could be any of
//! theirs, so it counts for each (more sources can only mask more).

use std::collections::HashSet;
use std::rc::Rc;

use pg_query::protobuf::{self, Node};
use pg_query::{NodeEnum, NodeRef};

use crate::columns::{chain, range_alias, strings, table_name};

/// One column of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OutputColumn {
    /// A `*` over a table: it stands for as many columns as the table has,
    /// a number only the server knows.
    pub star: bool,
    /// The table columns its value is computed from, as (table as written,
    /// possibly schema-qualified; column), sorted, without duplicates.
    pub sources: Vec<(String, String)>,
}

impl OutputColumn {
    fn add(&mut self, table: &str, column: &str) {
        let s = (table.to_owned(), column.to_owned());
        if let Err(at) = self.sources.binary_search(&s) {
            self.sources.insert(at, s);
        }
    }

    /// Add `other`'s sources (and its `*`) to this column's.
    pub fn merge(&mut self, other: &OutputColumn) {
        self.star |= other.star;
        for (t, c) in &other.sources {
            self.add(t, c);
        }
    }
}

/// The columns a subquery, CTE or set operation yields, with their names.
#[derive(Debug, Default)]
struct Derived {
    columns: Vec<(String, OutputColumn)>,
}

#[derive(Debug, Clone)]
enum Item {
    Table(String),
    Derived(Rc<Derived>),
    /// A function in FROM, a join alias, a recursive CTE's own name:
    /// nothing known about its columns.
    Opaque,
}

#[derive(Debug, Default, Clone)]
struct Scope {
    items: Vec<(String, Item)>,
}

#[derive(Default)]
struct Walk {
    /// CTEs visible here, innermost last.
    ctes: Vec<(String, Item)>,
}

/// The columns of the result of one top-level statement, one per entry of
/// its target list (or `RETURNING` list); `None` for a statement that
/// returns no rows of its own (or one not understood).
pub fn of_statement(node: &NodeEnum) -> Option<Vec<OutputColumn>> {
    let mut w = Walk::default();
    let d = w.statement(node, &[])?;
    Some(d.columns.iter().map(|(_, c)| c.clone()).collect())
}

/// The name PostgreSQL gives a target without an alias, as far as a later
/// reference by name needs it.
fn default_name(val: Option<&Node>) -> String {
    match val.and_then(|v| v.node.as_ref()) {
        Some(NodeEnum::ColumnRef(cr)) => strings(&cr.fields)
            .last()
            .map(|s| (*s).to_owned())
            .unwrap_or_default(),
        Some(NodeEnum::FuncCall(f)) => strings(&f.funcname)
            .last()
            .map(|s| (*s).to_owned())
            .unwrap_or_default(),
        Some(NodeEnum::TypeCast(t)) => default_name(t.arg.as_deref()),
        _ => "?column?".to_owned(),
    }
}

impl Walk {
    fn statement(&mut self, node: &NodeEnum, outer: &[Scope]) -> Option<Derived> {
        match node {
            NodeEnum::SelectStmt(s) => Some(self.select(s, outer)),
            NodeEnum::InsertStmt(s) => self.dml(
                s.with_clause.as_ref(),
                s.relation.as_ref(),
                &[],
                s.returning_clause.as_ref(),
                outer,
            ),
            NodeEnum::UpdateStmt(s) => self.dml(
                s.with_clause.as_ref(),
                s.relation.as_ref(),
                &s.from_clause,
                s.returning_clause.as_ref(),
                outer,
            ),
            NodeEnum::DeleteStmt(s) => self.dml(
                s.with_clause.as_ref(),
                s.relation.as_ref(),
                &s.using_clause,
                s.returning_clause.as_ref(),
                outer,
            ),
            NodeEnum::MergeStmt(s) => self.dml(
                s.with_clause.as_ref(),
                s.relation.as_ref(),
                s.source_relation
                    .as_deref()
                    .map(std::slice::from_ref)
                    .unwrap_or(&[]),
                s.returning_clause.as_ref(),
                outer,
            ),
            // what they define returns its rows later (EXECUTE, FETCH)
            NodeEnum::PrepareStmt(p) => self.query(p.query.as_deref(), outer),
            NodeEnum::DeclareCursorStmt(d) => self.query(d.query.as_deref(), outer),
            _ => None,
        }
    }

    fn query(&mut self, q: Option<&Node>, outer: &[Scope]) -> Option<Derived> {
        self.statement(q?.node.as_ref()?, outer)
    }

    /// The `RETURNING` columns of an INSERT, UPDATE, DELETE or MERGE: its
    /// target table and its other FROM items in scope.
    fn dml(
        &mut self,
        with: Option<&protobuf::WithClause>,
        relation: Option<&protobuf::RangeVar>,
        from: &[Node],
        returning: Option<&protobuf::ReturningClause>,
        outer: &[Scope],
    ) -> Option<Derived> {
        let ctes = self.with(with, outer);
        let mut scope = self.target(relation);
        self.walk_from_clause(from, outer, &mut scope);
        let r = self.returning(returning, outer, &scope);
        self.ctes.truncate(ctes);
        r
    }

    fn target(&mut self, rv: Option<&protobuf::RangeVar>) -> Scope {
        let mut scope = Scope::default();
        if let Some(rv) = rv {
            scope
                .items
                .push((range_alias(rv), Item::Table(table_name(rv))));
        }
        scope
    }

    fn returning(
        &mut self,
        r: Option<&protobuf::ReturningClause>,
        outer: &[Scope],
        scope: &Scope,
    ) -> Option<Derived> {
        let r = r.filter(|r| !r.exprs.is_empty())?;
        Some(self.targets(&r.exprs, &chain(outer, scope)))
    }

    /// Enter a WITH clause; returns the depth to truncate back to.
    fn with(&mut self, with: Option<&protobuf::WithClause>, outer: &[Scope]) -> usize {
        let before = self.ctes.len();
        let Some(w) = with else { return before };
        for cte in &w.ctes {
            let Some(NodeEnum::CommonTableExpr(c)) = cte.node.as_ref() else {
                continue;
            };
            if w.recursive {
                // its recursive term sees itself, whose columns are not known yet
                self.ctes.push((c.ctename.clone(), Item::Opaque));
            }
            let derived = c
                .ctequery
                .as_ref()
                .and_then(|q| q.node.as_ref())
                .and_then(|q| self.statement(q, outer))
                .map(|d| rename(d, &strings(&c.aliascolnames)));
            let item = derived.map_or(Item::Opaque, |d| Item::Derived(Rc::new(d)));
            if w.recursive {
                self.ctes.pop();
            }
            self.ctes.push((c.ctename.clone(), item));
        }
        before
    }

    fn walk_from_clause(&mut self, items: &[Node], outer: &[Scope], scope: &mut Scope) {
        for item in items {
            self.walk_from_item(item, outer, scope);
        }
    }

    fn walk_from_item(&mut self, item: &Node, outer: &[Scope], scope: &mut Scope) {
        match item.node.as_ref() {
            Some(NodeEnum::RangeVar(rv)) => {
                let alias = range_alias(rv);
                let cte = rv
                    .schemaname
                    .is_empty()
                    .then(|| self.ctes.iter().rev().find(|(n, _)| *n == rv.relname))
                    .flatten();
                let item = match cte {
                    Some((_, Item::Derived(d))) => {
                        let cols = rv
                            .alias
                            .as_ref()
                            .map(|a| strings(&a.colnames))
                            .unwrap_or_default();
                        Item::Derived(Rc::new(rename_rc(d, &cols)))
                    }
                    Some(_) => Item::Opaque,
                    None => Item::Table(table_name(rv)),
                };
                scope.items.push((alias, item));
            }
            Some(NodeEnum::JoinExpr(j)) => {
                for side in [&j.larg, &j.rarg].into_iter().flatten() {
                    self.walk_from_item(side, outer, scope);
                }
                if let Some(a) = &j.alias {
                    scope.items.push((a.aliasname.clone(), Item::Opaque));
                }
            }
            Some(NodeEnum::RangeSubselect(s)) => {
                let chain = if s.lateral {
                    chain(outer, scope)
                } else {
                    outer.to_vec()
                };
                let d = s
                    .subquery
                    .as_ref()
                    .and_then(|q| q.node.as_ref())
                    .and_then(|q| self.statement(q, &chain));
                if let Some(a) = &s.alias {
                    let item = match d {
                        Some(d) => Item::Derived(Rc::new(rename(d, &strings(&a.colnames)))),
                        None => Item::Opaque,
                    };
                    scope.items.push((a.aliasname.clone(), item));
                }
            }
            Some(NodeEnum::RangeFunction(f)) => {
                let name = f.alias.as_ref().map(|a| a.aliasname.clone());
                scope.items.push((name.unwrap_or_default(), Item::Opaque));
            }
            _ => {}
        }
    }

    fn select(&mut self, s: &protobuf::SelectStmt, outer: &[Scope]) -> Derived {
        let ctes = self.with(s.with_clause.as_ref(), outer);
        let setop = s.op != protobuf::SetOperation::SetopNone as i32
            && s.op != protobuf::SetOperation::Undefined as i32;
        let d = if setop {
            let mut arms = [&s.larg, &s.rarg]
                .into_iter()
                .flatten()
                .map(|arm| self.select(arm, outer));
            let mut d = arms.next().unwrap_or_default();
            for arm in arms {
                for (i, (_, c)) in arm.columns.iter().enumerate() {
                    match d.columns.get_mut(i) {
                        Some((_, mine)) => mine.merge(c),
                        None => d.columns.push((String::new(), c.clone())),
                    }
                }
            }
            d
        } else if !s.values_lists.is_empty() {
            // VALUES (…), (…): column k of every row
            let scope = Scope::default();
            let chain = chain(outer, &scope);
            let mut d = Derived::default();
            for row in &s.values_lists {
                let Some(NodeEnum::List(l)) = row.node.as_ref() else {
                    continue;
                };
                for (i, v) in l.items.iter().enumerate() {
                    let c = self.expr_sources(v, &chain);
                    match d.columns.get_mut(i) {
                        Some((_, mine)) => mine.merge(&c),
                        None => d.columns.push((format!("column{}", i + 1), c)),
                    }
                }
            }
            d
        } else {
            let mut scope = Scope::default();
            self.walk_from_clause(&s.from_clause, outer, &mut scope);
            self.targets(&s.target_list, &chain(outer, &scope))
        };
        self.ctes.truncate(ctes);
        d
    }

    fn targets(&mut self, list: &[Node], chain: &[Scope]) -> Derived {
        let mut d = Derived::default();
        for t in list {
            let Some(NodeEnum::ResTarget(r)) = t.node.as_ref() else {
                continue;
            };
            if let Some(NodeEnum::ColumnRef(cr)) = r.val.as_ref().and_then(|v| v.node.as_ref()) {
                if matches!(
                    cr.fields.last().and_then(|f| f.node.as_ref()),
                    Some(NodeEnum::AStar(_))
                ) {
                    let names = strings(&cr.fields);
                    self.star(&names, chain, &mut d);
                    continue;
                }
            }
            let name = if r.name.is_empty() {
                default_name(r.val.as_deref())
            } else {
                r.name.clone()
            };
            let c = r
                .val
                .as_ref()
                .map(|v| self.expr_sources(v, chain))
                .unwrap_or_default();
            d.columns.push((name, c));
        }
        d
    }

    /// `*` or `t.*`: a derived item's columns are known one by one, a
    /// table's are not.
    fn star(&self, qualifier: &[&str], chain: &[Scope], d: &mut Derived) {
        let Some(scope) = chain.last() else { return };
        let items: Vec<&(String, Item)> = match qualifier {
            [] => scope.items.iter().collect(),
            [.., rel] => scope.items.iter().filter(|(n, _)| n == rel).collect(),
        };
        for (_, item) in items {
            match item {
                Item::Derived(inner) => d.columns.extend(inner.columns.iter().cloned()),
                Item::Table(t) => {
                    let mut c = OutputColumn {
                        star: true,
                        ..OutputColumn::default()
                    };
                    c.add(t, "*");
                    d.columns.push(("*".into(), c));
                }
                Item::Opaque => d.columns.push((
                    "*".into(),
                    OutputColumn {
                        star: true,
                        ..OutputColumn::default()
                    },
                )),
            }
        }
    }

    /// The table columns an expression reads. A subquery inside it counts
    /// through its own result columns (its WHERE only filters).
    fn expr_sources(&mut self, expr: &Node, chain: &[Scope]) -> OutputColumn {
        let mut out = OutputColumn::default();
        let Some(root) = expr.node.as_ref() else {
            return out;
        };
        // the common targets, without a walk over the expression's nodes
        match root {
            NodeEnum::ColumnRef(cr) => {
                self.column_ref(cr, chain, &mut out);
                return out;
            }
            NodeEnum::AConst(_) | NodeEnum::ParamRef(_) => return out,
            _ => {}
        }
        // Sublinks nest: only the outermost ones count here (each counts
        // its own inner ones), and column references inside any of them
        // belong to its query, not to this expression. Parts that only
        // choose or order (a CASE's conditions, an aggregate's FILTER and
        // ORDER BY, a window's PARTITION BY and ORDER BY) are not part of
        // the value either.
        let mut sublinks = Vec::new();
        let mut refs = Vec::new();
        let mut nested: HashSet<usize> = HashSet::new();
        let exclude = |n: &Node, nested: &mut HashSet<usize>| {
            let Some(e) = n.node.as_ref() else { return };
            if let NodeEnum::ColumnRef(cr) = e {
                nested.insert(cr as *const _ as usize);
            }
            for (inner, _, _, _) in e.nodes() {
                match inner {
                    NodeRef::ColumnRef(cr) => nested.insert(cr as *const _ as usize),
                    NodeRef::SubLink(l) => nested.insert(l as *const _ as usize),
                    _ => false,
                };
            }
        };
        for (n, _, _, _) in root.nodes() {
            match n {
                NodeRef::SubLink(sl) => sublinks.push(sl),
                NodeRef::ColumnRef(cr) => refs.push(cr),
                NodeRef::CaseWhen(w) => {
                    if let Some(cond) = &w.expr {
                        exclude(cond, &mut nested);
                    }
                }
                NodeRef::CaseExpr(c) => {
                    if let Some(arg) = &c.arg {
                        exclude(arg, &mut nested);
                    }
                }
                NodeRef::FuncCall(f) => {
                    let window = f
                        .over
                        .iter()
                        .flat_map(|w| w.partition_clause.iter().chain(&w.order_clause));
                    for part in f
                        .agg_filter
                        .iter()
                        .map(|b| &**b)
                        .chain(&f.agg_order)
                        .chain(window)
                    {
                        exclude(part, &mut nested);
                    }
                }
                _ => {}
            }
        }
        for sl in &sublinks {
            if let Some(q) = &sl.subselect {
                exclude(q, &mut nested);
            }
        }
        for sl in sublinks {
            if nested.contains(&(sl as *const _ as usize))
                // EXISTS (…) yields a boolean: its columns only filter
                || sl.sub_link_type == protobuf::SubLinkType::ExistsSublink as i32
            {
                continue;
            }
            if let Some(q) = sl.subselect.as_ref().and_then(|q| q.node.as_ref()) {
                if let Some(d) = self.statement(q, chain) {
                    for (_, c) in &d.columns {
                        out.merge(c);
                    }
                }
            }
        }
        for cr in refs {
            if !nested.contains(&(cr as *const _ as usize)) {
                self.column_ref(cr, chain, &mut out);
            }
        }
        out
    }

    fn column_ref(&self, cr: &protobuf::ColumnRef, chain: &[Scope], out: &mut OutputColumn) {
        let star = matches!(
            cr.fields.last().and_then(|f| f.node.as_ref()),
            Some(NodeEnum::AStar(_))
        );
        let names = strings(&cr.fields);
        if star {
            // `t.*` inside an expression (`row_to_json(t.*)`)
            if let [.., rel] = names.as_slice() {
                whole_row(rel, chain, out);
            }
            return;
        }
        match names.as_slice() {
            [] => {}
            [col] => {
                // a lone name that is a FROM item's is a whole-row reference
                // (`row_to_json(c)`)
                if !whole_row(col, chain, out) {
                    unqualified(col, chain, out);
                }
            }
            [rel, col] => {
                for scope in chain.iter().rev() {
                    if let Some((_, item)) = scope.items.iter().find(|(n, _)| n == rel) {
                        from_item(item, col, out);
                        return;
                    }
                }
                // not a FROM item: a composite column (`(t).x`)
                unqualified(rel, chain, out);
            }
            [.., schema, table, col] => out.add(&format!("{schema}.{table}"), col),
        }
    }
}

/// Column `col` of a FROM item.
fn from_item(item: &Item, col: &str, out: &mut OutputColumn) {
    match item {
        Item::Table(t) => out.add(t, col),
        Item::Derived(d) => {
            for (name, c) in &d.columns {
                if name == col || c.star {
                    out.merge(c);
                }
            }
        }
        Item::Opaque => {}
    }
}

/// A name without a table: any item of the innermost query with items
/// could hold it. False when no query in reach has items.
fn unqualified(col: &str, chain: &[Scope], out: &mut OutputColumn) -> bool {
    for scope in chain.iter().rev() {
        if scope.items.is_empty() {
            continue;
        }
        for (_, item) in &scope.items {
            from_item(item, col, out);
        }
        return true;
    }
    false
}

/// The whole row of FROM item `rel`: a table's every column (`*`), a
/// derived item's columns. False when no FROM item is named `rel`.
fn whole_row(rel: &str, chain: &[Scope], out: &mut OutputColumn) -> bool {
    for scope in chain.iter().rev() {
        if let Some((_, item)) = scope.items.iter().find(|(n, _)| n == rel) {
            match item {
                Item::Table(t) => out.add(t, "*"),
                Item::Derived(d) => {
                    for (_, c) in &d.columns {
                        out.merge(c);
                    }
                }
                Item::Opaque => {}
            }
            return true;
        }
    }
    false
}

/// Column aliases (`AS x(a, b)`, `WITH x(a, b)`) rename the first columns.
fn rename(mut d: Derived, names: &[&str]) -> Derived {
    for ((name, _), new) in d.columns.iter_mut().zip(names) {
        *name = (*new).to_owned();
    }
    d
}

fn rename_rc(d: &Rc<Derived>, names: &[&str]) -> Derived {
    rename(
        Derived {
            columns: d.columns.clone(),
        },
        names,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(sql: &str) -> Vec<Vec<(String, String)>> {
        let tree = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).expect("parses");
        let stmt = tree.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .expect("a statement");
        of_statement(stmt)
            .expect("returns rows")
            .into_iter()
            .map(|c| c.sources)
            .collect()
    }

    fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(t, c)| ((*t).to_owned(), (*c).to_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn expressions_aggregates_and_aliases() {
        assert_eq!(
            outputs("select id, first_name || ' ' || last_name as who, max(dob), count(*), 1 from customers c"),
            vec![
                s(&[("customers", "id")]),
                s(&[("customers", "first_name"), ("customers", "last_name")]),
                s(&[("customers", "dob")]),
                s(&[]),
                s(&[]),
            ]
        );
        assert_eq!(
            outputs(
                "select upper(c.full_name) from public.customers c join orders o on o.cid = c.id"
            ),
            vec![s(&[("public.customers", "full_name")])]
        );
        // unqualified over two tables: either could hold it
        assert_eq!(
            outputs("select lower(email) from a, b"),
            vec![s(&[("a", "email"), ("b", "email")])]
        );
    }

    /// What only chooses or orders rows is not part of a value.
    #[test]
    fn conditions_filters_and_orderings_are_not_sources() {
        assert_eq!(
            outputs(
                "select case when full_name is null then 'missing' else 'ok' end,
                        case when vip then full_name else 'n/a' end,
                        case plan when 'gold' then 'G' end,
                        string_agg(city, ',' order by full_name) filter (where ssn is not null),
                        rank() over (partition by full_name order by dob),
                        case when (select true from people where name = 'x') then 1 end
                 from customers"
            ),
            vec![
                s(&[]),
                s(&[("customers", "full_name")]),
                s(&[]),
                s(&[("customers", "city")]),
                s(&[]),
                s(&[]),
            ]
        );
    }

    #[test]
    fn through_subqueries_ctes_and_set_operations() {
        let want = vec![s(&[
            ("customers", "first_name"),
            ("customers", "last_name"),
        ])];
        assert_eq!(
            outputs("with x as (select first_name || last_name as n from customers) select upper(n) from x"),
            want
        );
        assert_eq!(
            outputs(
                "with x(n) as (select first_name || last_name from customers) select x.n from x"
            ),
            want
        );
        assert_eq!(
            outputs("select t.n from (select concat(first_name, last_name) n from customers) t"),
            want
        );
        assert_eq!(
            outputs("select * from (select concat(first_name, last_name) n from customers) t"),
            want
        );
        assert_eq!(
            outputs("select 'x' union all select first_name || last_name from customers"),
            want
        );
        assert_eq!(
            outputs("select (select first_name || last_name from customers limit 1)"),
            want
        );
        // EXISTS only filters; the WHERE of a scalar subquery too
        assert_eq!(
            outputs("select exists (select 1 from customers where ssn = '1'), (select 1 from customers where ssn = '1')"),
            vec![s(&[]), s(&[])]
        );
        assert_eq!(
            outputs("values (1, 'a'), (2, (select full_name from customers limit 1))"),
            vec![s(&[]), s(&[("customers", "full_name")])]
        );
    }

    #[test]
    fn stars_returning_and_whole_rows() {
        let cols = of_statement_of("select *, upper(name) from people");
        assert!(cols[0].star);
        assert_eq!(cols[1].sources, s(&[("people", "name")]));
        assert_eq!(
            outputs("update people set x = 1 returning first_name || last_name"),
            vec![s(&[("people", "first_name"), ("people", "last_name")])]
        );
        assert_eq!(
            outputs("select row_to_json(p) from people p"),
            vec![s(&[("people", "*")])]
        );
        assert!(of_statement_of_opt("create table t (a int)").is_none());
        // defined now, returned later by EXECUTE or FETCH
        assert_eq!(
            outputs("prepare p as select upper(name) from people"),
            vec![s(&[("people", "name")])]
        );
        assert_eq!(
            outputs("declare c cursor for select upper(name) from people"),
            vec![s(&[("people", "name")])]
        );
        assert!(of_statement_of_opt("insert into t values (1)").is_none());
    }

    fn of_statement_of_opt(sql: &str) -> Option<Vec<OutputColumn>> {
        let tree = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).expect("parses");
        let stmt = tree.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .expect("a statement");
        of_statement(stmt)
    }

    fn of_statement_of(sql: &str) -> Vec<OutputColumn> {
        of_statement_of_opt(sql).expect("returns rows")
    }
}
