//! Where result columns come from: RowDescription gives each field's table
//! OID, column number and type OID; the target's catalog turns those into
//! schema, table, column and type names for masking and audit.
//!
//! One cache per target, shared by its sessions and read-mostly. Misses are
//! looked up in batches over a short-lived connection with Sluice's own
//! login (never the session's, whose transaction must not be disturbed).
//! Entries expire after a TTL, and DDL seen through Sluice clears the cache.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use sluice_config::Target;
use sluice_wire::messages::{data_row, ErrorResponse};
use sluice_wire::tags::backend as tag;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use crate::error::UpstreamError;
use crate::io::read_message;

/// How long a looked-up name is trusted.
const TTL: Duration = Duration::from_secs(60);

/// A table column by its catalog names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnOrigin {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
}

/// One attribute of a composite type (a table's row type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The table (or composite type) it belongs to.
    pub table: String,
    /// Its name.
    pub name: String,
    /// Its type's name.
    pub type_name: String,
}

#[derive(Default)]
struct Maps {
    columns: HashMap<(u32, i16), (Arc<ColumnOrigin>, Instant)>,
    types: HashMap<u32, (Arc<str>, Instant)>,
    /// For a composite type, or an array of one: the attributes, in order.
    composites: HashMap<u32, Arc<[Attribute]>>,
}

/// The names of one target's columns and types.
#[derive(Default)]
pub struct Catalog {
    maps: RwLock<Maps>,
    /// Bumped on every invalidation, so sessions drop plans they cached.
    generation: AtomicU64,
}

/// What a lookup still needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Missing {
    /// (table OID, column number) pairs.
    pub columns: Vec<(u32, i16)>,
    /// Type OIDs.
    pub types: Vec<u32>,
}

impl Missing {
    /// True when nothing is missing.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.types.is_empty()
    }
}

impl Catalog {
    /// The origin of a table column, if known and fresh.
    pub fn column(&self, table_oid: u32, attnum: i16) -> Option<Arc<ColumnOrigin>> {
        let maps = self.maps.read().ok()?;
        maps.columns
            .get(&(table_oid, attnum))
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(c, _)| c.clone())
    }

    /// A type's name, if known and fresh (built-in types always are).
    pub fn type_name(&self, oid: u32) -> Option<Arc<str>> {
        if let Some(name) = builtin_type(oid) {
            return Some(Arc::from(name));
        }
        let maps = self.maps.read().ok()?;
        maps.types
            .get(&oid)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(n, _)| n.clone())
    }

    /// The attributes of composite type `oid` (or of the element type of
    /// an array of one), when it is one and its type name is fresh.
    pub fn composite(&self, oid: u32) -> Option<Arc<[Attribute]>> {
        self.type_name(oid)?;
        let maps = self.maps.read().ok()?;
        maps.composites.get(&oid).cloned()
    }

    /// Forget everything (DDL was run through Sluice).
    pub fn invalidate(&self) {
        if let Ok(mut maps) = self.maps.write() {
            *maps = Maps::default();
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes whenever the cache is invalidated.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Look up `missing` on the target and remember the answers. Columns that
    /// no longer exist are remembered as unknown origin (not looked up again
    /// until the TTL passes).
    pub async fn load(
        &self,
        target: &Target,
        connector: Option<&TlsConnector>,
        timeout: Duration,
        missing: &Missing,
    ) -> Result<(), UpstreamError> {
        let work = async {
            let params = vec![("application_name".to_owned(), "sluice-catalog".to_owned())];
            let mut up = crate::backend::connect(target, connector, &params, timeout).await?;
            let mut columns = Vec::new();
            if !missing.columns.is_empty() {
                let mut sql = String::from(
                    "SELECT c.oid::text, a.attnum::text, n.nspname, c.relname, a.attname \
                     FROM pg_catalog.pg_attribute a \
                     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE (a.attrelid, a.attnum) IN (",
                );
                for (i, (oid, num)) in missing.columns.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(sql, "{sep}({oid}::oid,{num}::int2)");
                }
                sql.push(')');
                columns = simple_query(&mut up, &sql).await?;
            }
            let mut types = Vec::new();
            if !missing.types.is_empty() {
                let mut sql = String::from(
                    // Types whose text form carries text are named `record`
                    // (masking scans their text form): composite types (a
                    // table's row, `SELECT c FROM customers c`), ranges and
                    // multiranges over strings, and arrays of those, of domains
                    // over strings and of the other structured types (`_record`).
                    // `rngmultitypid` is read through jsonb: before PostgreSQL
                    // 14 it does not exist and naming it would fail the query.
                    "SELECT t.oid::text, CASE \
                       WHEN t.typtype = 'c' THEN 'record' \
                       WHEN t.typtype IN ('r', 'm') AND EXISTS (SELECT 1 FROM pg_catalog.pg_range r \
                         JOIN pg_catalog.pg_type s ON s.oid = r.rngsubtype \
                         WHERE (r.rngtypid = t.oid \
                           OR (pg_catalog.to_jsonb(r) ->> 'rngmultitypid')::oid = t.oid) \
                         AND s.typcategory = 'S') THEN 'record' \
                       WHEN t.typcategory = 'A' AND (e.typtype IN ('c', 'r', 'm') OR e.typcategory = 'S' \
                         OR coalesce(b.typcategory, '') = 'S' \
                         OR e.typname IN ('tsvector', 'tsquery', 'jsonpath', 'json', 'jsonb', 'xml', 'hstore', 'cstring', 'refcursor')) \
                         THEN '_record' \
                       ELSE t.typname END, \
                     (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(c.relname, a.attname, ty.typname) \
                        ORDER BY a.attnum)::text \
                      FROM pg_catalog.pg_attribute a \
                      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                      JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
                      WHERE a.attrelid = CASE WHEN t.typtype = 'c' THEN t.typrelid \
                                              WHEN e.typtype = 'c' THEN e.typrelid END \
                        AND a.attnum > 0 AND NOT a.attisdropped) \
                     FROM pg_catalog.pg_type t \
                     LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem \
                     LEFT JOIN pg_catalog.pg_type b ON b.oid = e.typbasetype AND e.typtype = 'd' \
                     WHERE t.oid IN (",
                );
                for (i, oid) in missing.types.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(sql, "{sep}{oid}");
                }
                sql.push(')');
                types = simple_query(&mut up, &sql).await?;
            }
            let _ = up.stream.write_all(&[b'X', 0, 0, 0, 4]).await;
            Ok::<_, UpstreamError>((columns, types))
        };
        let (columns, types) = tokio::time::timeout(timeout * 2, work)
            .await
            .map_err(|_| UpstreamError::Unreachable {
                addr: target.upstream.clone(),
                reason: "the catalog lookup did not finish in time".into(),
            })??;
        let now = Instant::now();
        let mut maps = self
            .maps
            .write()
            .map_err(|_| UpstreamError::Protocol("catalog cache poisoned".into()))?;
        let mut found = HashSet::new();
        for row in columns {
            if let [Some(oid), Some(num), Some(schema), Some(table), Some(column)] = &row[..] {
                if let (Ok(oid), Ok(num)) = (oid.parse::<u32>(), num.parse::<i16>()) {
                    found.insert((oid, num));
                    let origin = ColumnOrigin {
                        schema: schema.clone(),
                        table: table.clone(),
                        column: column.clone(),
                    };
                    maps.columns.insert((oid, num), (Arc::new(origin), now));
                }
            }
        }
        for row in types {
            if let [Some(oid), Some(name), attributes] = &row[..] {
                if let Ok(oid) = oid.parse::<u32>() {
                    maps.types.insert(oid, (Arc::from(name.as_str()), now));
                    match attributes.as_deref().and_then(parse_attributes) {
                        Some(a) => maps.composites.insert(oid, a),
                        None => maps.composites.remove(&oid),
                    };
                }
            }
        }
        // Dropped meanwhile: an unnamed origin, so the column is judged by
        // its field name and values.
        for key in &missing.columns {
            if !found.contains(key) {
                let origin = ColumnOrigin {
                    schema: String::new(),
                    table: String::new(),
                    column: String::new(),
                };
                maps.columns.insert(*key, (Arc::new(origin), now));
            }
        }
        for oid in &missing.types {
            maps.types
                .entry(*oid)
                .or_insert_with(|| (Arc::from(""), now));
        }
        Ok(())
    }
}

