//! A complete pass over a parse tree.
//!
//! pg_query's own walk (`NodeEnum::nodes`) follows only the fields its
//! authors listed: it skips `VALUES` lists, `ARRAY[…]`, `COLLATE`, `LIMIT`,
//! window clauses, `DECLARE … CURSOR`, `ALTER DATABASE … SET` and more. A
//! function call or a table hidden there would go unjudged. Every protobuf
//! type of pg_query derives `serde::Serialize`, so a serializer that writes
//! nothing but watches the structure reaches every node, whatever new node
//! types a parser version adds. It collects what policy must never miss:
//! function calls (with their first literal arguments), relations read,
//! settings changed, data-modifying statements and column references.

use serde::ser::{self, Serialize};

/// A function call found anywhere in the tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    /// The name as written, qualified or not (`pg_catalog`, `set_config`).
    pub parts: Vec<String>,
    /// The first two arguments where they are string literals.
    pub literal_args: [Option<String>; 2],
}

/// What a complete pass found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub calls: Vec<Call>,
    /// Relations in FROM lists and other expression positions (not the
    /// target of an INSERT/UPDATE/DELETE or the object of DDL).
    pub relations: Vec<String>,
    /// Settings changed by nested `SET` statements (`ALTER DATABASE … SET`,
    /// `ALTER ROLE … SET`, `CREATE FUNCTION … SET`).
    pub settings: Vec<String>,
    /// INSERT, UPDATE, DELETE and MERGE statements.
    pub dml: usize,
    /// DO blocks.
    pub do_blocks: usize,
    /// Column references and `WHERE CURRENT OF`.
    pub column_refs: usize,
}

