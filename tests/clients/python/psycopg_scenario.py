"""psycopg 3 through Sluice: queries, types, prepared statements, pipeline
mode, transactions, errors, COPY, cancel, LISTEN/NOTIFY, notices, large
results. Reads the libpq environment (PGHOST, PGPORT, ...)."""
import os
import sys
import threading
import time
import uuid
from decimal import Decimal

import psycopg
from psycopg import errors, sql

SSL = os.environ.get("SCENARIO_SSLMODE", "disable")
T = f"psy_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def ok(step):
    print(f"ok: {step}", flush=True)


def connect(**kw):
    return psycopg.connect(sslmode=SSL, **kw)


def expect_sqlstate(conn, query, code):
    try:
        conn.execute(query)
    except psycopg.Error as e:
        assert e.sqlstate == code, f"{query!r}: expected {code}, got {e.sqlstate} {e}"
        return e
    raise AssertionError(f"{query!r} did not fail")


def main():
    conn = connect(autocommit=True)
    t = sql.Identifier(T)

    row = conn.execute(
        "select 42::int, 'héllo'::text, 1.5::numeric, true, null::int, '\\x0102'::bytea,"
        " '{\"a\": [1, 2]}'::jsonb, array[1,2,3], '2024-01-02 03:04:05+00'::timestamptz"
    ).fetchone()
    assert row[:6] == (42, "héllo", Decimal("1.5"), True, None, b"\x01\x02"), row
    assert row[6] == {"a": [1, 2]} and row[7] == [1, 2, 3] and row[8].year == 2024, row
    ok("types")

    # Binary results and parameters.
    with conn.cursor(binary=True) as cur:
        cur.execute("select %s::int8 * 2, %s::text", (21, "bin"))
        assert cur.fetchone() == (42, "bin")
    ok("binary format")

    # Server-side prepared statements (psycopg prepares after 5 runs; force it).
    for i in range(10):
        r = conn.execute("select %s::int + 1", (i,), prepare=True).fetchone()
        assert r == (i + 1,), r
    ok("prepared statements")

    conn.execute(sql.SQL("create table {} (id int primary key, v text)").format(t))

    # Pipeline mode: many statements before one Sync, an error in the middle.
    with conn.pipeline():
        for i in range(100):
            conn.execute(sql.SQL("insert into {} values (%s, %s)").format(t), (i, f"v{i}"))
        cur = conn.execute(sql.SQL("select count(*) from {}").format(t))
    assert cur.fetchone() == (100,)
    try:
        with conn.pipeline():
            conn.execute(sql.SQL("insert into {} values (1000, 'a')").format(t))
            conn.execute(sql.SQL("insert into {} values (1, 'dup')").format(t))
            conn.execute(sql.SQL("insert into {} values (1001, 'b')").format(t))
        raise AssertionError("pipeline error not raised")
    except errors.UniqueViolation as e:
        assert e.diag.constraint_name == f"{T}_pkey", e.diag.constraint_name
    n = conn.execute(sql.SQL("select count(*) from {} where id >= 1000").format(t)).fetchone()[0]
    assert n == 0, n  # one implicit transaction up to Sync: the error undid the first insert too
    ok("pipeline mode")

    # Transactions.
    tx = connect()
    tx.execute(sql.SQL("insert into {} values (2000, 'kept')").format(t))
    tx.commit()
    tx.execute(sql.SQL("insert into {} values (2001, 'dropped')").format(t))
    tx.rollback()
    expect_sqlstate(tx, "select 1/0", "22012")
    expect_sqlstate(tx, "select 1", "25P02")
    tx.rollback()
    with tx.transaction():
        tx.execute(sql.SQL("insert into {} values (2002, 'outer')").format(t))
        try:
            with tx.transaction():
                tx.execute(sql.SQL("insert into {} values (2002, 'dup')").format(t))
        except errors.UniqueViolation:
            pass
    tx.commit()
    ids = [r[0] for r in conn.execute(sql.SQL("select id from {} where id >= 2000 order by id").format(t))]
    assert ids == [2000, 2002], ids
    tx.close()
    ok("transactions and savepoints")

    e = expect_sqlstate(conn, "selec 1", "42601")
    e = expect_sqlstate(conn, sql.SQL("insert into {} values (1, 'x')").format(t), "23505")
    assert "(id)=(1)" in e.diag.message_detail, e.diag.message_detail
    assert conn.execute("select 1").fetchone() == (1,)
    ok("errors")

    # COPY in and out, text and binary.
    conn.execute(sql.SQL("create table {} (id int, name text)").format(sql.Identifier(T + "_c")))
    tc = sql.Identifier(T + "_c")
    with conn.cursor().copy(sql.SQL("copy {} from stdin").format(tc)) as cp:
        for i in range(10000):
            cp.write_row((i, f"name-{i}"))
    with conn.cursor().copy(sql.SQL("copy {} (id, name) from stdin (format binary)").format(tc)) as cp:
        cp.set_types(["int4", "text"])
        for i in range(10000, 12000):
            cp.write_row((i, f"bin-{i}"))
    out = bytearray()
    with conn.cursor().copy(sql.SQL("copy (select * from {} order by id) to stdout (format csv)").format(tc)) as cp:
        for chunk in cp:
            out += chunk
    lines = out.decode().splitlines()
    assert len(lines) == 12000 and lines[-1] == "11999,bin-11999", (len(lines), lines[-1:])
    try:
        with conn.cursor().copy(sql.SQL("copy {} from stdin").format(tc)) as cp:
            cp.write(b"oops\tx\n")
        raise AssertionError("bad copy accepted")
    except errors.InvalidTextRepresentation:
        pass
    assert conn.execute(sql.SQL("select count(*) from {}").format(tc)).fetchone() == (12000,)
    ok("copy")

    # Cancel.
    victim = connect(autocommit=True)
    def cancel_later():
        deadline = time.time() + 10
        while time.time() < deadline:
            n = conn.execute("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'").fetchone()[0]
            if n:
                victim.cancel_safe()
                return
            time.sleep(0.02)
    th = threading.Thread(target=cancel_later)
    th.start()
    started = time.time()
    try:
        victim.execute("select pg_sleep(30)")
        raise AssertionError("not cancelled")
    except errors.QueryCanceled:
        pass
    th.join()
    assert time.time() - started < 15
    assert victim.execute("select 2").fetchone() == (2,)
    victim.close()
    ok("cancel")

    # LISTEN / NOTIFY.
    listener = connect(autocommit=True)
    listener.execute("listen sluice_ch")
    conn.execute("notify sluice_ch, 'hello-psycopg'")
    got = None
    for n in listener.notifies(timeout=10, stop_after=1):
        got = (n.channel, n.payload)
    assert got == ("sluice_ch", "hello-psycopg"), got
    listener.close()
    ok("listen/notify")

    # Notices.
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute("do $$ begin raise notice 'hello %', 42; end $$")
    assert notices == ["hello 42"], notices
    ok("notices")

    conn.execute("set application_name = 'psycopg-scenario'")
    assert conn.info.parameter_status("application_name") == "psycopg-scenario"
    ok("parameter status")

    # A large result, streamed with a server-side cursor and in one go.
    total = 0
    count = 0
    with connect() as c2:
        with c2.cursor(name="big") as cur:
            cur.itersize = 5000
            cur.execute("select g, md5(g::text) from generate_series(1, 200000) g")
            for g, h in cur:
                total += g
                count += 1
    assert count == 200000 and total == 200000 * 200001 // 2
    rows = conn.execute("select g from generate_series(1, 200000) g").fetchall()
    assert len(rows) == 200000
    ok("large results")

    conn.execute(sql.SQL("drop table {}, {}").format(t, tc))
    conn.close()
    print("psycopg scenario passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure as the scenario's
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
