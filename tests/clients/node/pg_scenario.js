// node-postgres through Sluice: queries, types, prepared statements,
// transactions, errors, COPY, cancel, LISTEN/NOTIFY, notices, streaming.
// Reads the libpq environment (PGHOST, PGPORT, ...).
'use strict';
const assert = require('node:assert/strict');
const { pipeline } = require('node:stream/promises');
const { Readable, Writable } = require('node:stream');
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const QueryStream = require('pg-query-stream');

const ssl = process.env.SCENARIO_SSLMODE === 'require' ? { rejectUnauthorized: false } : false;
const T = `njs_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
const ok = (step) => console.log(`ok: ${step}`);

async function connect() {
  const c = new Client({ ssl });
  await c.connect();
  return c;
}

async function expectCode(p, code) {
  try {
    await p;
  } catch (e) {
    assert.equal(e.code, code, `${e.message}`);
    return e;
  }
  throw new Error(`expected SQLSTATE ${code}`);
}

async function main() {
  const c = await connect();

  const r = await c.query(
    "select 42::int4 a, 'héllo'::text b, 1.5::numeric c, true d, null::int e, '\\x0102'::bytea f, array[1,2,3] g, '{\"k\":1}'::jsonb j"
  );
  const row = r.rows[0];
  assert.deepEqual([row.a, row.b, row.c, row.d, row.e], [42, 'héllo', '1.5', true, null]);
  assert.deepEqual([...row.f], [1, 2]);
  assert.deepEqual(row.g, [1, 2, 3]);
  assert.deepEqual(row.j, { k: 1 });
  ok('types');

  for (let i = 0; i < 10; i++) {
    const p = await c.query({ name: 'double', text: 'select $1::int * 2 as v', values: [i] });
    assert.equal(p.rows[0].v, i * 2);
  }
  const unnamed = await c.query('select $1::text || $2::text as v', ['a', 'b']);
  assert.equal(unnamed.rows[0].v, 'ab');
  ok('prepared statements');

  await c.query(`create table ${T} (id int primary key, v text)`);
  await c.query('begin');
  await c.query(`insert into ${T} values (1, 'kept')`);
  await c.query('commit');
  await c.query('begin');
  await c.query(`insert into ${T} values (2, 'dropped')`);
  await c.query('rollback');
  await c.query('begin');
  await expectCode(c.query('select 1/0'), '22012');
  await expectCode(c.query('select 1'), '25P02');
  await c.query('rollback');
  await c.query('begin');
  await c.query('savepoint s');
  await expectCode(c.query(`insert into ${T} values (1, 'dup')`), '23505');
  await c.query('rollback to savepoint s');
  await c.query(`insert into ${T} values (3, 'after savepoint')`);
  await c.query('commit');
  const ids = (await c.query(`select id from ${T} order by id`)).rows.map((x) => x.id);
  assert.deepEqual(ids, [1, 3]);
  ok('transactions');

  const dup = await expectCode(c.query(`insert into ${T} values (1, 'x')`), '23505');
  assert.equal(dup.constraint, `${T}_pkey`);
  assert.match(dup.detail, /\(id\)=\(1\)/);
  await expectCode(c.query('selec 1'), '42601');
  assert.equal((await c.query('select 1 as one')).rows[0].one, 1);
  ok('errors');

  await c.query(`create table ${T}_c (id int, name text)`);
  const lines = [];
  for (let i = 0; i < 10000; i++) lines.push(`${i}\tname-${i}\n`);
  await pipeline(Readable.from(lines), c.query(copyFrom(`copy ${T}_c from stdin`)));
  let out = '';
  await pipeline(
    c.query(copyTo(`copy (select * from ${T}_c order by id) to stdout with (format csv)`)),
    new Writable({ write(chunk, _enc, cb) { out += chunk; cb(); } })
  );
  const outLines = out.trim().split('\n');
  assert.equal(outLines.length, 10000);
  assert.equal(outLines[9999], '9999,name-9999');
  await expectCode(pipeline(Readable.from(['bad\tx\n']), c.query(copyFrom(`copy ${T}_c from stdin`))), '22P02');
  assert.equal((await c.query(`select count(*)::int n from ${T}_c`)).rows[0].n, 10000);
  ok('copy');

  // Cancel through a second connection, as pg does with the backend key.
  const victim = await connect();
  const sleeping = victim.query('select pg_sleep(30)');
  const deadline = Date.now() + 10000;
  for (;;) {
    const n = (await c.query("select count(*)::int n from pg_stat_activity where query = 'select pg_sleep(30)'")).rows[0].n;
    if (n) break;
    assert.ok(Date.now() < deadline, 'sleep never started');
    await new Promise((res) => setTimeout(res, 20));
  }
  // pg's own cancel: a new connection carrying the victim's backend key.
  const canceller = new Client({ ssl });
  canceller.cancel(victim, victim.activeQuery);
  await expectCode(sleeping, '57014');
  assert.equal((await victim.query('select 2 as v')).rows[0].v, 2);
  await victim.end();
  ok('cancel');

  const listener = await connect();
  const got = new Promise((resolve) => listener.on('notification', (n) => resolve([n.channel, n.payload])));
  await listener.query('listen sluice_ch');
  await c.query("notify sluice_ch, 'hello-node'");
  assert.deepEqual(await got, ['sluice_ch', 'hello-node']);
  await listener.end();
  ok('listen/notify');

  const notice = new Promise((resolve) => c.once('notice', (n) => resolve(n.message)));
  await c.query("do $$ begin raise notice 'hello %', 42; end $$");
  assert.equal(await notice, 'hello 42');
  ok('notices');

  await c.query("set application_name = 'node-scenario'");
  assert.equal((await c.query('show application_name')).rows[0].application_name, 'node-scenario');
  ok('parameter status');

  let count = 0;
  let total = 0;
  const stream = c.query(new QueryStream('select g from generate_series(1, 200000) g', [], { batchSize: 5000 }));
  for await (const rowx of stream) {
    count += 1;
    total += rowx.g;
  }
  assert.equal(count, 200000);
  assert.equal(total, (200000 * 200001) / 2);
  const all = await c.query('select g, md5(g::text) from generate_series(1, 200000) g');
  assert.equal(all.rows.length, 200000);
  ok('large results');

  await c.query(`drop table ${T}, ${T}_c`);
  await c.end();
  console.log('node-postgres scenario passed');
}

main().catch((e) => {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
});
