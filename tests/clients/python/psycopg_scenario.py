"""psycopg 3 scenario: what a real libpq-based driver sends, checked end to end.

Runs against PostgreSQL directly or through Sluice; the two must look the
same. Reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and
SCENARIO_SSLMODE (disable | require, default disable). Prints `ok: <step>`
per passing step and exits non-zero with a message on the first failure.

What goes over the wire (libpq, bundled with psycopg[binary]):
- execute() without parameters: simple Query; with parameters or binary:
  Parse(unnamed)/Bind/Describe(portal)/Execute/Sync.
- prepare=True or the 5th run of a query: Parse("_pg3_N")/Sync once, then
  Bind/Describe(portal)/Execute/Sync per run.
- pipeline mode: many Parse/Bind/Describe/Execute with one Sync per
  `pipeline.sync()` or block exit; fetching inside the block sends Flush
  (without Sync).
- server-side cursors: DECLARE via a query, then Describe(portal) of the
  SQL-declared cursor name, then FETCH FORWARD n statements.
- COPY: CopyData/CopyDone, CopyFail when the client gives up; binary COPY.
- cancel_safe(): libpq 17+ cancel connection (TLS when the session uses it);
  cancel(): the classic unencrypted CancelRequest.
"""
import collections
import datetime
import hashlib
import os
import sys
import threading
import time
import traceback
import uuid
from decimal import Decimal

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

SSLMODE = os.environ.get("SCENARIO_SSLMODE", "disable")
SUFFIX = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
T = f"psy_{SUFFIX}"  # main table
TC = f"psy_{SUFFIX}_copy"  # COPY target
CHANNEL = f"psy_ch_{SUFFIX}"
UTC = datetime.timezone.utc


class ScenarioError(AssertionError):
    pass


def check(cond, what):
    if not cond:
        raise ScenarioError(what)


def ok(step):
    print(f"ok: {step}", flush=True)


def connect(**kw):
    kw.setdefault("connect_timeout", 10)
    return psycopg.connect(sslmode=SSLMODE, **kw)


def ident(name):
    return sql.Identifier(name)


def expect_error(conn, query, code, params=None):
    """Run `query`, which must fail with SQLSTATE `code`; return the error."""
    try:
        conn.execute(query, params)
    except psycopg.Error as e:
        check(e.sqlstate == code, f"{query!r}: expected SQLSTATE {code}, got {e.sqlstate}: {e}")
        return e
    raise ScenarioError(f"{query!r} succeeded; expected SQLSTATE {code}")


