"""asyncpg scenario: a pure-Python-protocol driver using the binary format.

Runs against PostgreSQL directly or through Sluice; the two must look the
same. Reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and
SCENARIO_SSLMODE (disable | require, default disable). Prints `ok: <step>`
per passing step and exits non-zero with a message on the first failure.

What goes over the wire (asyncpg implements the protocol itself):
- every query is prepared first: Parse(name)/Describe(statement)/Flush-or-
  Sync, then Bind with binary parameter and result formats/Execute/Sync;
  named statements "__asyncpg_stmt_N__" are cached per connection, unnamed
  ones when statement_cache_size=0; SQL without arguments via
  execute() goes as a simple Query.
- type introspection queries for types it has no built-in codec for
  (composite types here).
- executemany: many Bind/Execute before one Sync (atomic).
- cursors: Bind to a named portal, Execute with a row limit, PortalSuspended.
- COPY: binary COPY FROM STDIN (copy_records_to_table), text/CSV in and out.
- cancel on timeout: a CancelRequest on a new connection (over TLS when
  the session uses TLS).
- connection pool release: `SELECT pg_advisory_unlock_all(); CLOSE ALL;
  UNLISTEN *; RESET ALL;` as one simple Query.
"""
import asyncio
import datetime
import hashlib
import json
import os
import sys
import traceback
import uuid
from decimal import Decimal

import asyncpg

SSLMODE = os.environ.get("SCENARIO_SSLMODE", "disable")
SUFFIX = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
T = f"apg_{SUFFIX}"
TC = f"apg_{SUFFIX}_copy"
TYPE = f"apg_{SUFFIX}_pair"
CHANNEL = f"apg_ch_{SUFFIX}"
UTC = datetime.timezone.utc


class ScenarioError(AssertionError):
    pass


def check(cond, what):
    if not cond:
        raise ScenarioError(what)


def ok(step):
    print(f"ok: {step}", flush=True)


def q(name):
    return '"' + name.replace('"', '""') + '"'


async def connect(**kw):
    return await asyncpg.connect(
        host=os.environ["PGHOST"],
        port=int(os.environ["PGPORT"]),
        user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"],
        database=os.environ["PGDATABASE"],
        ssl=SSLMODE,
        timeout=10,
        **kw,
    )


async def expect_error(coro, code, cls=None):
    try:
        await coro
    except asyncpg.PostgresError as e:
        check(e.sqlstate == code, f"expected SQLSTATE {code}, got {e.sqlstate}: {e}")
        if cls is not None:
            check(isinstance(e, cls), f"expected {cls.__name__}, got {type(e).__name__}")
        return e
    raise ScenarioError(f"statement succeeded; expected SQLSTATE {code}")


