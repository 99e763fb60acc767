// node-postgres scenario: what `pg`, `pg-cursor`, `pg-query-stream` and
// `pg-copy-streams` send, checked end to end.
//
// Runs against PostgreSQL directly or through Sluice; the two must look the
// same. Reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE (pg reads them
// itself) and SCENARIO_SSLMODE (disable | require, default disable). Prints
// `ok: <step>` per passing step and exits non-zero with a message on the
// first failure.
//
// What goes over the wire:
// - query(text) without values: simple Query. With values:
//   Parse("")/Bind/Describe(portal)/Execute/Sync; parameters in text format
//   except Buffers (binary), one result format code for all columns.
// - query({name}): Parse(name) only the first time on a connection, then
//   Bind/Describe/Execute/Sync.
// - query({rows: n}) and pg-cursor / pg-query-stream: Execute with a row
//   limit followed by Flush (no Sync) until CommandComplete, then
//   Close(portal) + Sync; pg-cursor binds a named portal.
// - new Client({pipeline: true}): every query with its own Sync, written
//   without waiting for the previous answer.
// - pg-copy-streams: CopyData chunks, CopyDone, CopyFail on destroy(err).
// - cancel: a new connection carrying CancelRequest with the backend key.
'use strict';
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const tls = require('node:tls');
const { pipeline } = require('node:stream/promises');
const { Readable, Writable } = require('node:stream');
const { Client, Query } = require('pg');
const Cursor = require('pg-cursor');
const QueryStream = require('pg-query-stream');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');

const SSLMODE = process.env.SCENARIO_SSLMODE || 'disable';
const ssl = SSLMODE === 'disable' ? false : { rejectUnauthorized: false };
const SUFFIX = `${process.pid}_${crypto.randomBytes(4).toString('hex')}`;
const T = `njs_${SUFFIX}`;
const TC = `njs_${SUFFIX}_copy`;
const CHANNEL = `njs_ch_${SUFFIX}`;
const ok = (step) => console.log(`ok: ${step}`);

class ScenarioError extends Error {}

function check(cond, what) {
  if (!cond) throw new ScenarioError(typeof what === 'function' ? what() : what);
}

