"""asyncpg through Sluice (binary protocol throughout): fetch, prepared
statements, executemany, transactions, errors, COPY, cancel by timeout,
LISTEN/NOTIFY, notices, large results. Reads the libpq environment."""
import asyncio
import datetime
import os
import sys
import uuid
from decimal import Decimal

import asyncpg

SSL = os.environ.get("SCENARIO_SSLMODE", "disable")
T = f"apg_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def ok(step):
    print(f"ok: {step}", flush=True)


async def connect():
    return await asyncpg.connect(
        host=os.environ["PGHOST"],
        port=int(os.environ["PGPORT"]),
        user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"],
        database=os.environ["PGDATABASE"],
        ssl=SSL,
    )


async def main():
    conn = await connect()

    row = await conn.fetchrow(
        "select 42::int4 a, 'héllo'::text b, 1.5::numeric c, true d, null::int e, '\\x0102'::bytea f,"
        " array[1,2,3] g, '2024-01-02 03:04:05+00'::timestamptz h, 1e300::float8 i, '{\"k\":1}'::jsonb j"
    )
    assert (row["a"], row["b"], row["c"], row["d"], row["e"], row["f"]) == (42, "héllo", Decimal("1.5"), True, None, b"\x01\x02"), row
    assert row["g"] == [1, 2, 3] and row["h"] == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), row
    assert row["i"] == 1e300 and row["j"] == '{"k": 1}', row
    ok("binary types")

    stmt = await conn.prepare("select $1::int8 * 2, $2::text || '!'")
    for i in range(20):
        assert tuple(await stmt.fetchrow(i, "x")) == (i * 2, "x!")
    ok("prepared statements")

    await conn.execute(f"create table {T} (id int primary key, v text)")
    await conn.executemany(f"insert into {T} values ($1, $2)", [(i, f"v{i}") for i in range(500)])
    assert await conn.fetchval(f"select count(*) from {T}") == 500
    ok("executemany (pipelined Bind/Execute)")

    async with conn.transaction():
        await conn.execute(f"insert into {T} values (1000, 'kept')")
    try:
        async with conn.transaction():
            await conn.execute(f"insert into {T} values (1001, 'dropped')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("select 1/0")
    except asyncpg.DivisionByZeroError:
        pass
    try:
        await conn.execute("select 1")
        raise AssertionError("failed transaction accepted a statement")
    except asyncpg.InFailedSQLTransactionError:
        pass
    await tr.rollback()
    ids = [r[0] for r in await conn.fetch(f"select id from {T} where id >= 1000")]
    assert ids == [1000], ids
    ok("transactions")

    try:
        await conn.execute(f"insert into {T} values (1, 'dup')")
        raise AssertionError("duplicate accepted")
    except asyncpg.UniqueViolationError as e:
        assert e.sqlstate == "23505" and e.constraint_name == f"{T}_pkey", e.as_dict()
        assert "(id)=(1)" in e.detail
    try:
        await conn.execute("selec 1")
    except asyncpg.PostgresSyntaxError as e:
        assert e.sqlstate == "42601"
    assert await conn.fetchval("select 1") == 1
    ok("errors")

    await conn.execute(f"create table {T}_c (id int, name text)")
    n = await conn.copy_records_to_table(f"{T}_c", records=[(i, f"n{i}") for i in range(10000)])
    assert n == "COPY 10000", n
    chunks = []
    async def sink(data):
        chunks.append(data)
    await conn.copy_from_query(f"select * from {T}_c order by id", output=sink, format="csv")
    lines = b"".join(chunks).decode().splitlines()
    assert len(lines) == 10000 and lines[-1] == "9999,n9999", lines[-1:]
    ok("copy (binary in, csv out)")

    # Cancel: asyncpg sends a CancelRequest when the timeout fires.
    try:
        await conn.execute("select pg_sleep(30)", timeout=0.5)
        raise AssertionError("not cancelled")
    except asyncio.TimeoutError:
        pass
    assert await conn.fetchval("select 3") == 3
    ok("cancel on timeout")

    got = asyncio.get_running_loop().create_future()
    listener = await connect()
    await listener.add_listener("sluice_ch", lambda c, pid, ch, payload: got.done() or got.set_result((ch, payload)))
    await conn.execute("notify sluice_ch, 'hello-asyncpg'")
    assert await asyncio.wait_for(got, 10) == ("sluice_ch", "hello-asyncpg")
    await listener.close()
    ok("listen/notify")

    notices = []
    conn.add_log_listener(lambda c, msg: notices.append(msg.message))
    await conn.execute("do $$ begin raise notice 'hello %', 42; end $$")
    deadline = asyncio.get_running_loop().time() + 5
    while not notices and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert notices == ["hello 42"], notices
    ok("notices")

    await conn.execute("set application_name = 'asyncpg-scenario'")
    assert conn.get_settings().application_name == "asyncpg-scenario"
    ok("parameter status")

    count = 0
    total = 0
    async with conn.transaction():
        async for r in conn.cursor("select g from generate_series(1, 200000) g", prefetch=5000):
            count += 1
            total += r[0]
    assert count == 200000 and total == 200000 * 200001 // 2
    rows = await conn.fetch("select g, md5(g::text) from generate_series(1, 200000) g")
    assert len(rows) == 200000
    ok("large results")

    await conn.execute(f"drop table {T}, {T}_c")
    await conn.close()
    print("asyncpg scenario passed")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