async def wait_until(pred, timeout, what):
    """Poll the coroutine function `pred` until it returns true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await pred():
            return
        if loop.time() > deadline:
            raise ScenarioError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


# 0 ------------------------------------------------------------------------
async def step_connect(conn):
    check(not conn.is_closed(), "connection closed")
    use_ssl = conn._transport.get_extra_info("sslcontext") is not None  # noqa: SLF001 - no public accessor
    check(use_ssl == (SSLMODE != "disable"), f"TLS in use={use_ssl}, sslmode={SSLMODE}")
    # Through Sluice the database role is Sluice's own, not PGUSER.
    user, db = await conn.fetchrow("select current_user, current_database()")
    check(user and db, f"current_user {user}, current_database {db}")
    ok(f"connect (sslmode={SSLMODE})")


# 1 ------------------------------------------------------------------------
async def step_types(conn):
    # No arguments: asyncpg still prepares (Parse/Describe) and fetches binary.
    row = await conn.fetchrow(
        """select 42::int4 i4, 9007199254740993::int8 i8, 'héllo wörld ✓'::text t,
                  12345.678901234567890::numeric n, true yes, false no,
                  '2024-02-29 13:14:15.123456+00'::timestamptz ts, '2024-02-29'::date d,
                  '\\x00ff10'::bytea b, null::text nul, '{"a": [1, 2, {"b": null}]}'::jsonb j,
                  array[1, 2, 3]::int4[] ia, array['x', null, 'z'] ta, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid u,
                  1e300::float8 f, '1 day 02:03:04'::interval iv, 'NaN'::numeric nan,
                  array[[1, 2], [3, 4]]::int8[] m, '[1,5)'::int4range r"""
    )
    check(list(row.keys())[:3] == ["i4", "i8", "t"], f"column names {list(row.keys())}")
    expect = {
        "i4": 42, "i8": 9007199254740993, "t": "héllo wörld ✓", "n": Decimal("12345.678901234567890"),
        "yes": True, "no": False, "ts": datetime.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=UTC),
        "d": datetime.date(2024, 2, 29), "b": b"\x00\xff\x10", "nul": None, "ia": [1, 2, 3],
        "ta": ["x", None, "z"], "f": 1e300, "iv": datetime.timedelta(days=1, hours=2, minutes=3, seconds=4),
        "m": [[1, 2], [3, 4]],
    }
    for k, v in expect.items():
        check(row[k] == v, f"column {k}: got {row[k]!r}, want {v!r}")
    check(json.loads(row["j"]) == {"a": [1, 2, {"b": None}]}, f"jsonb {row['j']}")
    check(str(row["u"]) == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", f"uuid {row['u']}")
    check(row["nan"].is_nan(), f"NaN {row['nan']}")
    check((row["r"].lower, row["r"].upper) == (1, 5), f"range {row['r']}")

    # Simple Query protocol (execute() without arguments), several statements.
    status = await conn.execute("select 1; select 2; set local work_mem = '8MB'")
    check(status == "SET", f"execute status {status}")

    # A composite type: asyncpg introspects it with its own catalog queries.
    await conn.execute(f"create type {q(TYPE)} as (a int, b text)")
    r = await conn.fetchval(f"select row(7, 'seven')::{q(TYPE)}")
    check((r["a"], r["b"]) == (7, "seven"), f"composite {r}")
    r = await conn.fetchval(f"select $1::{q(TYPE)}", (8, "eight"))
    check(tuple(r) == (8, "eight"), f"composite parameter {r}")

    # A custom codec: jsonb decoded as Python objects (text format for that type).
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    check(await conn.fetchval("select $1::jsonb", {"k": [1, "v"]}) == {"k": [1, "v"]}, "jsonb codec")
    ok("query with many types (binary results), composite type, custom codec")


# 2 ------------------------------------------------------------------------
async def step_prepared(conn):
    params = (7, -9223372036854775808, "ünïcødé 'q' \\", Decimal("-0.000123"), True,
              datetime.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime.date(2000, 1, 1),
              b"\x00\x01\xfe\xff", None, [1, None, 3], ["a", "b c", ""], uuid.UUID(int=12345), 2.25)
    r = await conn.fetchrow(
        "select $1::int4, $2::int8, $3::text, $4::numeric, $5::bool, $6::timestamptz, $7::date, $8::bytea,"
        " $9::text, $10::int4[], $11::text[], $12::uuid, $13::float8", *params)
    check(tuple(r)[:11] == params[:11] and str(r[11]) == str(params[11]) and r[12] == params[12],
          f"binary parameter round trip: {tuple(r)}")

    # An explicitly prepared, named statement, run many times.
    stmt = await conn.prepare("select $1::int8 * 2, $2::text || '!'", name=f"apg_named_{SUFFIX}")
    check([p.name for p in stmt.get_parameters()] == ["int8", "text"], "parameter description")
    check([a.name for a in stmt.get_attributes()] == ["?column?", "?column?"], "row description")
    for i in range(20):
        check(tuple(await stmt.fetchrow(i, "x")) == (i * 2, "x!"), f"named run {i}")
    names = {r[0] for r in await conn.fetch("select name from pg_prepared_statements")}
    check(f"apg_named_{SUFFIX}" in names, f"named statement on the server: {names}")
    # The statement cache: the same query text reuses one server statement.
    for i in range(10):
        check(await conn.fetchval("select $1::int4 + 100", i) == i + 100, "cached statement")
    stmts = await conn.fetch("select name from pg_prepared_statements where statement = 'select $1::int4 + 100'")
    check(len(stmts) == 1 and stmts[0][0].startswith("__asyncpg_stmt_"), f"cached statements {stmts}")

    # statement_cache_size=0: unnamed statements only (the PgBouncer setting).
    c0 = await connect(statement_cache_size=0)
    try:
        for i in range(5):
            check(await c0.fetchval("select $1::text || 'u'", str(i)) == f"{i}u", "unnamed statement")
        check(await c0.fetchval("select count(*) from pg_prepared_statements") == 0, "no named statements")
    finally:
        await c0.close()
    ok("prepared statements: named (reused 20x), statement cache, unnamed")

    await conn.execute(f"create table {q(T)} (id int primary key, v text, n numeric)")
    await conn.executemany(f"insert into {q(T)} values ($1, $2, $3)",
                           [(i, f"v{i}", Decimal(i) / 4) for i in range(500)])
    check(await conn.fetchval(f"select count(*) from {q(T)}") == 500, "executemany count")
    # executemany is atomic: a duplicate in the middle inserts nothing.
    e = await expect_error(conn.executemany(f"insert into {q(T)} values ($1, $2, $3)",
                                            [(1000, "a", 0), (1001, "b", 0), (5, "dup", 0), (1002, "c", 0)]),
                           "23505", asyncpg.UniqueViolationError)
    check(e.constraint_name == f"{T}_pkey", f"constraint {e.constraint_name}")
    check(await conn.fetchval(f"select count(*) from {q(T)} where id >= 1000") == 0, "executemany atomic")
    ok("executemany (pipelined Bind/Execute, one Sync), atomic on error")


# 3 ------------------------------------------------------------------------
async def step_transactions(conn):
    t = q(T)
    async with conn.transaction():
        await conn.execute(f"insert into {t} values (3000, 'kept', 0)")
        check(conn.is_in_transaction(), "in transaction")
    check(not conn.is_in_transaction(), "transaction closed")

    class Abort(Exception):
        pass

    try:
        async with conn.transaction():
            await conn.execute(f"insert into {t} values (3001, 'dropped', 0)")
            raise Abort()
    except Abort:
        pass
    ids = [r[0] for r in await conn.fetch(f"select id from {t} where id in (3000, 3001)")]
    check(ids == [3000], f"commit persists, rollback discards: {ids}")

    tr = conn.transaction()
    await tr.start()
    await conn.execute(f"insert into {t} values (3002, 'lost', 0)")
    await expect_error(conn.execute("select 1/0"), "22012", asyncpg.DivisionByZeroError)
    await expect_error(conn.fetchval("select $1::int", 1), "25P02", asyncpg.InFailedSQLTransactionError)
    await expect_error(conn.execute("select 1"), "25P02")
    await tr.rollback()
    check(await conn.fetchval("select 'recovered'") == "recovered", "usable after rollback")
    check(await conn.fetchval(f"select count(*) from {t} where id = 3002") == 0, "failed transaction discarded")

    # Savepoints: nested transaction() blocks.
    async with conn.transaction():
        await conn.execute(f"insert into {t} values (3003, 'outer', 0)")
        try:
            async with conn.transaction():
                await conn.execute(f"insert into {t} values (3004, 'inner', 0)")
                await conn.execute(f"insert into {t} values (3003, 'dup', 0)")
        except asyncpg.UniqueViolationError:
            pass
        async with conn.transaction():
            await conn.execute(f"insert into {t} values (3005, 'inner kept', 0)")
        await conn.execute("savepoint manual")
        await expect_error(conn.execute("select 1/0"), "22012")
        await conn.execute("rollback to savepoint manual")
    ids = [r[0] for r in await conn.fetch(f"select id from {t} where id >= 3000 order by id")]
    check(ids == [3000, 3003, 3005], f"savepoints: {ids}")

    async with conn.transaction(isolation="serializable", readonly=True):
        check(await conn.fetchval("show transaction_isolation") == "serializable", "isolation")
        await expect_error(conn.execute(f"insert into {t} values (3006, 'ro', 0)"), "25006")
    ok("transactions: commit, rollback, failed state 25P02, savepoints, isolation")


# 4 ------------------------------------------------------------------------
async def step_errors(conn):
    e = await expect_error(conn.execute("selec 1"), "42601", asyncpg.PostgresSyntaxError)
    check(e.position == "1" and e.severity == "ERROR", f"syntax error fields {e.as_dict()}")
    e = await expect_error(conn.fetch("selec $1", 1), "42601")  # error at Parse
    await expect_error(conn.fetch("select * from no_such_table_here"), "42P01", asyncpg.UndefinedTableError)
    e = await expect_error(conn.execute(f"insert into {q(T)} values (1, 'x', 0)"), "23505",
                           asyncpg.UniqueViolationError)
    check(e.constraint_name == f"{T}_pkey", f"constraint_name {e.constraint_name}")
    check(e.table_name == T and e.schema_name == "public", f"table {e.schema_name}.{e.table_name}")
    check(e.detail == "Key (id)=(1) already exists.", f"detail {e.detail}")
    e = await expect_error(conn.execute(f"insert into {q(T)} values ($1, 'x', 0)", 1), "23505")
    check(e.constraint_name == f"{T}_pkey", "constraint_name (extended protocol)")
    e = await expect_error(conn.execute("do $$ begin raise exception using errcode = 'P0001', message = 'custom', "
                                        "detail = 'the detail', hint = 'the hint'; end $$"), "P0001")
    check((e.message, e.detail, e.hint) == ("custom", "the detail", "the hint"), "custom error fields")
    # A statement that fails at Execute after sending rows.
    await expect_error(conn.fetch("select 1 / (3 - g) from generate_series(1, 5) g"), "22012")
    check(await conn.fetchval("select 'still usable'") == "still usable", "usable after errors")
    check(not conn.is_in_transaction(), "idle after errors")
    ok("errors: 42601, 42P01, 23505 with diagnostics, error after rows; session usable")


# 5 ------------------------------------------------------------------------
N_COPY = 10000


async def step_copy(conn):
    await conn.execute(f"create table {q(TC)} (id int primary key, name text, amount numeric)")
    # Binary COPY FROM STDIN.
    status = await conn.copy_records_to_table(
        TC, records=((i, f"rec-{i}", Decimal(i) / 100) for i in range(N_COPY)))
    check(status == f"COPY {N_COPY}", f"copy_records_to_table: {status}")

    # Text and CSV COPY FROM STDIN from async iterators of chunks.
    async def text_chunks():
        for start in range(N_COPY, 2 * N_COPY, 1000):
            yield "".join(f"{i}\ttext\\t{i}\t{i}\n" for i in range(start, start + 1000)).encode()

    status = await conn.copy_to_table(TC, source=text_chunks())
    check(status == f"COPY {N_COPY}", f"text copy_to_table: {status}")

    async def csv_chunks():
        yield b"id,name,amount\n"
        for start in range(2 * N_COPY, 3 * N_COPY, 1000):
            yield "".join(f'{i},"csv, ""{i}""",{i}.5\n' for i in range(start, start + 1000)).encode()

    status = await conn.copy_to_table(TC, source=csv_chunks(), format="csv", header=True)
    check(status == f"COPY {N_COPY}", f"csv copy_to_table: {status}")
    s = await conn.fetchrow(f"select count(*), sum(id) from {q(TC)}")
    check(tuple(s) == (3 * N_COPY, sum(range(3 * N_COPY))), f"copy in totals {tuple(s)}")
    check(await conn.fetchval(f"select name from {q(TC)} where id = $1", N_COPY + 1) == f"text\t{N_COPY + 1}",
          "text copy escape")
    check(await conn.fetchval(f"select name from {q(TC)} where id = $1", 2 * N_COPY + 1) == f'csv, "{2 * N_COPY + 1}"',
          "csv quoting")
    ok(f"COPY FROM STDIN: binary records, text, csv ({3 * N_COPY} rows)")

    chunks = []

    async def sink(data):
        chunks.append(bytes(data))

    status = await conn.copy_from_query(f"select id, amount from {q(TC)} where id < $1 order by id", N_COPY,
                                        output=sink, format="csv")
    lines = b"".join(chunks).decode().splitlines()
    check(status == f"COPY {N_COPY}" and len(lines) == N_COPY and lines[-1] == f"{N_COPY - 1},{(N_COPY - 1) / 100:.2f}",
          f"csv copy_from_query: {status} {len(lines)} {lines[-1:]}")
    chunks.clear()
    status = await conn.copy_from_table(TC, output=sink)
    text = b"".join(chunks).decode()
    check(status == f"COPY {3 * N_COPY}" and text.count("\n") == 3 * N_COPY, f"text copy_from_table {status}")
    check(sum(int(line.split("\t", 1)[0]) for line in text.splitlines()) == sum(range(3 * N_COPY)), "copy out ids")
    chunks.clear()
    status = await conn.copy_from_query("select g, 'x' from generate_series(1, 100) g", output=sink, format="binary")
    data = b"".join(chunks)
    check(status == "COPY 100" and data.startswith(b"PGCOPY\n\xff\r\n\x00"), f"binary copy out {status}")
    ok("COPY TO STDOUT: csv, text, binary")

    # Bad data midway: 22P02 from the server, nothing loaded.
    async def bad_chunks():
        for start in range(100000, 110000, 1000):
            rows = [f"{i}\tmidway\t0\n" for i in range(start, start + 1000)]
            if start == 105000:
                rows[500] = "not-a-number\tbad\t0\n"
            yield "".join(rows).encode()

    e = await expect_error(conn.copy_to_table(TC, source=bad_chunks()), "22P02",
                           asyncpg.InvalidTextRepresentationError)
    check("not-a-number" in e.message, f"copy error message {e.message}")
    # A record the client cannot encode: asyncpg aborts the COPY (CopyFail).
    try:
        await conn.copy_records_to_table(TC, records=[(200000, "fine", 1), ("not an int", "bad", 2)])
        raise ScenarioError("bad record accepted")
    except (asyncpg.DataError, asyncpg.PostgresError, ValueError, TypeError):
        pass
    check(await conn.fetchval(f"select count(*) from {q(TC)}") == 3 * N_COPY, "failed COPY loaded nothing")
    check(await conn.fetchval("select 'after copy'") == "after copy", "usable after failed COPY")
    check(not conn.is_in_transaction(), "idle after failed COPY")
    ok("COPY failing midway (22P02) and aborted by the client; session usable")