/// `[[table, attribute, type], …]` as the type lookup writes it.
fn parse_attributes(json: &str) -> Option<Arc<[Attribute]>> {
    let rows: Vec<(String, String, String)> = serde_json::from_str(json).ok()?;
    Some(
        rows.into_iter()
            .map(|(table, name, type_name)| Attribute {
                table,
                name,
                type_name,
            })
            .collect(),
    )
}

/// Run one simple query and return its rows as text.
pub(crate) async fn simple_query(
    up: &mut crate::backend::Upstream,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
    let mut msg = BytesMut::with_capacity(sql.len() + 6);
    msg.put_u8(b'Q');
    msg.put_i32((sql.len() + 5) as i32);
    msg.put_slice(sql.as_bytes());
    msg.put_u8(0);
    up.stream.write_all(&msg).await?;
    up.stream.flush().await?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let Some((t, body)) = read_message(&mut up.stream, &mut up.leftover, 64 << 20).await?
        else {
            return Err(UpstreamError::Protocol(
                "the catalog connection closed".into(),
            ));
        };
        match t {
            tag::DATA_ROW => {
                let values =
                    data_row::decode(&body).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                rows.push(
                    values
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                        .collect(),
                );
            }
            tag::ERROR_RESPONSE => {
                error = Some(
                    ErrorResponse::decode(&body)
                        .ok()
                        .and_then(|e| e.message().map(str::to_owned))
                        .unwrap_or_default(),
                );
            }
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(UpstreamError::Rejected(format!(
            "catalog query failed: {e}"
        ))),
        None => Ok(rows),
    }
}

/// Names of the built-in types a result commonly has (stable OIDs).
pub fn builtin_type(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        24 => "regproc",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        199 => "_json",
        650 => "cidr",
        700 => "float4",
        701 => "float8",
        705 => "unknown",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        1000 => "_bool",
        1003 => "_name",
        1005 => "_int2",
        1007 => "_int4",
        1009 => "_text",
        1014 => "_bpchar",
        1015 => "_varchar",
        1016 => "_int8",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1115 => "_timestamp",
        1182 => "_date",
        1184 => "timestamptz",
        1185 => "_timestamptz",
        1186 => "interval",
        1266 => "timetz",
        1560 => "bit",
        1562 => "varbit",
        1700 => "numeric",
        2249 => "record",
        2278 => "void",
        2950 => "uuid",
        3614 => "tsvector",
        3802 => "jsonb",
        3807 => "_jsonb",
        // ranges and multiranges of dates (masked as dates of birth by name)
        3908 => "tsrange",
        3909 => "_tsrange",
        3910 => "tstzrange",
        3911 => "_tstzrange",
        3912 => "daterange",
        3913 => "_daterange",
        4533 => "tsmultirange",
        4534 => "tstzmultirange",
        4535 => "datemultirange",
        6152 => "_tsmultirange",
        6153 => "_tstzmultirange",
        6155 => "_datemultirange",
        _ => return None,
    })
}