def wait_until(pred, timeout, what):
    """Poll `pred` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def count(conn, table, where=sql.SQL("true")):
    return conn.execute(sql.SQL("select count(*) from {} where {}").format(ident(table), where)).fetchone()[0]


# 0 ------------------------------------------------------------------------
def step_connect(conn):
    check(conn.info.status == psycopg.pq.ConnStatus.OK, "connection not OK")
    want_ssl = SSLMODE != "disable"
    check(bool(conn.pgconn.ssl_in_use) == want_ssl, f"ssl_in_use={conn.pgconn.ssl_in_use}, sslmode={SSLMODE}")
    # Through Sluice the database role is Sluice's own, not PGUSER.
    row = conn.execute("select current_user, current_database()").fetchone()
    check(all(row), f"current_user, current_database: {row}")
    ok(f"connect (sslmode={SSLMODE}, ssl_in_use={bool(conn.pgconn.ssl_in_use)})")


# 1 ------------------------------------------------------------------------
def step_simple_query_types(conn):
    cur = conn.cursor()
    cur.execute(
        """select 42::int4 as i4, 9007199254740993::int8 as i8, 'héllo wörld ✓'::text as t,
                  12345.678901234567890::numeric as n, true as yes, false as no,
                  '2024-02-29 13:14:15.123456+00'::timestamptz as ts, '2024-02-29'::date as d,
                  '\\x00ff10'::bytea as b, null::text as nul,
                  '{"a": [1, 2, {"b": null}], "c": "d"}'::jsonb as j,
                  array[1, 2, 3]::int4[] as ia, array['x', null, 'z'] as ta,
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u, 1.5::float8 as f,
                  '1 day 02:03:04'::interval as iv, 'NaN'::numeric as nan"""
    )
    check(cur.pgresult.fformat(0) == 0, "simple query must return text format")
    names = [d.name for d in cur.description]
    check(names[:3] == ["i4", "i8", "t"] and names[-1] == "nan", f"column names: {names}")
    r = cur.fetchone()
    expect = (
        42, 9007199254740993, "héllo wörld ✓", Decimal("12345.678901234567890"), True, False,
        datetime.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=UTC), datetime.date(2024, 2, 29),
        b"\x00\xff\x10", None, {"a": [1, 2, {"b": None}], "c": "d"}, [1, 2, 3], ["x", None, "z"],
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), 1.5,
        datetime.timedelta(days=1, hours=2, minutes=3, seconds=4),
    )
    check(tuple(r[:-1]) == expect, f"values:\n got  {r}\n want {expect}")
    check(r[-1].is_nan(), f"NaN numeric: {r[-1]}")

    # Several statements in one simple Query: one result set each.
    cur.execute("select 1 as a; select 'two' as b, 3 as c; select * from generate_series(1, 3)")
    sets = [cur.fetchall()]
    while cur.nextset():
        sets.append(cur.fetchall())
    check(sets == [[(1,)], [("two", 3)], [(1,), (2,), (3,)]], f"multi-statement results: {sets}")

    # An empty query string gives EmptyQueryResponse.
    cur.execute("")
    check(cur.pgresult.status == psycopg.pq.ExecStatus.EMPTY_QUERY, f"empty query: {cur.pgresult.status}")
    ok("simple query with many types")


# 2 ------------------------------------------------------------------------
VALUES = (
    7, -9223372036854775808, "ünïcødé 'quoted' \\ back", Decimal("-0.000123"), True,
    datetime.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime.date(2000, 1, 1),
    b"\x00\x01\xfe\xff", None, [1, None, 3], ["a", "b c", ""], uuid.UUID(int=12345), 2.25,
)
CASTS = "%s::int4, %s::int8, %s::text, %s::numeric, %s::bool, %s::timestamptz, %s::date, " \
        "%s::bytea, %s::text, %s::int4[], %s::text[], %s::uuid, %s::float8, %s::jsonb"


def step_parameters(conn):
    params = VALUES + (Jsonb({"k": ["v", 1]}),)
    # Text format, unnamed statement (Parse "" / Bind / Describe portal / Execute / Sync).
    r = conn.execute(f"select {CASTS}", params, prepare=False).fetchone()
    check(r[:-1] == VALUES and r[-1] == {"k": ["v", 1]}, f"text round trip: {r}")

    # Binary parameters and results.
    with conn.cursor(binary=True) as cur:
        cur.execute(f"select {CASTS}", params, prepare=False)
        check(all(cur.pgresult.fformat(i) == 1 for i in range(cur.pgresult.nfields)), "binary results expected")
        r = cur.fetchone()
        check(r[:-1] == VALUES and r[-1] == {"k": ["v", 1]}, f"binary round trip: {r}")
    ok("parameters, text and binary format (unnamed statements)")

    # Named prepared statements reused: explicit prepare=True, and the
    # automatic one after prepare_threshold (5) runs.
    before = set(n for (n,) in conn.execute("select name from pg_prepared_statements"))
    for i in range(10):
        r = conn.execute("select %s::int4 + 1, %s::text || '!'", (i, f"x{i}"), prepare=True).fetchone()
        check(r == (i + 1, f"x{i}!"), f"prepared run {i}: {r}")
    for i in range(10):
        with conn.cursor(binary=True) as cur:
            r = cur.execute("select %s::int8 * %s::int8", (i, 3)).fetchone()
            check(r == (i * 3,), f"auto-prepared run {i}: {r}")
    after = conn.execute("select name, statement from pg_prepared_statements order by name").fetchall()
    new = [(n, s) for n, s in after if n not in before]
    check(any("+ 1" in s for _, s in new) and any("* $2" in s for _, s in new),
          f"server-side prepared statements expected, got {new}")
    check(all(n.startswith("_pg3_") for n, _ in new), f"statement names: {new}")

    # SQL-level PREPARE / EXECUTE / DEALLOCATE.
    conn.execute("prepare sql_level (int) as select $1 * 10")
    for i in range(3):
        check(conn.execute(f"execute sql_level({i})").fetchone() == (i * 10,), "EXECUTE")
    conn.execute("deallocate sql_level")
    expect_error(conn, "execute sql_level(1)", "26000")
    ok("named prepared statements reused (prepare=True, auto-prepare, SQL PREPARE)")

    # executemany: psycopg pipelines Bind/Execute pairs with one Sync.
    conn.execute(sql.SQL("create table {} (id int primary key, v text, n numeric)").format(ident(T)))
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("insert into {} values (%s, %s, %s)").format(ident(T)),
                        [(i, f"v{i}", Decimal(i) / 4) for i in range(500)])
        check(cur.rowcount == 500, f"executemany rowcount {cur.rowcount}")
        cur.executemany(sql.SQL("select v from {} where id = %s").format(ident(T)), [(1,), (2,), (3,)],
                        returning=True)
        got = []
        while True:
            got.append(cur.fetchone()[0])
            if not cur.nextset():
                break
        check(got == ["v1", "v2", "v3"], f"executemany returning: {got}")
    check(count(conn, T) == 500, "executemany count")
    ok("executemany")


def step_pipeline(conn):
    t = ident(T)
    # Many statements before one Sync; a fetch inside the block sends Flush.
    with conn.pipeline() as p:
        curs = []
        for i in range(1000, 1200):
            conn.execute(sql.SQL("insert into {} values (%s, %s, %s)").format(t), (i, f"p{i}", i))
            if i % 50 == 0:
                curs.append(conn.execute(sql.SQL("select count(*) from {} where id >= 1000").format(t)))
        mid = conn.execute("select 'mid-pipeline'")
        check(mid.fetchone() == ("mid-pipeline",), "fetch inside pipeline (Flush)")
        for i in range(1200, 1300):
            conn.execute(sql.SQL("insert into {} values (%s, %s, %s)").format(t), (i, f"p{i}", i), prepare=True)
        p.sync()
        last = conn.execute(sql.SQL("select count(*), sum(id) from {} where id >= 1000").format(t))
    counts = [c.fetchone()[0] for c in curs]
    check(counts == [1, 51, 101, 151], f"counts seen inside pipeline: {counts}")
    check(last.fetchone() == (300, sum(range(1000, 1300))), "pipeline inserts")
    ok("pipeline mode: many statements, Flush mid-pipeline, sync")

    # An error in the middle: the statements of the same Sync segment
    # before it are rolled back (implicit transaction), the ones after it
    # are skipped (PipelineAborted), the earlier segment stays committed.
    # psycopg raises the first error when it reads that result: at the sync,
    # or at a later execute() if the result is already there.
    with conn.pipeline() as p:
        conn.execute(sql.SQL("insert into {} values (2000, 'seg1', 0)").format(t))
        p.sync()
        try:
            conn.execute(sql.SQL("insert into {} values (2001, 'seg2', 0)").format(t))
            conn.execute(sql.SQL("insert into {} values (1, 'duplicate', 0)").format(t))
            for _ in range(20):
                conn.execute("select 'skipped'")
            p.sync()
            raise ScenarioError("pipeline error not raised")
        except errors.UniqueViolation as e:
            check(e.diag.constraint_name == f"{T}_pkey", f"constraint {e.diag.constraint_name}")
        try:
            p.sync()  # ends the aborted segment if the error came before our sync
        except errors.PipelineAborted:
            pass
        after = conn.execute("select 'after error'")
    check(after.fetchone() == ("after error",), "pipeline usable after error")
    ids = [r[0] for r in conn.execute(sql.SQL("select id from {} where id >= 2000 order by id").format(t))]
    check(ids == [2000], f"pipeline error semantics: ids {ids}")

    # The error raised at block exit; a non-autocommit pipeline leaves the
    # transaction failed (INERROR) until rollback.
    tx = connect()
    try:
        with tx.pipeline():
            tx.execute("select 1")
            tx.execute("select 1/0")
            tx.execute("select 2")
        raise ScenarioError("pipeline error not raised at exit")
    except errors.DivisionByZero:
        pass
    check(tx.info.transaction_status == TransactionStatus.INERROR, f"status {tx.info.transaction_status}")
    tx.rollback()
    check(tx.execute("select 5").fetchone() == (5,), "usable after rollback")
    tx.close()
    ok("pipeline mode: error in the middle")


# 3 ------------------------------------------------------------------------
def step_transactions(conn):
    t = ident(T)
    tx = connect()  # autocommit off: psycopg sends BEGIN itself
    check(tx.info.transaction_status == TransactionStatus.IDLE, "idle at start")
    tx.execute(sql.SQL("insert into {} values (3000, 'kept', 0)").format(t))
    check(tx.info.transaction_status == TransactionStatus.INTRANS, "INTRANS after insert")
    tx.commit()
    tx.execute(sql.SQL("insert into {} values (3001, 'dropped', 0)").format(t))
    tx.rollback()
    check(count(conn, T, sql.SQL("id in (3000, 3001)")) == 1, "commit persists, rollback discards")

    tx.execute(sql.SQL("insert into {} values (3002, 'lost', 0)").format(t))
    expect_error(tx, "select 1/0", "22012")
    check(tx.info.transaction_status == TransactionStatus.INERROR, "INERROR after error")
    e = expect_error(tx, "select 1", "25P02")
    check("aborted" in str(e), f"25P02 message: {e}")
    expect_error(tx, "select %s::int", "25P02", (1,))  # extended protocol too
    tx.rollback()
    check(tx.info.transaction_status == TransactionStatus.IDLE, "IDLE after rollback")
    check(tx.execute("select 'recovered'").fetchone() == ("recovered",), "usable after rollback")
    tx.rollback()
    check(count(conn, T, sql.SQL("id = 3002")) == 0, "failed transaction discarded")

    # Savepoints: psycopg nested transaction() blocks, and explicit SQL.
    with tx.transaction():
        tx.execute(sql.SQL("insert into {} values (3003, 'outer', 0)").format(t))
        try:
            with tx.transaction():
                tx.execute(sql.SQL("insert into {} values (3004, 'inner', 0)").format(t))
                tx.execute(sql.SQL("insert into {} values (3003, 'dup', 0)").format(t))
        except errors.UniqueViolation:
            pass
        tx.execute("savepoint sp1")
        tx.execute(sql.SQL("insert into {} values (3005, 'kept by release', 0)").format(t))
        tx.execute("release savepoint sp1")
        tx.execute("savepoint sp2")
        tx.execute(sql.SQL("insert into {} values (3006, 'rolled back to sp2', 0)").format(t))
        expect_error(tx, "select 1/0", "22012")
        tx.execute("rollback to savepoint sp2")
        check(tx.info.transaction_status == TransactionStatus.INTRANS, "INTRANS after rollback to savepoint")
    ids = [r[0] for r in conn.execute(sql.SQL("select id from {} where id >= 3000 order by id").format(t))]
    check(ids == [3000, 3003, 3005], f"savepoints: ids {ids}")

    # Explicit BEGIN/COMMIT in autocommit mode, and a read-only transaction.
    conn.execute("begin")
    check(conn.info.transaction_status == TransactionStatus.INTRANS, "BEGIN in autocommit")
    conn.execute("rollback")
    tx.execute("set transaction read only")
    expect_error(tx, sql.SQL("insert into {} values (3007, 'ro', 0)").format(t), "25006")
    tx.rollback()
    tx.close()
    ok("transactions: commit, rollback, failed state 25P02, savepoints")


# 4 ------------------------------------------------------------------------
def step_errors(conn):
    e = expect_error(conn, "selec 1", "42601")
    check(e.diag.severity == "ERROR" and e.diag.statement_position == "1", f"syntax diag: {e.diag.statement_position}")
    check(isinstance(e, errors.SyntaxError), type(e))
    e = expect_error(conn, "select * from no_such_table_here", "42P01")
    check(e.diag.statement_position == "15", f"position {e.diag.statement_position}")
    expect_error(conn, "select %s::int", "22P02", ("not a number",))  # error at Bind
    e = expect_error(conn, sql.SQL("insert into {} values (1, 'x', 0)").format(ident(T)), "23505")
    check(isinstance(e, errors.UniqueViolation), type(e))
    d = e.diag
    check(d.constraint_name == f"{T}_pkey", f"constraint_name {d.constraint_name}")
    check(d.table_name == T and d.schema_name == "public", f"table {d.schema_name}.{d.table_name}")
    check(d.message_detail == "Key (id)=(1) already exists.", f"detail {d.message_detail}")
    check(d.message_primary.startswith("duplicate key value violates unique constraint"), d.message_primary)
    # An error in a multi-statement simple query stops the rest of it.
    expect_error(conn, sql.SQL("insert into {} values (4000, 'a', 0); select 1/0; insert into {} values (4001, 'b', 0)")
                 .format(ident(T), ident(T)), "22012")
    check(count(conn, T, sql.SQL("id >= 4000")) == 0, "multi-statement query is one implicit transaction")
    # A user-raised error with custom fields.
    e = expect_error(conn, "do $$ begin raise exception using errcode = 'P0001', message = 'custom', "
                           "detail = 'the detail', hint = 'the hint'; end $$", "P0001")
    check((e.diag.message_primary, e.diag.message_detail, e.diag.message_hint) == ("custom", "the detail", "the hint"),
          "custom error fields")
    check(conn.execute("select 'still usable'").fetchone() == ("still usable",), "usable after errors")
    check(conn.info.transaction_status == TransactionStatus.IDLE, "idle after errors")
    ok("errors: 42601, 42P01, 22P02, 23505 with diagnostics; session usable")


# 5 ------------------------------------------------------------------------
N_COPY = 10000


def step_copy(conn):
    tc = ident(TC)
    conn.execute(sql.SQL("create table {} (id int primary key, name text, amount numeric, tags text[])").format(tc))

    # Text COPY FROM STDIN, one write_row per row (psycopg escapes).
    with conn.cursor().copy(sql.SQL("copy {} (id, name, amount, tags) from stdin").format(tc)) as cp:
        for i in range(N_COPY):
            cp.write_row((i, f"name\t{i}\\x", Decimal(i) / 100, ["a", f"b{i}"]))
    check(count(conn, TC) == N_COPY, "text copy in count")

    # CSV COPY FROM STDIN, raw chunks with quoted commas, quotes and newlines.
    with conn.cursor().copy(sql.SQL("copy {} (id, name, amount) from stdin (format csv)").format(tc)) as cp:
        buf = []
        for i in range(N_COPY, 2 * N_COPY):
            buf.append(f'{i},"csv, ""{i}""\nline2",{i}.5\n')
            if len(buf) == 997:
                cp.write("".join(buf))
                buf = []
        cp.write("".join(buf))
    check(count(conn, TC) == 2 * N_COPY, "csv copy in count")

    # Binary COPY FROM STDIN with write_row.
    with conn.cursor().copy(sql.SQL("copy {} (id, name, amount, tags) from stdin (format binary)").format(tc)) as cp:
        cp.set_types(["int4", "text", "numeric", "text[]"])
        for i in range(2 * N_COPY, 3 * N_COPY):
            cp.write_row((i, f"bin-{i}", Decimal(i), None))
    s = conn.execute(sql.SQL("select count(*), sum(id), sum(amount) from {}").format(tc)).fetchone()
    want_amount = sum(Decimal(i) / 100 for i in range(N_COPY)) + sum(Decimal(i) + Decimal("0.5") for i in range(N_COPY, 2 * N_COPY)) \
        + sum(Decimal(i) for i in range(2 * N_COPY, 3 * N_COPY))
    check(s == (3 * N_COPY, sum(range(3 * N_COPY)), want_amount), f"copy in totals {s}")
    r = conn.execute(sql.SQL("select name, tags from {} where id = 7").format(tc)).fetchone()
    check(r == ("name\t7\\x", ["a", "b7"]), f"text copy escaping {r}")
    r = conn.execute(sql.SQL("select name from {} where id = %s").format(tc), (N_COPY + 3,)).fetchone()
    check(r == (f'csv, "{N_COPY + 3}"\nline2',), f"csv copy quoting {r}")
    ok(f"COPY FROM STDIN: text, csv, binary ({3 * N_COPY} rows)")

    # COPY TO STDOUT, text: parse rows back with set_types.
    with conn.cursor().copy(sql.SQL("copy (select id, name, tags from {} where id < %s order by id) to stdout")
                            .format(tc), (N_COPY,)) as cp:
        cp.set_types(["int4", "text", "text[]"])
        rows = list(cp.rows())
    check(len(rows) == N_COPY and rows[9] == (9, "name\t9\\x", ["a", "b9"]), f"text copy out {len(rows)} {rows[9:10]}")

    # CSV, raw bytes.
    out = bytearray()
    chunks = 0
    with conn.cursor().copy(sql.SQL("copy (select id, amount from {} order by id) to stdout (format csv, header)")
                            .format(tc)) as cp:
        for chunk in cp:
            out += chunk
            chunks += 1
    lines = out.decode().splitlines()
    check(lines[0] == "id,amount" and len(lines) == 3 * N_COPY + 1, f"csv copy out: {len(lines)} lines")
    check(lines[1] == "0,0" and lines[-1] == f"{3 * N_COPY - 1},{3 * N_COPY - 1}", f"csv copy out ends {lines[1]} {lines[-1]}")
    check(chunks >= N_COPY, f"expected one CopyData per row, got {chunks}")

    # Binary out.
    with conn.cursor().copy(sql.SQL("copy (select id, name from {} order by id) to stdout (format binary)").format(tc)) as cp:
        cp.set_types(["int4", "text"])
        total = 0
        n = 0
        for rid, name in cp.rows():
            total += rid
            n += 1
    check((n, total) == (3 * N_COPY, sum(range(3 * N_COPY))), f"binary copy out {n} {total}")
    ok("COPY TO STDOUT: text, csv, binary")

    # A COPY that fails midway on bad data: nothing is loaded, session usable.
    try:
        with conn.cursor().copy(sql.SQL("copy {} (id, name) from stdin").format(tc)) as cp:
            for i in range(N_COPY):
                rid = "not-a-number" if i == N_COPY // 2 else str(100000 + i)
                cp.write(f"{rid}\tmidway-{i}\n")
        raise ScenarioError("bad COPY data accepted")
    except errors.InvalidTextRepresentation as e:
        check(e.sqlstate == "22P02" and "not-a-number" in str(e), f"copy error {e}")
        check(e.diag.context and "COPY" in e.diag.context, f"copy error context {e.diag.context}")
    check(count(conn, TC) == 3 * N_COPY, "failed COPY loaded nothing")

    # The client gives up: psycopg sends CopyFail; the server answers 57014.
    class GiveUp(Exception):
        pass

    try:
        with conn.cursor().copy(sql.SQL("copy {} (id, name) from stdin").format(tc)) as cp:
            cp.write_row((200000, "never"))
            raise GiveUp()
    except GiveUp:
        pass
    check(count(conn, TC) == 3 * N_COPY, "CopyFail loaded nothing")
    check(conn.execute("select 'after copy'").fetchone() == ("after copy",), "usable after failed COPY")
    check(conn.info.transaction_status == TransactionStatus.IDLE, "idle after failed COPY")

    # COPY inside a transaction, rolled back.
    with connect() as tx:
        with tx.cursor().copy(sql.SQL("copy {} (id, name) from stdin").format(tc)) as cp:
            cp.write_row((300000, "in tx"))
        check(count(tx, TC) == 3 * N_COPY + 1, "copy visible in its transaction")
        tx.rollback()
    check(count(conn, TC) == 3 * N_COPY, "rolled-back COPY")
    ok("COPY failing midway (22P02), CopyFail, COPY in a transaction")


# 6 ------------------------------------------------------------------------
def step_cancel(conn):
    for how in ("cancel_safe", "cancel"):
        victim = connect(autocommit=True)
        pid = victim.execute("select pg_backend_pid()").fetchone()[0]
        result = {}

        def run():
            t0 = time.monotonic()
            try:
                victim.execute("select pg_sleep(30)")
                result["error"] = None
            except psycopg.Error as e:
                result["error"] = e
            result["elapsed"] = time.monotonic() - t0

        th = threading.Thread(target=run, daemon=True)
        th.start()
        wait_until(lambda: conn.execute(
            "select count(*) from pg_stat_activity where pid = %s and state = 'active' and query like 'select pg_sleep%%'",
            (pid,)).fetchone()[0] == 1, 10, "pg_sleep to start")
        t_cancel = time.monotonic()
        getattr(victim, how)()
        th.join(10)
        check(not th.is_alive(), f"{how}: query still running 10s after cancel")
        e = result.get("error")
        check(e is not None, f"{how}: pg_sleep was not cancelled")
        check(e.sqlstate == "57014" and isinstance(e, errors.QueryCanceled), f"{how}: got {e.sqlstate} {e}")
        check(time.monotonic() - t_cancel < 5, f"{how}: cancel took {time.monotonic() - t_cancel:.1f}s")
        check(victim.execute("select 'alive'").fetchone() == ("alive",), f"{how}: session unusable after cancel")
        victim.close()

    # Cancelling an idle connection does nothing to it.
    idle = connect(autocommit=True)
    idle.cancel_safe()
    check(idle.execute("select 1").fetchone() == (1,), "cancel of an idle session")
    idle.close()
    ok("cancel: cancel_safe() and cancel() give 57014, session usable")


# 7 ------------------------------------------------------------------------
def step_listen_notify(conn):
    listener = connect(autocommit=True)
    listener.execute(sql.SQL("listen {}").format(ident(CHANNEL)))

    payload = "hello from psycopg ✓ " + SUFFIX
    conn.execute("select pg_notify(%s, %s)", (CHANNEL, payload))
    got = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=1)]
    check(got == [(CHANNEL, payload)], f"notifies(): {got}")

    # Notifications sent inside a transaction arrive on commit, in order.
    with connect() as tx:
        for i in range(3):
            tx.execute(sql.SQL("notify {}, {}").format(ident(CHANNEL), sql.Literal(f"tx-{i}")))
        tx.commit()
        tx.execute(sql.SQL("notify {}, 'rolled back'").format(ident(CHANNEL)))
        tx.rollback()
    conn.execute(sql.SQL("notify {}, 'last'").format(ident(CHANNEL)))
    got = [n.payload for n in listener.notifies(timeout=10, stop_after=4)]
    check(got == ["tx-0", "tx-1", "tx-2", "last"], f"transactional notifies: {got}")
    listener.execute(sql.SQL("unlisten {}").format(ident(CHANNEL)))
    listener.close()

    # A notification that arrives while the listener is busy with its own
    # queries reaches the handler (NotificationResponse between results).
    busy = connect(autocommit=True)
    handled = []
    busy.add_notify_handler(lambda n: handled.append((n.channel, n.payload)))
    busy.execute(sql.SQL("listen {}").format(ident(CHANNEL)))
    conn.execute(sql.SQL("notify {}, 'during queries'").format(ident(CHANNEL)))
    wait_until(lambda: busy.execute("select 1").fetchone() == (1,) and handled, 10, "notification during queries")
    check(handled == [(CHANNEL, "during queries")], f"handler got {handled}")
    busy.close()
    ok("LISTEN/NOTIFY between two connections")


# 8 ------------------------------------------------------------------------
N_BIG = 200000


def step_large_result(conn):
    want_sum = N_BIG * (N_BIG + 1) // 2
    want = conn.execute(
        "select count(*), sum(g), md5(string_agg(g::text || ':row-' || g, ',' order by g)) "
        "from generate_series(1, %s) g", (N_BIG,)).fetchone()
    check(want[:2] == (N_BIG, want_sum), f"server totals {want}")

    def digest(rows):
        h = hashlib.md5()
        n = total = 0
        first = True
        for g, label in rows:
            if not first:
                h.update(b",")
            first = False
            h.update(f"{g}:{label}".encode())
            n += 1
            total += g
        return n, total, h.hexdigest()

    query = "select g, 'row-' || g from generate_series(1, %s) g order by g"
    # Server-side cursor: DECLARE, Describe portal, FETCH FORWARD batches.
    with connect() as c2:
        with c2.cursor(name=f"big_{SUFFIX}") as cur:
            cur.itersize = 5000
            cur.execute(query, (N_BIG,))
            got = digest(cur)
    check(got == want, f"server-side cursor: {got} vs {want}")
    # Streaming in single-row mode.
    with conn.cursor() as cur:
        got = digest(cur.stream(query, (N_BIG,)))
    check(got == want, f"stream(): {got} vs {want}")
    # One round trip, all rows buffered, binary.
    with conn.cursor(binary=True) as cur:
        got = digest(cur.execute(query, (N_BIG,)).fetchall())
    check(got == want, f"fetchall(): {got} vs {want}")
    ok(f"large result ({N_BIG} rows): server-side cursor, stream, fetchall; checksums match")


# 9 ------------------------------------------------------------------------
Notice = collections.namedtuple("Notice", "severity sqlstate message_primary")


def step_notices(conn):
    notices = []

    def handler(d):  # a Diagnostic is only valid inside the callback
        notices.append(Notice(d.severity, d.sqlstate, d.message_primary))
    conn.add_notice_handler(handler)
    conn.execute("do $$ begin raise notice 'hello %', 42; end $$")
    check([n.message_primary for n in notices] == ["hello 42"], f"notices: {[n.message_primary for n in notices]}")
    d = notices[0]
    check(d.severity == "NOTICE" and d.sqlstate == "00000", f"notice fields {d.severity} {d.sqlstate}")
    # Notices interleaved with DataRows, in the extended protocol.
    notices.clear()
    conn.execute("create or replace function pg_temp.noisy(x int) returns int language plpgsql as "
                 "$$ begin raise notice 'row %', x; return x; end $$")
    r = conn.execute("select pg_temp.noisy(g) from generate_series(1, %s) g", (3,)).fetchall()
    check(r == [(1,), (2,), (3,)], f"noisy rows {r}")
    check([n.message_primary for n in notices] == ["row 1", "row 2", "row 3"], f"interleaved notices {[n.message_primary for n in notices]}")
    # A warning-level message.
    notices.clear()
    conn.execute("do $$ begin raise warning 'careful'; end $$")
    check([(n.severity, n.message_primary) for n in notices] == [("WARNING", "careful")], "warning")
    conn.remove_notice_handler(handler)
    ok("NoticeResponse surfaced (notice, interleaved with rows, warning)")


# 10 -----------------------------------------------------------------------
def step_parameter_status(conn):
    info = conn.info
    for name, want in (("client_encoding", "UTF8"), ("standard_conforming_strings", "on"),
                       ("integer_datetimes", "on")):
        check(info.parameter_status(name) == want, f"{name} = {info.parameter_status(name)}")
    check(info.server_version >= 150000, f"server_version {info.server_version}")
    check(info.parameter_status("server_version").startswith("15") or info.server_version >= 150000, "server_version")

    conn.execute("set application_name = 'psycopg-scenario'")
    check(info.parameter_status("application_name") == "psycopg-scenario",
          f"ParameterStatus application_name = {info.parameter_status('application_name')}")
    check(conn.execute("show application_name").fetchone() == ("psycopg-scenario",), "SHOW application_name")
    conn.execute("set timezone = 'America/New_York'")
    check(info.parameter_status("TimeZone") == "America/New_York", f"TimeZone {info.parameter_status('TimeZone')}")
    ts = conn.execute("select '2024-07-01 12:00:00+00'::timestamptz").fetchone()[0]
    check(ts.utcoffset() == datetime.timedelta(hours=-4), f"timestamptz in session zone {ts}")
    conn.execute("reset timezone")
    # A SET inside a rolled-back transaction reverts, with a new ParameterStatus.
    with connect() as tx:
        tx.execute("set application_name = 'in-tx'")
        check(tx.info.parameter_status("application_name") == "in-tx", "SET in tx")
        tx.rollback()
        check(tx.info.parameter_status("application_name") != "in-tx", "ParameterStatus after rollback of SET")
    ok("ParameterStatus: application_name, TimeZone, startup parameters")


def cleanup():
    try:
        with connect(autocommit=True) as c:
            c.execute(sql.SQL("drop table if exists {}, {}").format(ident(T), ident(TC)))
    except Exception as e:  # noqa: BLE001 - cleanup is best effort
        print(f"warning: cleanup failed: {e}", file=sys.stderr)


def main():
    steps = [step_connect, step_simple_query_types, step_parameters, step_pipeline, step_transactions,
             step_errors, step_copy, step_cancel, step_listen_notify, step_large_result, step_notices,
             step_parameter_status]
    current = "connect"
    try:
        conn = connect(autocommit=True)
        for fn in steps:
            current = fn.__name__.removeprefix("step_")
            fn(conn)
        current = "drop tables"
        conn.execute(sql.SQL("drop table {}, {}").format(ident(T), ident(TC)))
        conn.close()
    except Exception as e:  # noqa: BLE001 - report any failure as the scenario's
        traceback.print_exc()
        print(f"FAILED: psycopg step '{current}': {type(e).__name__}: {e}", file=sys.stderr)
        cleanup()
        sys.exit(1)
    print("psycopg scenario passed", flush=True)


if __name__ == "__main__":
    main()