# 6 ------------------------------------------------------------------------
async def step_cancel(conn):
    loop = asyncio.get_running_loop()
    victim = await connect()
    pid = await victim.fetchval("select pg_backend_pid()")

    async def sleeping_is(state_count):
        n = await conn.fetchval("select count(*) from pg_stat_activity where pid = $1 and state = 'active' "
                                "and query like 'select pg_sleep%'", pid)
        return n == state_count

    # asyncio timeout: asyncpg sends a CancelRequest for the running query.
    t0 = loop.time()
    try:
        await victim.execute("select pg_sleep(30)", timeout=1.0)
        raise ScenarioError("pg_sleep not interrupted")
    except asyncio.TimeoutError:
        pass
    check(loop.time() - t0 < 5, f"timeout took {loop.time() - t0:.1f}s")
    t1 = loop.time()
    check(await victim.fetchval("select pg_backend_pid()") == pid, "same session after cancel")
    check(loop.time() - t1 < 5, f"cancel not honoured: next query waited {loop.time() - t1:.1f}s")
    await wait_until(lambda: sleeping_is(0), 5, "pg_sleep to stop")

    # asyncio.wait_for around a fetch, then cancelling the task itself.
    try:
        await asyncio.wait_for(victim.fetchval("select pg_sleep(30)"), 1.0)
        raise ScenarioError("pg_sleep not interrupted by wait_for")
    except asyncio.TimeoutError:
        pass
    task = asyncio.ensure_future(victim.fetchval("select pg_sleep(30)"))
    await wait_until(lambda: sleeping_is(1), 10, "pg_sleep to start")
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    t2 = loop.time()
    check(await victim.fetchval("select 3") == 3 and loop.time() - t2 < 5, "usable soon after task.cancel()")

    # The server's own answer to a cancel is 57014; statement_timeout gives
    # the same error through the same path.
    await victim.execute("set statement_timeout = '200ms'")
    await expect_error(victim.execute("select pg_sleep(30)"), "57014", asyncpg.QueryCanceledError)
    await victim.execute("reset statement_timeout")
    check(await victim.fetchval("select 4") == 4, "usable after 57014")
    await victim.close()
    ok("cancel: timeout and task cancellation send CancelRequest; session usable")