function qi(name) {
  return '"' + name.replace(/"/g, '""') + '"';
}

async function connect(extra = {}) {
  const c = new Client({ ssl, connectionTimeoutMillis: 10000, ...extra });
  await c.connect();
  return c;
}

async function expectCode(promise, code) {
  try {
    await promise;
  } catch (e) {
    check(e.code === code, () => `expected SQLSTATE ${code}, got ${e.code}: ${e.message}`);
    return e;
  }
  throw new ScenarioError(`statement succeeded; expected SQLSTATE ${code}`);
}

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
// A timer that does not keep the process alive.
const timer = (ms, value) => new Promise((res) => setTimeout(res, ms, value).unref());

async function waitUntil(pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new ScenarioError(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await sleep(20);
  }
}

async function one(c, text, values) {
  return (await c.query(text, values)).rows[0];
}

// 0 -------------------------------------------------------------------------
async function stepConnect(c) {
  const encrypted = c.connection.stream instanceof tls.TLSSocket;
  check(encrypted === (SSLMODE !== 'disable'), `TLS in use=${encrypted}, sslmode=${SSLMODE}`);
  // Through Sluice the database role is Sluice's own, not PGUSER.
  const r = await one(c, 'select current_user as u, current_database() as d');
  check(r.u && r.d, `current_user ${r.u}, current_database ${r.d}`);
  ok(`connect (sslmode=${SSLMODE})`);
}

// 1 -------------------------------------------------------------------------
async function stepTypes(c) {
  const r = await c.query(
    `select 42::int4 i4, 9007199254740993::int8 i8, 'héllo wörld ✓'::text t,
            12345.678901234567890::numeric n, true yes, false no,
            '2024-02-29 13:14:15.123+00'::timestamptz ts, '\\x00ff10'::bytea b, null::text nul,
            '{"a": [1, 2, {"b": null}]}'::jsonb j, array[1, 2, 3]::int4[] ia, array['x', null, 'z'] ta,
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid u, 1.5::float8 f, '1 day 02:03:04'::interval iv`
  );
  check(r.command === 'SELECT' && r.rowCount === 1, 'command tag');
  check(r.fields.map((f) => f.name).join(',') === 'i4,i8,t,n,yes,no,ts,b,nul,j,ia,ta,u,f,iv', 'field names');
  check(r.fields.every((f) => f.format === 'text'), 'simple query returns text');
  const row = r.rows[0];
  assert.deepEqual(
    [row.i4, row.i8, row.t, row.n, row.yes, row.no, row.nul, row.u, row.f],
    [42, '9007199254740993', 'héllo wörld ✓', '12345.678901234567890', true, false, null,
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1.5]
  );
  check(row.ts.toISOString() === '2024-02-29T13:14:15.123Z', `timestamptz ${row.ts.toISOString()}`);
  check(Buffer.compare(row.b, Buffer.from([0, 0xff, 0x10])) === 0, 'bytea');
  assert.deepEqual(row.j, { a: [1, 2, { b: null }] });
  assert.deepEqual(row.ia, [1, 2, 3]);
  assert.deepEqual(row.ta, ['x', null, 'z']);
  check(row.iv.days === 1 && row.iv.hours === 2 && row.iv.minutes === 3 && row.iv.seconds === 4, 'interval');

  // Several statements in one simple Query: one result each.
  const multi = await c.query("select 1 as a; select 'two' as b, 3 as c; select * from generate_series(1, 3) g");
  check(Array.isArray(multi) && multi.length === 3, 'three results');
  assert.deepEqual(multi.map((m) => m.rows), [[{ a: 1 }], [{ b: 'two', c: 3 }], [{ g: 1 }, { g: 2 }, { g: 3 }]]);
  const empty = await c.query('');
  check(empty.rows.length === 0 && empty.command === null, 'empty query');
  ok('simple query with many types');
}

// 2 -------------------------------------------------------------------------
async function stepParameters(c) {
  const bytes = Buffer.from([0, 1, 0xfe, 0xff]);
  const ts = new Date('1999-12-31T23:59:59.999Z');
  const values = [7, '-9223372036854775808', "ünïcødé 'quoted' \\ back", '-0.000123', true, ts, bytes, null,
    [1, null, 3], ['a', 'b c', ''], { k: ['v', 1] }];
  const text = 'select $1::int4 a, $2::int8 b, $3::text c, $4::numeric d, $5::bool e, $6::timestamptz f, ' +
    '$7::bytea g, $8::text h, $9::int4[] i, $10::text[] j, $11::jsonb k';
  const checkRow = (r, what) => {
    assert.deepEqual([r.a, r.b, r.c, r.d, r.e, r.h, r.i, r.j, r.k],
      [7, '-9223372036854775808', values[2], '-0.000123', true, null, [1, null, 3], ['a', 'b c', ''], { k: ['v', 1] }],
      what);
    check(r.f.getTime() === ts.getTime(), `${what}: timestamptz ${r.f}`);
    check(Buffer.compare(r.g, bytes) === 0, `${what}: bytea`);
  };
  // Unnamed statement, text results (the bytea parameter goes in binary).
  checkRow(await one(c, text, values), 'unnamed statement');
  ok('parameters (unnamed statement, text results, binary bytea parameter)');

  // Binary results for every column. pg 8 decodes every DataRow field as a
  // UTF-8 string before its binary parser sees it, so only values whose
  // binary encoding is valid UTF-8 come back intact: pick those.
  const bin = await c.query({
    text: 'select $1::int4 a, $2::int8 b, $3::text c, $4::float8 d, $5::bool e, $6::numeric f, ' +
      "$7::int4[] g, null::text h, array['p', 'q']::text[] i",
    values: [7, '9007199254740993', 'bin ✓', 2.25, false, '12345.678', [4, 5]],
    binary: true,
  });
  check(bin.fields.every((f) => f.format === 'binary'), 'binary result format');
  const b = bin.rows[0];
  assert.deepEqual([b.a, b.c, b.d, b.e, b.f, b.g, b.h, b.i], [7, 'bin ✓', 2.25, false, 12345.678, [4, 5], null, ['p', 'q']]);
  check(String(b.b) === '9007199254740993', `binary int8 ${b.b}`);
  ok('binary result format');

  // A named prepared statement: Parse once, Bind/Execute ten times.
  const name = `njs_named_${SUFFIX}`;
  for (let i = 0; i < 10; i++) {
    const r = await one(c, { name, text: "select $1::int * 2 as v, $2::text || '!' as s", values: [i, `x${i}`] });
    assert.deepEqual(r, { v: i * 2, s: `x${i}!` });
  }
  const ps = await c.query('select name, statement from pg_prepared_statements where name = $1', [name]);
  check(ps.rows.length === 1 && ps.rows[0].statement.includes('$1::int * 2'), 'named statement on the server');
  // The same name used on a binary query.
  for (let i = 0; i < 3; i++) {
    const r = await c.query({ name: `${name}_bin`, text: 'select $1::int8 + 1 as v', values: [i], binary: true });
    check(String(r.rows[0].v) === String(i + 1), 'named binary');
  }
  // SQL-level PREPARE / EXECUTE / DEALLOCATE.
  await c.query('prepare sql_level (int) as select $1 * 10 as v');
  for (let i = 0; i < 3; i++) check((await one(c, `execute sql_level(${i})`)).v === i * 10, 'EXECUTE');
  await c.query('deallocate sql_level');
  await expectCode(c.query('execute sql_level(1)'), '26000');
  ok('named prepared statements reused (Parse once), SQL PREPARE');

  // rows: n — Execute with a row limit + Flush, PortalSuspended, repeated.
  const paged = await c.query({ text: 'select g from generate_series(1, $1::int) g', values: [1234], rows: 100 });
  check(paged.rows.length === 1234 && paged.rows[1233].g === 1234, `paged query ${paged.rows.length}`);
  ok('row-limited Execute with Flush (rows option)');
}

async function stepPipeline(c) {
  await c.query(`create table ${qi(T)} (id int primary key, v text, n numeric)`);
  // pg's pipeline mode: queries written back to back, one Sync each.
  const p = await connect({ pipeline: true });
  try {
    const inserts = [];
    for (let i = 0; i < 300; i++) {
      inserts.push(p.query(`insert into ${qi(T)} values ($1, $2, $3)`, [i, `v${i}`, i / 4]));
    }
    const mid = p.query('select count(*)::int n from ' + qi(T));
    const bad = p.query(`insert into ${qi(T)} values (1, 'duplicate', 0)`).then(
      () => null,
      (e) => e
    );
    const after = p.query({ name: 'after', text: 'select $1::text as v', values: ['after error'] });
    const badDiv = p.query('select 1/0').then(() => null, (e) => e);
    const last = p.query('select count(*)::int n from ' + qi(T));
    const results = await Promise.all(inserts);
    check(results.every((r) => r.rowCount === 1), 'pipelined inserts');
    check((await mid).rows[0].n === 300, 'count inside pipeline');
    const e = await bad;
    check(e && e.code === '23505' && e.constraint === `${T}_pkey`, `pipelined error: ${e && e.code}`);
    check((await after).rows[0].v === 'after error', 'query after the error (own Sync)');
    check((await badDiv)?.code === '22012', 'second error');
    check((await last).rows[0].n === 300, 'count after errors');
    // A transaction inside the pipeline.
    const tx = [p.query('begin'), p.query(`insert into ${qi(T)} values (5000, 'tx', 0)`), p.query('select 1/0'),
      p.query('select 1'), p.query('rollback')].map((q) => q.then(() => 'ok', (err) => err.code));
    assert.deepEqual(await Promise.all(tx), ['ok', 'ok', '22012', '25P02', 'ok']);
    check((await one(p, `select count(*)::int n from ${qi(T)} where id = 5000`)).n === 0, 'pipelined rollback');
  } finally {
    await p.end();
  }
  ok('pipeline mode: 300 queries in flight, errors isolated per Sync, transaction');
}

// 3 -------------------------------------------------------------------------
async function stepTransactions(c) {
  const t = qi(T);
  const tx = await connect();
  try {
    await tx.query('begin');
    await tx.query(`insert into ${t} values (3000, 'kept', 0)`);
    await tx.query('commit');
    await tx.query('begin');
    await tx.query(`insert into ${t} values (3001, 'dropped', 0)`);
    await tx.query('rollback');
    const ids = (await c.query(`select id from ${t} where id in (3000, 3001)`)).rows.map((r) => r.id);
    assert.deepEqual(ids, [3000], 'commit persists, rollback discards');

    await tx.query('begin');
    await tx.query(`insert into ${t} values (3002, 'lost', 0)`);
    await expectCode(tx.query('select 1/0'), '22012');
    const e = await expectCode(tx.query('select 1'), '25P02');
    check(/aborted/.test(e.message), e.message);
    await expectCode(tx.query('select $1::int', [1]), '25P02');
    await tx.query('rollback');
    check((await one(tx, "select 'recovered' v")).v === 'recovered', 'usable after rollback');
    check((await one(c, `select count(*)::int n from ${t} where id = 3002`)).n === 0, 'failed tx discarded');

    await tx.query('begin');
    await tx.query(`insert into ${t} values (3003, 'outer', 0)`);
    await tx.query('savepoint s1');
    await expectCode(tx.query(`insert into ${t} values (3003, 'dup', 0)`), '23505');
    await expectCode(tx.query('select 1'), '25P02');
    await tx.query('rollback to savepoint s1');
    await tx.query(`insert into ${t} values (3004, 'after savepoint', 0)`);
    await tx.query('savepoint s2');
    await tx.query(`insert into ${t} values (3005, 'released', 0)`);
    await tx.query('release savepoint s2');
    await tx.query('commit');
    const ids2 = (await c.query(`select id from ${t} where id >= 3000 order by id`)).rows.map((r) => r.id);
    assert.deepEqual(ids2, [3000, 3003, 3004, 3005], 'savepoints');

    await tx.query('begin read only');
    await expectCode(tx.query(`insert into ${t} values (3006, 'ro', 0)`), '25006');
    await tx.query('rollback');
  } finally {
    await tx.end();
  }
  ok('transactions: commit, rollback, failed state 25P02, savepoints');
}

// 4 -------------------------------------------------------------------------
async function stepErrors(c) {
  let e = await expectCode(c.query('selec 1'), '42601');
  check(e.severity === 'ERROR' && e.position === '1', `syntax error fields ${e.severity} ${e.position}`);
  await expectCode(c.query('selec $1', [1]), '42601');
  e = await expectCode(c.query('select * from no_such_table_here'), '42P01');
  check(e.position === '15', `position ${e.position}`);
  await expectCode(c.query('select $1::int', ['not a number']), '22P02');
  e = await expectCode(c.query(`insert into ${qi(T)} values (1, 'x', 0)`), '23505');
  check(e.constraint === `${T}_pkey`, `constraint ${e.constraint}`);
  check(e.table === T && e.schema === 'public', `table ${e.schema}.${e.table}`);
  check(e.detail === 'Key (id)=(1) already exists.', `detail ${e.detail}`);
  e = await expectCode(c.query(`insert into ${qi(T)} values ($1, 'x', 0)`, [1]), '23505');
  check(e.constraint === `${T}_pkey`, 'constraint (extended protocol)');
  e = await expectCode(
    c.query("do $$ begin raise exception using errcode = 'P0001', message = 'custom', detail = 'the detail', hint = 'the hint'; end $$"),
    'P0001'
  );
  assert.deepEqual([e.message, e.detail, e.hint], ['custom', 'the detail', 'the hint']);
  // An error in a multi-statement simple query stops the rest of it.
  await expectCode(c.query(`insert into ${qi(T)} values (4000, 'a', 0); select 1/0; insert into ${qi(T)} values (4001, 'b', 0)`), '22012');
  check((await one(c, `select count(*)::int n from ${qi(T)} where id >= 4000`)).n === 0, 'implicit transaction');
  // An error after some rows were sent.
  await expectCode(c.query('select 1 / (3 - g) from generate_series(1, 5) g'), '22012');
  check((await one(c, "select 'still usable' v")).v === 'still usable', 'usable after errors');
  ok('errors: 42601, 42P01, 22P02, 23505 with diagnostics; session usable');
}

// 5 -------------------------------------------------------------------------
const N_COPY = 10000;

function collect() {
  const chunks = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  return { sink, text: () => Buffer.concat(chunks).toString('utf8'), count: () => chunks.length };
}

async function stepCopy(c) {
  const tc = qi(TC);
  await c.query(`create table ${tc} (id int primary key, name text, amount numeric)`);

  function* textRows() {
    for (let i = 0; i < N_COPY; i++) yield `${i}\tname\\t${i}\t${i / 100}\n`;
  }
  await pipeline(Readable.from(textRows()), c.query(copyFrom(`copy ${tc} from stdin`)));
  function* csvChunks() {
    let buf = 'id,name,amount\n';
    for (let i = N_COPY; i < 2 * N_COPY; i++) {
      buf += `${i},"csv, ""${i}""\nline2",${i}.5\n`;
      if (buf.length > 50000) {
        yield buf;
        buf = '';
      }
    }
    yield buf;
  }
  const cf = c.query(copyFrom(`copy ${tc} from stdin (format csv, header)`));
  await pipeline(Readable.from(csvChunks()), cf);
  check(cf.rowCount === N_COPY, `csv rowCount ${cf.rowCount}`);
  const s = await one(c, `select count(*)::int n, sum(id)::int8 s from ${tc}`);
  check(s.n === 2 * N_COPY && Number(s.s) === (2 * N_COPY * (2 * N_COPY - 1)) / 2, `copy in totals ${JSON.stringify(s)}`);
  check((await one(c, `select name from ${tc} where id = 7`)).name === 'name\t7', 'text escape');
  check((await one(c, `select name from ${tc} where id = $1`, [N_COPY + 3])).name === `csv, "${N_COPY + 3}"\nline2`, 'csv quoting');
  ok(`COPY FROM STDIN: text, csv (${2 * N_COPY} rows)`);

  let out = collect();
  await pipeline(c.query(copyTo(`copy (select id, name from ${tc} where id < ${N_COPY} order by id) to stdout`)), out.sink);
  let lines = out.text().split('\n').slice(0, -1);
  check(lines.length === N_COPY && lines[7] === '7\tname\\t7', `text copy out: ${lines.length} ${lines[7]}`);
  out = collect();
  await pipeline(c.query(copyTo(`copy (select id, amount from ${tc} order by id) to stdout (format csv, header)`)), out.sink);
  lines = out.text().split('\n').slice(0, -1);
  check(lines.length === 2 * N_COPY + 1 && lines[0] === 'id,amount' && lines[lines.length - 1] === `${2 * N_COPY - 1},${2 * N_COPY - 1}.5`,
    `csv copy out: ${lines.length} ${lines[lines.length - 1]}`);
  check(lines.slice(1).reduce((acc, l) => acc + Number(l.split(',')[0]), 0) === (2 * N_COPY * (2 * N_COPY - 1)) / 2, 'csv ids');
  ok('COPY TO STDOUT: text, csv');

  // Bad data midway: 22P02, nothing loaded.
  function* badRows() {
    for (let i = 0; i < N_COPY; i++) yield i === N_COPY / 2 ? 'not-a-number\tbad\t0\n' : `${100000 + i}\tmidway\t0\n`;
  }
  const e = await expectCode(pipeline(Readable.from(badRows()), c.query(copyFrom(`copy ${tc} from stdin`))), '22P02');
  check(/not-a-number/.test(e.message), e.message);
  // The client gives up: destroy(err) sends CopyFail, the server answers 57014.
  const aborted = c.query(copyFrom(`copy ${tc} from stdin`));
  const done = new Promise((resolve) => aborted.on('error', resolve).on('finish', () => resolve(null)));
  aborted.write('200000\tnever\t0\n');
  aborted.destroy(new Error('client gave up'));
  const abortErr = await done;
  check(abortErr !== null, 'aborted copy reported an error');
  check((await one(c, `select count(*)::int n from ${tc}`)).n === 2 * N_COPY, 'failed COPYs loaded nothing');
  check((await one(c, "select 'after copy' v")).v === 'after copy', 'usable after failed COPY');
  check(c.getTransactionStatus() === 'I', `transaction status ${c.getTransactionStatus()}`);
  ok('COPY failing midway (22P02), CopyFail; session usable');
}

// 6 -------------------------------------------------------------------------
async function stepCancel(c) {
  const victim = await connect();
  try {
    const pid = (await one(victim, 'select pg_backend_pid() as pid')).pid;
    const q = new Query('select pg_sleep(30)');
    const finished = new Promise((resolve) => {
      q.on('error', (err) => resolve(err));
      q.on('end', () => resolve(null));
    });
    victim.query(q);
    await waitUntil(async () => (await one(c,
      "select count(*)::int n from pg_stat_activity where pid = $1 and state = 'active' and query like 'select pg_sleep%'",
      [pid])).n === 1, 10000, 'pg_sleep to start');
    const t0 = Date.now();
    // pg's cancel: a new connection sends CancelRequest with the victim's key.
    // (Client#cancel reads the deprecated activeQuery getter; silence that.)
    const noDep = process.noDeprecation;
    process.noDeprecation = true;
    new Client({ ssl }).cancel(victim, q);
    process.noDeprecation = noDep;
    const err = await Promise.race([finished, timer(10000, 'timeout')]);
    check(err !== 'timeout', 'pg_sleep still running 10s after cancel');
    check(err && err.code === '57014', `expected 57014, got ${err && err.code}`);
    check(Date.now() - t0 < 5000, `cancel took ${Date.now() - t0}ms`);
    check((await one(victim, 'select pg_backend_pid() as pid')).pid === pid, 'same session after cancel');
  } finally {
    await victim.end();
  }
  ok('cancel: CancelRequest gives 57014, session usable');
}

// 7 -------------------------------------------------------------------------
async function stepListenNotify(c) {
  const listener = await connect();
  try {
    const queue = [];
    listener.on('notification', (n) => queue.push([n.channel, n.payload]));
    await listener.query(`listen ${qi(CHANNEL)}`);
    const payload = `hello from node ✓ ${SUFFIX}`;
    await c.query('select pg_notify($1, $2)', [CHANNEL, payload]);
    await waitUntil(() => queue.length >= 1, 10000, 'notification');
    assert.deepEqual(queue.shift(), [CHANNEL, payload]);

    await c.query('begin');
    for (let i = 0; i < 3; i++) await c.query(`notify ${qi(CHANNEL)}, 'tx-${i}'`);
    await c.query('commit');
    await c.query('begin');
    await c.query(`notify ${qi(CHANNEL)}, 'rolled back'`);
    await c.query('rollback');
    await c.query(`notify ${qi(CHANNEL)}, 'last'`);
    await waitUntil(() => queue.length >= 4, 10000, 'four notifications');
    assert.deepEqual(queue.splice(0).map((x) => x[1]), ['tx-0', 'tx-1', 'tx-2', 'last']);

    // Arriving while the listener runs queries.
    await c.query(`notify ${qi(CHANNEL)}, 'during queries'`);
    await waitUntil(async () => (await listener.query('select 1')) && queue.length >= 1, 10000, 'notification during queries');
    assert.deepEqual(queue.shift(), [CHANNEL, 'during queries']);
    await listener.query(`unlisten ${qi(CHANNEL)}`);
  } finally {
    await listener.end();
  }
  ok('LISTEN/NOTIFY between two connections');
}

// 8 -------------------------------------------------------------------------
const N_BIG = 200000;

class Digest {
  constructor() {
    this.h = crypto.createHash('md5');
    this.n = 0;
    this.total = 0;
  }
  add(g, label) {
    if (this.n) this.h.update(',');
    this.h.update(`${g}:${label}`);
    this.n += 1;
    this.total += g;
  }
  value() {
    return [this.n, this.total, this.h.digest('hex')];
  }
}

async function stepLargeResult(c) {
  const w = await one(c,
    "select count(*)::int n, sum(g)::int8 s, md5(string_agg(g::text || ':row-' || g, ',' order by g)) h from generate_series(1, $1::int) g",
    [N_BIG]);
  const want = [w.n, Number(w.s), w.h];
  check(want[0] === N_BIG && want[1] === (N_BIG * (N_BIG + 1)) / 2, `server totals ${want}`);
  const text = "select g, 'row-' || g as label from generate_series(1, $1::int) g order by g";

  let d = new Digest();
  const stream = c.query(new QueryStream(text, [N_BIG], { batchSize: 5000 }));
  for await (const r of stream) d.add(r.g, r.label);
  assert.deepEqual(d.value(), want, 'pg-query-stream');

  d = new Digest();
  const cursor = c.query(new Cursor(text, [N_BIG]));
  for (;;) {
    const rows = await cursor.read(7777);
    if (!rows.length) break;
    for (const r of rows) d.add(r.g, r.label);
  }
  await cursor.close();
  assert.deepEqual(d.value(), want, 'pg-cursor');

  // A cursor closed early leaves the session clean.
  const early = c.query(new Cursor('select g from generate_series(1, 100000) g'));
  check((await early.read(10)).length === 10, 'early cursor');
  await early.close();

  d = new Digest();
  for (const r of (await c.query(text, [N_BIG])).rows) d.add(r.g, r.label);
  assert.deepEqual(d.value(), want, 'buffered query');
  ok(`large result (${N_BIG} rows): pg-query-stream, pg-cursor, buffered; checksums match`);
}

// 9 -------------------------------------------------------------------------
async function stepNotices(c) {
  const notices = [];
  const handler = (n) => notices.push([n.severity, n.code, n.message]);
  c.on('notice', handler);
  await c.query("do $$ begin raise notice 'hello %', 42; end $$");
  await waitUntil(() => notices.length >= 1, 5000, 'notice');
  assert.deepEqual(notices.splice(0), [['NOTICE', '00000', 'hello 42']]);
  await c.query("create or replace function pg_temp.noisy(x int) returns int language plpgsql as $$ begin raise notice 'row %', x; return x; end $$");
  const r = await c.query('select pg_temp.noisy(g) v from generate_series(1, $1::int) g', [3]);
  check(r.rows.map((x) => x.v).join() === '1,2,3', 'noisy rows');
  await c.query("do $$ begin raise warning 'careful'; end $$");
  await waitUntil(() => notices.length >= 4, 5000, 'notices');
  assert.deepEqual(notices.map((n) => n[2]), ['row 1', 'row 2', 'row 3', 'careful']);
  check(notices[3][0] === 'WARNING', 'warning severity');
  c.off('notice', handler);
  ok('NoticeResponse surfaced (notice, interleaved with rows, warning)');
}

// 10 ------------------------------------------------------------------------
async function stepParameterStatus(c) {
  const seen = {};
  c.connection.on('parameterStatus', (m) => {
    seen[m.parameterName] = m.parameterValue;
  });
  await c.query("set application_name = 'node-scenario'");
  check(seen.application_name === 'node-scenario', `ParameterStatus application_name ${JSON.stringify(seen)}`);
  check((await one(c, 'show application_name')).application_name === 'node-scenario', 'SHOW application_name');
  await c.query("set timezone = 'Asia/Tokyo'");
  check(seen.TimeZone === 'Asia/Tokyo', `TimeZone ${seen.TimeZone}`);
  await c.query('reset timezone');

  // Startup parameters: application_name and options.
  const startup = {};
  const c2 = new Client({ ssl, application_name: 'from-startup', options: '-c search_path=public' });
  c2.connection.on('parameterStatus', (m) => {
    startup[m.parameterName] = m.parameterValue;
  });
  await c2.connect();
  try {
    check(startup.application_name === 'from-startup', `startup application_name ${startup.application_name}`);
    check(startup.client_encoding === 'UTF8' && startup.standard_conforming_strings === 'on', 'startup parameters');
    check((await one(c2, 'show search_path')).search_path === 'public', 'options search_path');
  } finally {
    await c2.end();
  }
  ok('ParameterStatus: application_name, TimeZone, startup parameters');
}

async function cleanup() {
  try {
    const c = await connect();
    await c.query(`drop table if exists ${qi(T)}, ${qi(TC)}`);
    await c.end();
  } catch (e) {
    console.error(`warning: cleanup failed: ${e.message}`);
  }
}

async function main() {
  const steps = [stepConnect, stepTypes, stepParameters, stepPipeline, stepTransactions, stepErrors, stepCopy,
    stepCancel, stepListenNotify, stepLargeResult, stepNotices, stepParameterStatus];
  let current = 'connect';
  try {
    const c = await connect();
    for (const fn of steps) {
      current = fn.name.replace(/^step/, '');
      await fn(c);
    }
    current = 'drop tables';
    await c.query(`drop table ${qi(T)}, ${qi(TC)}`);
    await c.end();
  } catch (e) {
    console.error(e.stack || e);
    console.error(`FAILED: node-postgres step '${current}': ${e.code ? `SQLSTATE ${e.code}: ` : ''}${e.message}`);
    await cleanup();
    process.exit(1);
  }
  console.log('node-postgres scenario passed');
}

main();