/// Everything `value` holds (a statement, a WHERE clause, …).
pub(crate) fn sweep<T: Serialize + ?Sized>(value: &T) -> Found {
    // The path of an OLTP statement is a few dozen segments deep: one
    // allocation up front instead of the doublings on the way there.
    let mut s = Sweep {
        path: Vec::with_capacity(64),
        elems: Vec::with_capacity(16),
        ..Sweep::default()
    };
    // The serializer never fails.
    let _ = value.serialize(&mut s);
    s.found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Struct(&'static str),
    Field(&'static str),
    Elem(usize),
    Variant(&'static str),
}

/// A node being read, with where its struct starts in the path.
enum Open {
    Call(usize, Call),
    Relation {
        at: usize,
        schema: String,
        name: String,
        expression: bool,
    },
    /// A `SET`: where it starts, the setting, and whether it resets.
    Setting(usize, String, bool),
}

#[derive(Default)]
struct Sweep {
    path: Vec<Seg>,
    elems: Vec<usize>,
    open: Vec<Open>,
    found: Found,
}

const FUNC_NAME: &[Seg] = &[
    Seg::Field("funcname"),
    Seg::Elem(0), // any index
    Seg::Struct("Node"),
    Seg::Field("node"),
    Seg::Variant("String"),
    Seg::Struct("String"),
    Seg::Field("sval"),
];
const FUNC_ARG: &[Seg] = &[
    Seg::Field("args"),
    Seg::Elem(0), // index checked apart
    Seg::Struct("Node"),
    Seg::Field("node"),
    Seg::Variant("AConst"),
    Seg::Struct("AConst"),
    Seg::Field("val"),
    Seg::Variant("Sval"),
    Seg::Struct("String"),
    Seg::Field("sval"),
];

/// `path` matches `pattern`, any element index matching `Elem(_)`.
fn matches(path: &[Seg], pattern: &[Seg]) -> bool {
    path.len() == pattern.len()
        && path.iter().zip(pattern).all(|(a, b)| match (a, b) {
            (Seg::Elem(_), Seg::Elem(_)) => true,
            _ => a == b,
        })
}

impl Sweep {
    fn enter_struct(&mut self, name: &'static str) {
        let at = self.path.len();
        let in_node = matches!(self.path.last(), Some(Seg::Variant("RangeVar")));
        self.path.push(Seg::Struct(name));
        match name {
            "FuncCall" => self.open.push(Open::Call(at, Call::default())),
            "RangeVar" => self.open.push(Open::Relation {
                at,
                schema: String::new(),
                name: String::new(),
                expression: in_node,
            }),
            "VariableSetStmt" => self.open.push(Open::Setting(at, String::new(), false)),
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => self.found.dml += 1,
            "DoStmt" => self.found.do_blocks += 1,
            "ColumnRef" | "CurrentOfExpr" => self.found.column_refs += 1,
            _ => {}
        }
    }

    fn leave_struct(&mut self) {
        let Some(Seg::Struct(name)) = self.path.pop() else {
            return;
        };
        if !matches!(name, "FuncCall" | "RangeVar" | "VariableSetStmt") {
            return;
        }
        match self.open.pop() {
            Some(Open::Call(_, call)) => self.found.calls.push(call),
            Some(Open::Relation {
                schema,
                name,
                expression: true,
                ..
            }) => self.found.relations.push(if schema.is_empty() {
                name
            } else {
                format!("{schema}.{name}")
            }),
            Some(Open::Setting(_, name, false)) if !name.is_empty() => {
                self.found.settings.push(name)
            }
            _ => {}
        }
    }

    fn string(&mut self, v: &str) {
        let path = &self.path;
        match self.open.last_mut() {
            Some(Open::Call(at, call)) => {
                let rest = &path[*at + 1..];
                if matches(rest, FUNC_NAME) {
                    call.parts.push(v.to_owned());
                } else if matches(rest, FUNC_ARG) {
                    if let Some(Seg::Elem(i @ 0..=1)) = rest.get(1) {
                        call.literal_args[*i] = Some(v.to_owned());
                    }
                }
            }
            Some(Open::Relation {
                at, schema, name, ..
            }) => match &path[*at + 1..] {
                [Seg::Field("schemaname")] => v.clone_into(schema),
                [Seg::Field("relname")] => v.clone_into(name),
                _ => {}
            },
            Some(Open::Setting(at, name, _)) if path[*at + 1..] == [Seg::Field("name")] => {
                v.clone_into(name);
            }
            _ => {}
        }
    }

    fn int(&mut self, v: i32) {
        if let Some(Open::Setting(at, _, reset)) = self.open.last_mut() {
            if self.path[*at + 1..] == [Seg::Field("kind")] {
                *reset = v == pg_query::protobuf::VariableSetKind::VarReset as i32
                    || v == pg_query::protobuf::VariableSetKind::VarResetAll as i32;
            }
        }
    }
}

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sweep")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Never
    }
}

type R = Result<(), Never>;

impl ser::Serializer for &mut Sweep {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> R {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> R {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> R {
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> R {
        self.int(v);
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> R {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> R {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> R {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> R {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> R {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> R {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> R {
        Ok(())
    }
    fn serialize_char(self, _: char) -> R {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> R {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> R {
        Ok(())
    }
    fn serialize_none(self) -> R {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> R {
        self.path.push(Seg::Variant(variant));
        let r = value.serialize(&mut *self);
        self.path.pop();
        r
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Never> {
        self.elems.push(0);
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Never> {
        self.elems.push(0);
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        self.elems.push(0);
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        self.elems.push(0);
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, Never> {
        self.enter_struct(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        self.enter_struct(name);
        Ok(self)
    }
}

impl Sweep {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        let i = self.elems.last().copied().unwrap_or(0);
        self.path.push(Seg::Elem(i));
        let r = value.serialize(&mut *self);
        self.path.pop();
        if let Some(n) = self.elems.last_mut() {
            *n += 1;
        }
        r
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> R {
        self.path.push(Seg::Field(key));
        let r = value.serialize(&mut *self);
        self.path.pop();
        r
    }
}

/// The four sequence-like compound serializers: elements, counted.
macro_rules! elements {
    ($($trait:ident::$method:ident),*) => {$(
        impl ser::$trait for &mut Sweep {
            type Ok = ();
            type Error = Never;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
                self.element(value)
            }
            fn end(self) -> R {
                self.elems.pop();
                Ok(())
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for &mut Sweep {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> R {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        value.serialize(&mut **self)
    }
    fn end(self) -> R {
        Ok(())
    }
}

/// Structs and struct variants: named fields.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for &mut Sweep {
            type Ok = ();
            type Error = Never;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> R {
                self.field(key, value)
            }
            fn end(self) -> R {
                self.leave_struct();
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str) -> Found {
        let parsed = pg_query::parse(sql, 0).unwrap();
        sweep(&parsed.protobuf)
    }

    fn names(f: &Found) -> Vec<String> {
        f.calls.iter().map(|c| c.parts.join(".")).collect()
    }

    #[test]
    fn finds_calls_where_pg_query_walk_does_not_go() {
        for sql in [
            "values (set_config('role', 'x', false))",
            "select array[set_config('role', 'x', false)]",
            "select set_config('role', 'x', false) collate \"C\"",
            "declare c cursor for select set_config('role', 'x', false)",
            "select 1 limit (set_config('role', 'x', false))::int",
            "select count(*) filter (where set_config('role', 'x', false) = '') from t",
            "select xmlelement(name a, set_config('role', 'x', false))",
        ] {
            let f = found(sql);
            let calls: Vec<&Call> = f
                .calls
                .iter()
                .filter(|c| c.parts == ["set_config"])
                .collect();
            assert_eq!(calls.len(), 1, "{sql}");
            assert_eq!(
                calls[0].literal_args,
                [Some("role".to_owned()), Some("x".to_owned())],
                "{sql}"
            );
        }
    }

    #[test]
    fn qualified_names_and_nested_calls() {
        let f = found("select pg_catalog.lower(upper(x)) from t");
        let mut n = names(&f);
        n.sort();
        assert_eq!(n, ["pg_catalog.lower", "upper"]);
        assert_eq!(
            f.calls
                .iter()
                .map(|c| c.literal_args.clone())
                .filter(|a| a[0].is_some())
                .count(),
            0
        );
    }

    #[test]
    fn relations_read_but_not_targets_or_ddl_objects() {
        let f = found("declare c cursor for select * from hr.payroll");
        assert_eq!(f.relations, ["hr.payroll"]);
        let f = found("values ((select salary from hr.payroll limit 1))");
        assert_eq!(f.relations, ["hr.payroll"]);
        let f = found("update t set a = 1 where id in (select id from u)");
        assert_eq!(f.relations, ["u"]);
        assert!(found("create table t (a int)").relations.is_empty());
    }

    #[test]
    fn nested_settings_dml_and_columns() {
        let f = found("alter database app set role = 'other'");
        assert_eq!(f.settings, ["role"]);
        assert!(found("alter role r reset role").settings.is_empty());
        assert!(found("reset role").settings.is_empty());
        let f = found("with d as (delete from t returning *) insert into u select * from d");
        assert_eq!(f.dml, 2);
        assert_eq!(found("delete from t where 1 in (1)").column_refs, 0);
        assert_eq!(found("delete from t where id = $1").column_refs, 1);
        assert_eq!(found("do $$ begin end $$").do_blocks, 1);
    }
}