# 7 ------------------------------------------------------------------------
async def step_listen_notify(conn):
    listener = await connect()
    got = asyncio.Queue()

    def on_notify(c, pid, channel, payload):
        got.put_nowait((channel, payload))

    await listener.add_listener(CHANNEL, on_notify)
    payload = "hello from asyncpg ✓ " + SUFFIX
    await conn.execute("select pg_notify($1, $2)", CHANNEL, payload)
    check(await asyncio.wait_for(got.get(), 10) == (CHANNEL, payload), "notification")

    async with conn.transaction():
        for i in range(3):
            await conn.execute(f"notify {q(CHANNEL)}, 'tx-{i}'")
    try:
        async with conn.transaction():
            await conn.execute(f"notify {q(CHANNEL)}, 'rolled back'")
            raise KeyError()
    except KeyError:
        pass
    await conn.execute(f"notify {q(CHANNEL)}, 'last'")
    seen = [(await asyncio.wait_for(got.get(), 10))[1] for _ in range(4)]
    check(seen == ["tx-0", "tx-1", "tx-2", "last"], f"transactional notifications {seen}")

    # Arriving while the listener is busy with queries.
    await conn.execute(f"notify {q(CHANNEL)}, 'during queries'")
    for _ in range(20):
        await listener.fetchval("select 1")
    check(await asyncio.wait_for(got.get(), 10) == (CHANNEL, "during queries"), "notification during queries")

    await listener.remove_listener(CHANNEL, on_notify)
    await conn.execute(f"notify {q(CHANNEL)}, 'after unlisten'")
    await listener.fetchval("select 1")
    check(got.empty(), "notification after remove_listener")
    await listener.close()
    ok("LISTEN/NOTIFY between two connections (add_listener)")


# 8 ------------------------------------------------------------------------
N_BIG = 200000


async def step_large_result(conn):
    want = tuple(await conn.fetchrow(
        "select count(*), sum(g), md5(string_agg(g::text || ':row-' || g, ',' order by g)) "
        "from generate_series(1, $1::int) g", N_BIG))
    check(want[:2] == (N_BIG, N_BIG * (N_BIG + 1) // 2), f"server totals {want}")

    class Digest:
        def __init__(self):
            self.h, self.n, self.total = hashlib.md5(), 0, 0

        def add(self, g, label):
            if self.n:
                self.h.update(b",")
            self.h.update(f"{g}:{label}".encode())
            self.n += 1
            self.total += g

        def value(self):
            return (self.n, self.total, self.h.hexdigest())

    query = "select g, 'row-' || g from generate_series(1, $1::int) g order by g"
    d = Digest()
    async with conn.transaction():  # cursors need a transaction
        async for r in conn.cursor(query, N_BIG, prefetch=5000):
            d.add(r[0], r[1])
    check(d.value() == want, f"cursor iteration {d.value()} vs {want}")

    d = Digest()
    async with conn.transaction():
        cur = await conn.cursor(query, N_BIG)
        while rows := await cur.fetch(7777):
            for r in rows:
                d.add(r[0], r[1])
    check(d.value() == want, f"cursor fetch {d.value()} vs {want}")

    d = Digest()
    for r in await conn.fetch(query, N_BIG):
        d.add(r[0], r[1])
    check(d.value() == want, f"fetch all {d.value()} vs {want}")
    ok(f"large result ({N_BIG} rows): cursor prefetch, cursor fetch, fetch all; checksums match")


# 9 ------------------------------------------------------------------------
async def step_notices(conn):
    msgs = []

    def on_log(c, m):
        msgs.append((m.severity, m.sqlstate, m.message))

    async def have(n):
        return len(msgs) >= n

    conn.add_log_listener(on_log)
    await conn.execute("do $$ begin raise notice 'hello %', 42; end $$")
    await wait_until(lambda: have(1), 5, "notice")
    check(msgs == [("NOTICE", "00000", "hello 42")], f"notices {msgs}")
    msgs.clear()
    await conn.execute("create or replace function pg_temp.noisy(x int) returns int language plpgsql as "
                       "$$ begin raise notice 'row %', x; return x; end $$")
    rows = await conn.fetch("select pg_temp.noisy(g) from generate_series(1, $1::int) g", 3)
    check([r[0] for r in rows] == [1, 2, 3], "noisy rows")
    await conn.execute("do $$ begin raise warning 'careful'; end $$")
    await wait_until(lambda: have(4), 5, "notices")
    check([m[2] for m in msgs] == ["row 1", "row 2", "row 3", "careful"] and msgs[3][0] == "WARNING",
          f"notices {msgs}")
    conn.remove_log_listener(on_log)
    ok("NoticeResponse surfaced via add_log_listener (notice, interleaved with rows, warning)")


# 10 -----------------------------------------------------------------------
async def step_parameter_status(conn):
    s = conn.get_settings()
    check(s.client_encoding == "UTF8" and s.standard_conforming_strings == "on", "startup parameters")
    check(conn.get_server_version().major >= 15, f"server version {conn.get_server_version()}")
    await conn.execute("set application_name = 'asyncpg-scenario'")
    check(conn.get_settings().application_name == "asyncpg-scenario",
          f"ParameterStatus application_name {conn.get_settings().application_name}")
    check(await conn.fetchval("show application_name") == "asyncpg-scenario", "SHOW application_name")
    await conn.execute("set timezone = 'Asia/Tokyo'")
    check(conn.get_settings().TimeZone == "Asia/Tokyo", f"TimeZone {conn.get_settings().TimeZone}")
    await conn.execute("reset timezone")

    c2 = await connect(server_settings={"application_name": "from-startup", "search_path": "public"})
    check(c2.get_settings().application_name == "from-startup", "application_name from the startup packet")
    check(await c2.fetchval("show search_path") == "public", "search_path from the startup packet")
    await c2.close()
    ok("ParameterStatus: application_name, TimeZone, startup parameters")


# 11 -----------------------------------------------------------------------
async def step_pool():
    pool = await asyncpg.create_pool(
        host=os.environ["PGHOST"], port=int(os.environ["PGPORT"]), user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"], database=os.environ["PGDATABASE"], ssl=SSLMODE,
        min_size=2, max_size=3)
    try:
        async with pool.acquire() as c:
            pid = await c.fetchval("select pg_backend_pid()")
            await c.execute("set application_name = 'pooled'")
        # Release ran the reset query (CLOSE ALL; UNLISTEN *; RESET ALL ...).
        async with pool.acquire() as c:
            if await c.fetchval("select pg_backend_pid()") == pid:
                check(await c.fetchval("show application_name") != "pooled", "pool reset")
        results = await asyncio.gather(*(pool.fetchval("select $1::int * 2", i) for i in range(30)))
        check(results == [i * 2 for i in range(30)], "concurrent pool queries")
    finally:
        await asyncio.wait_for(pool.close(), 10)
    ok("connection pool: acquire, reset on release, concurrent queries")


async def cleanup():
    try:
        c = await connect()
        await c.execute(f"drop table if exists {q(T)}, {q(TC)}; drop type if exists {q(TYPE)}")
        await c.close()
    except Exception as e:  # noqa: BLE001 - best effort
        print(f"warning: cleanup failed: {e}", file=sys.stderr)


async def main():
    steps = [step_connect, step_types, step_prepared, step_transactions, step_errors, step_copy, step_cancel,
             step_listen_notify, step_large_result, step_notices, step_parameter_status]
    current = "connect"
    try:
        conn = await connect()
        for fn in steps:
            current = fn.__name__.removeprefix("step_")
            await fn(conn)
        current = "pool"
        await step_pool()
        current = "drop tables"
        await conn.execute(f"drop table {q(T)}, {q(TC)}; drop type {q(TYPE)}")
        await conn.close()
    except Exception as e:  # noqa: BLE001 - report any failure as the scenario's
        traceback.print_exc()
        print(f"FAILED: asyncpg step '{current}': {type(e).__name__}: {e}", file=sys.stderr)
        await cleanup()
        return 1
    print("asyncpg scenario passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
