// pgjdbc scenario: what the PostgreSQL JDBC driver sends, checked end to end.
//
// Runs against PostgreSQL directly or through Sluice; the two must look the
// same. Reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and
// SCENARIO_SSLMODE (disable | require, default disable). Prints
// `ok: <step>` per passing step and exits non-zero with a message on the
// first failure. Compile: javac -cp /usr/share/java/postgresql.jar; run with
// the jar on the class path (tests/clients/run.sh java does both).
//
// What goes over the wire (pgjdbc 42.x, extended protocol throughout):
// - Statement: Parse("")/Bind/Describe(portal)/Execute/Sync, text results.
// - PreparedStatement: unnamed for the first prepareThreshold-1 runs, then
//   Parse("S_n") once and Bind("S_n") afterwards; with binaryTransfer the
//   driver first sends Parse/Describe(statement)/Sync to learn the result
//   types, then asks for binary results (int, float, date/time, bytea, uuid,
//   arrays of those) and sends some parameters in binary.
// - executeBatch: many Bind/Execute (Parse once) then one Sync.
// - setFetchSize with autocommit off: Execute with a row limit on a named
//   portal, PortalSuspended, then Execute again (Sync between batches).
// - autosave=always: SAVEPOINT PGJDBC_AUTOSAVE before each statement,
//   inserted in the same pipeline.
// - CopyManager: COPY via simple Query; CopyData, CopyDone or CopyFail.
// - Statement.cancel() and setQueryTimeout: CancelRequest on a new socket
//   (over TLS when the session uses TLS).
// - preferQueryMode=simple: plain simple Query messages with literals.
import java.io.ByteArrayOutputStream;
import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.*;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicReference;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyIn;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PGInterval;
import org.postgresql.util.PSQLException;
import org.postgresql.util.PSQLWarning;
import org.postgresql.util.ServerErrorMessage;

public class PgJdbcScenario {
    static final String SSLMODE = System.getenv().getOrDefault("SCENARIO_SSLMODE", "disable");
    static final String SUFFIX = ProcessHandle.current().pid() + "_"
        + Long.toHexString(new Random().nextLong() & 0xffffffffL);
    static final String T = "jdbc_" + SUFFIX;
    static final String TC = "jdbc_" + SUFFIX + "_copy";
    static final String CHANNEL = "jdbc_ch_" + SUFFIX;
    static final int N_COPY = 10000;
    static final int N_BIG = 200000;

    static class ScenarioError extends AssertionError {
        private static final long serialVersionUID = 1L;
        ScenarioError(String m) { super(m); }
    }

    static void ok(String step) { System.out.println("ok: " + step); System.out.flush(); }

    static void check(boolean cond, String what) {
        if (!cond) throw new ScenarioError(what);
    }

    static String env(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) throw new ScenarioError("environment variable " + name + " is not set");
        return v;
    }

    static Connection connect(String... extra) throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST") + ":" + env("PGPORT") + "/" + env("PGDATABASE");
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER"));
        p.setProperty("password", env("PGPASSWORD"));
        p.setProperty("sslmode", SSLMODE);
        if (!SSLMODE.equals("disable")) p.setProperty("sslfactory", "org.postgresql.ssl.NonValidatingFactory");
        p.setProperty("prepareThreshold", "5");
        p.setProperty("binaryTransfer", "true");
        p.setProperty("connectTimeout", "10");
        p.setProperty("ApplicationName", "pgjdbc-scenario");
        for (int i = 0; i + 1 < extra.length; i += 2) p.setProperty(extra[i], extra[i + 1]);
        return DriverManager.getConnection(url, p);
    }

    static SQLException expectState(Statement s, String sql, String state) {
        try {
            s.execute(sql);
        } catch (SQLException e) {
            check(state.equals(e.getSQLState()),
                sql + ": expected SQLSTATE " + state + ", got " + e.getSQLState() + ": " + e.getMessage());
            return e;
        }
        throw new ScenarioError(sql + " succeeded; expected SQLSTATE " + state);
    }

    static ServerErrorMessage serverError(SQLException e) {
        check(e instanceof PSQLException, "not a PSQLException: " + e);
        ServerErrorMessage m = ((PSQLException) e).getServerErrorMessage();
        check(m != null, "no server error fields: " + e);
        return m;
    }

    static long queryLong(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            check(rs.next(), "no row: " + sql);
            return rs.getLong(1);
        }
    }

    static String queryString(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            check(rs.next(), "no row: " + sql);
            return rs.getString(1);
        }
    }

    static String q(String ident) { return "\"" + ident.replace("\"", "\"\"") + "\""; }

    interface Cond { boolean get() throws Exception; }

    static void waitUntil(Cond cond, long timeoutMs, String what) throws Exception {
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        while (!cond.get()) {
            if (System.nanoTime() > deadline) throw new ScenarioError("timed out after " + timeoutMs + "ms waiting for " + what);
            Thread.sleep(20);
        }
    }

    // 0 -------------------------------------------------------------------
    static void stepConnect(Connection c) throws Exception {
        check(c.isValid(5), "connection not valid");
        // Through Sluice the database role is Sluice's own, not PGUSER.
        check(!queryString(c, "select current_user").isEmpty(), "current_user");
        ok("connect (sslmode=" + SSLMODE + ")");
    }

    // 1 -------------------------------------------------------------------
    static final String TYPES_SQL =
        "select 42::int4 i4, 9007199254740993::int8 i8, 'héllo wörld ✓'::text t, 12345.678901234567890::numeric n,"
        + " true yes, false no, '2024-02-29 13:14:15.123456+00'::timestamptz ts, '2024-02-29'::date d,"
        + " '\\x00ff10'::bytea b, null::text nul, '{\"a\": [1, 2]}'::jsonb j, array[1, 2, 3]::int4[] ia,"
        + " array['x', null, 'z'] ta, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid u, 1e300::float8 f,"
        + " '1 day 02:03:04'::interval iv";

    static void checkTypes(ResultSet rs, String how) throws SQLException {
        check(rs.next(), how + ": no row");
        check(rs.getInt("i4") == 42 && rs.getLong("i8") == 9007199254740993L, how + ": ints");
        check(rs.getString("t").equals("héllo wörld ✓"), how + ": text " + rs.getString("t"));
        check(rs.getBigDecimal("n").equals(new BigDecimal("12345.678901234567890")), how + ": numeric " + rs.getBigDecimal("n"));
        check(rs.getBoolean("yes") && !rs.getBoolean("no"), how + ": bool");
        OffsetDateTime ts = rs.getObject("ts", OffsetDateTime.class);
        check(ts.toInstant().equals(OffsetDateTime.of(2024, 2, 29, 13, 14, 15, 123456000, ZoneOffset.UTC).toInstant()),
            how + ": timestamptz " + ts);
        check(rs.getObject("d", LocalDate.class).equals(LocalDate.of(2024, 2, 29)), how + ": date");
        check(Arrays.equals(rs.getBytes("b"), new byte[] {0, (byte) 0xff, 0x10}), how + ": bytea");
        check(rs.getString("nul") == null && rs.wasNull(), how + ": null");
        check(rs.getString("j").equals("{\"a\": [1, 2]}"), how + ": jsonb " + rs.getString("j"));
        check(Arrays.equals((Integer[]) rs.getArray("ia").getArray(), new Integer[] {1, 2, 3}), how + ": int array");
        check(Arrays.equals((String[]) rs.getArray("ta").getArray(), new String[] {"x", null, "z"}), how + ": text array");
        check(rs.getObject("u").equals(UUID.fromString("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")), how + ": uuid");
        check(rs.getDouble("f") == 1e300, how + ": float8");
        PGInterval iv = (PGInterval) rs.getObject("iv");
        check(iv.getDays() == 1 && iv.getHours() == 2 && iv.getMinutes() == 3 && iv.getWholeSeconds() == 4, how + ": interval " + iv);
        check(!rs.next(), how + ": one row");
    }

    static void stepTypes(Connection c) throws Exception {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(TYPES_SQL)) {
            ResultSetMetaData md = rs.getMetaData();
            check(md.getColumnCount() == 16 && md.getColumnName(1).equals("i4") && md.getColumnTypeName(5).equals("bool"),
                "metadata");
            checkTypes(rs, "extended protocol");
        }
        // The simple Query protocol (preferQueryMode=simple).
        try (Connection simple = connect("preferQueryMode", "simple"); Statement s = simple.createStatement()) {
            try (ResultSet rs = s.executeQuery(TYPES_SQL)) {
                checkTypes(rs, "simple protocol");
            }
            check(s.execute("select 1; select 'two'"), "multi-statement");
            try (ResultSet rs = s.getResultSet()) { rs.next(); check(rs.getInt(1) == 1, "first result"); }
            check(s.getMoreResults(), "second result");
            try (ResultSet rs = s.getResultSet()) { rs.next(); check(rs.getString(1).equals("two"), "second result"); }
            try (PreparedStatement ps = simple.prepareStatement("select ?::int + 1, ?::text")) {
                ps.setInt(1, 41);
                ps.setString(2, "it's");
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getInt(1) == 42 && rs.getString(2).equals("it's"), "simple-mode parameters");
                }
            }
        }
        ok("queries with many types (extended and simple protocol)");
    }

    // 2 -------------------------------------------------------------------
    static void stepPrepared(Connection c) throws Exception {
        OffsetDateTime ts = OffsetDateTime.of(1999, 12, 31, 23, 59, 59, 999999000, ZoneOffset.UTC);
        UUID uuid = UUID.fromString("00000000-0000-0000-0000-000000003039");
        byte[] bytes = {0, 1, (byte) 0xfe, (byte) 0xff};
        Array ints = c.createArrayOf("int4", new Integer[] {1, null, 3});
        String sql = "select ?::int4, ?::int8, ?::text, ?::numeric, ?::bool, ?::timestamptz, ?::date, ?::bytea, ?::text,"
            + " ?::int4[], ?::uuid, ?::float8";
        boolean[] serverPrepared = new boolean[10];
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < 10; i++) {
                ps.setInt(1, i);
                ps.setLong(2, Long.MIN_VALUE + i);
                ps.setString(3, "ünïcødé 'q' \\ " + i);
                ps.setBigDecimal(4, new BigDecimal("-0.000123"));
                ps.setBoolean(5, i % 2 == 0);
                ps.setObject(6, ts);
                ps.setObject(7, LocalDate.of(2000, 1, 1 + i));
                ps.setBytes(8, bytes);
                ps.setNull(9, Types.VARCHAR);
                ps.setArray(10, ints);
                ps.setObject(11, uuid);
                ps.setDouble(12, 2.25 * i);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "row");
                    String run = "run " + (i + 1) + ": ";
                    check(rs.getInt(1) == i && rs.getLong(2) == Long.MIN_VALUE + i, run + "ints");
                    check(rs.getString(3).equals("ünïcødé 'q' \\ " + i), run + "text");
                    check(rs.getBigDecimal(4).equals(new BigDecimal("-0.000123")), run + "numeric " + rs.getBigDecimal(4));
                    check(rs.getBoolean(5) == (i % 2 == 0), run + "bool");
                    check(rs.getObject(6, OffsetDateTime.class).toInstant().equals(ts.toInstant()), run + "timestamptz");
                    check(rs.getObject(7, LocalDate.class).equals(LocalDate.of(2000, 1, 1 + i)), run + "date");
                    check(Arrays.equals(rs.getBytes(8), bytes), run + "bytea");
                    check(rs.getString(9) == null, run + "null");
                    check(Arrays.equals((Integer[]) rs.getArray(10).getArray(), new Integer[] {1, null, 3}), run + "array");
                    check(rs.getObject(11).equals(uuid), run + "uuid");
                    check(rs.getDouble(12) == 2.25 * i, run + "float8");
                }
                serverPrepared[i] = ps.unwrap(PGStatement.class).isUseServerPrepare();
            }
        }
        check(!serverPrepared[0] && serverPrepared[9], "server-prepared flags " + Arrays.toString(serverPrepared));
        // The named statement is on the server (same session).
        long named = queryLong(c, "select count(*) from pg_prepared_statements where name like 'S\\_%' and statement like '%$12::float8%'");
        check(named >= 1, "named statement S_n not found in pg_prepared_statements");
        ok("PreparedStatement x10: unnamed, then server-prepared S_n after prepareThreshold=5, binary transfer");

        // prepareThreshold 0 on one statement: always unnamed; -1: named at once.
        try (PreparedStatement ps = c.prepareStatement("select ? || 'u'")) {
            ps.unwrap(PGStatement.class).setPrepareThreshold(0);
            for (int i = 0; i < 6; i++) {
                ps.setString(1, "x" + i);
                try (ResultSet rs = ps.executeQuery()) { rs.next(); check(rs.getString(1).equals("x" + i + "u"), "unnamed"); }
            }
            check(!ps.unwrap(PGStatement.class).isUseServerPrepare(), "threshold 0 stays unnamed");
        }
        try (Connection forced = connect("prepareThreshold", "-1"); PreparedStatement ps = forced.prepareStatement("select ?::int * 3")) {
            for (int i = 0; i < 3; i++) {
                ps.setInt(1, i);
                try (ResultSet rs = ps.executeQuery()) { rs.next(); check(rs.getInt(1) == i * 3, "forced binary"); }
            }
            check(ps.unwrap(PGStatement.class).isUseServerPrepare(), "threshold -1 prepares at once");
        }
        // SQL-level PREPARE / EXECUTE / DEALLOCATE.
        try (Statement s = c.createStatement()) {
            s.execute("prepare sql_level (int) as select $1 * 10");
            for (int i = 0; i < 3; i++) check(queryLong(c, "execute sql_level(" + i + ")") == i * 10, "EXECUTE");
            s.execute("deallocate sql_level");
            expectState(s, "execute sql_level(1)", "26000");
        }
        ok("unnamed (threshold 0), prepared at once (threshold -1), SQL PREPARE");

        // executeBatch: Parse once, many Bind/Execute, one Sync.
        try (Statement s = c.createStatement()) {
            s.execute("create table " + q(T) + " (id int primary key, v text, n numeric)");
        }
        try (PreparedStatement ps = c.prepareStatement("insert into " + q(T) + " values (?, ?, ?)")) {
            for (int i = 0; i < 500; i++) {
                ps.setInt(1, i);
                ps.setString(2, "v" + i);
                ps.setBigDecimal(3, BigDecimal.valueOf(i, 2));
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            check(counts.length == 500 && Arrays.stream(counts).allMatch(n -> n == 1), "batch counts");
            // A duplicate in the middle of a batch.
            for (int id : new int[] {1000, 1001, 5, 1002}) {
                ps.setInt(1, id);
                ps.setString(2, "b");
                ps.setBigDecimal(3, BigDecimal.ZERO);
                ps.addBatch();
            }
            try {
                ps.executeBatch();
                throw new ScenarioError("batch with a duplicate succeeded");
            } catch (BatchUpdateException e) {
                SQLException next = e.getNextException();
                check(next != null && "23505".equals(next.getSQLState()), "batch error state " + (next == null ? e : next.getSQLState()));
            }
        }
        check(queryLong(c, "select count(*) from " + q(T)) == 500, "batch rows");
        check(queryLong(c, "select count(*) from " + q(T) + " where id >= 1000") == 0, "failed batch is atomic in autocommit");
        try (Statement s = c.createStatement()) {
            s.addBatch("insert into " + q(T) + " values (600, 'stmt batch', 0)");
            s.addBatch("update " + q(T) + " set v = 'updated' where id = 600");
            s.addBatch("delete from " + q(T) + " where id = 600");
            check(Arrays.equals(s.executeBatch(), new int[] {1, 1, 1}), "statement batch");
        }
        ok("executeBatch: 500 inserts, error mid-batch (23505), statement batch");
    }

    // 3 -------------------------------------------------------------------
    static void stepTransactions(Connection c) throws Exception {
        String t = q(T);
        try (Connection tx = connect(); Statement s = tx.createStatement()) {
            tx.setAutoCommit(false);
            s.execute("insert into " + t + " values (3000, 'kept', 0)");
            tx.commit();
            s.execute("insert into " + t + " values (3001, 'dropped', 0)");
            tx.rollback();
            check(queryLong(c, "select count(*) from " + t + " where id in (3000, 3001)") == 1, "commit persists, rollback discards");

            s.execute("insert into " + t + " values (3002, 'lost', 0)");
            expectState(s, "select 1/0", "22012");
            SQLException e = expectState(s, "select 1", "25P02");
            check(e.getMessage().contains("aborted"), e.getMessage());
            try (PreparedStatement ps = tx.prepareStatement("select ?::int")) {
                ps.setInt(1, 1);
                try {
                    ps.executeQuery();
                    throw new ScenarioError("prepared statement ran in a failed transaction");
                } catch (SQLException e2) {
                    check("25P02".equals(e2.getSQLState()), "prepared in failed tx: " + e2.getSQLState());
                }
            }
            tx.rollback();
            check(queryString(tx, "select 'recovered'").equals("recovered"), "usable after rollback");
            tx.commit();
            check(queryLong(c, "select count(*) from " + t + " where id = 3002") == 0, "failed transaction discarded");

            s.execute("insert into " + t + " values (3003, 'outer', 0)");
            Savepoint sp = tx.setSavepoint("sp1");
            expectState(s, "insert into " + t + " values (3003, 'dup', 0)", "23505");
            expectState(s, "select 1", "25P02");
            tx.rollback(sp);
            s.execute("insert into " + t + " values (3004, 'after savepoint', 0)");
            Savepoint sp2 = tx.setSavepoint();
            s.execute("insert into " + t + " values (3005, 'released', 0)");
            tx.releaseSavepoint(sp2);
            tx.commit();
            List<Integer> ids = new ArrayList<>();
            try (ResultSet rs = c.createStatement().executeQuery("select id from " + t + " where id >= 3000 order by id")) {
                while (rs.next()) ids.add(rs.getInt(1));
            }
            check(ids.equals(List.of(3000, 3003, 3004, 3005)), "savepoints: " + ids);

            tx.setReadOnly(true);
            expectState(s, "insert into " + t + " values (3006, 'ro', 0)", "25006");
            tx.rollback();
            tx.setReadOnly(false);
            tx.setAutoCommit(true);
        }
        // autosave=always: the driver wraps statements in savepoints, so an
        // error does not poison the transaction.
        try (Connection as = connect("autosave", "always"); Statement s = as.createStatement()) {
            as.setAutoCommit(false);
            s.execute("insert into " + t + " values (3010, 'autosave', 0)");
            expectState(s, "select 1/0", "22012");
            s.execute("insert into " + t + " values (3011, 'after error', 0)");
            as.commit();
        }
        check(queryLong(c, "select count(*) from " + t + " where id in (3010, 3011)") == 2, "autosave");
        ok("transactions: commit, rollback, failed state 25P02, savepoints, read only, autosave");
    }

    // 4 -------------------------------------------------------------------
    static void stepErrors(Connection c) throws Exception {
        try (Statement s = c.createStatement()) {
            ServerErrorMessage m = serverError(expectState(s, "selec 1", "42601"));
            check(m.getPosition() == 1 && m.getSeverity().equals("ERROR"), "syntax error fields " + m);
            m = serverError(expectState(s, "select * from no_such_table_here", "42P01"));
            check(m.getPosition() == 15, "position " + m.getPosition());
            m = serverError(expectState(s, "insert into " + q(T) + " values (1, 'x', 0)", "23505"));
            check(m.getConstraint().equals(T + "_pkey"), "constraint " + m.getConstraint());
            check(m.getTable().equals(T) && m.getSchema().equals("public"), "table " + m.getSchema() + "." + m.getTable());
            check(m.getDetail().equals("Key (id)=(1) already exists."), "detail " + m.getDetail());
            m = serverError(expectState(s,
                "do $$ begin raise exception using errcode = 'P0001', message = 'custom', detail = 'the detail', hint = 'the hint'; end $$",
                "P0001"));
            check(m.getMessage().equals("custom") && m.getDetail().equals("the detail") && m.getHint().equals("the hint"), "custom error");
            expectState(s, "select 1 / (3 - g) from generate_series(1, 5) g", "22012");
        }
        try (PreparedStatement ps = c.prepareStatement("select ?::int")) {
            ps.setString(1, "not a number");
            try {
                ps.executeQuery();
                throw new ScenarioError("bad parameter accepted");
            } catch (SQLException e) {
                check("22P02".equals(e.getSQLState()), "bad parameter: " + e.getSQLState());
            }
        }
        try (PreparedStatement ps = c.prepareStatement("insert into " + q(T) + " values (?, 'x', 0)")) {
            ps.setInt(1, 1);
            try {
                ps.executeUpdate();
                throw new ScenarioError("duplicate accepted");
            } catch (SQLException e) {
                check(serverError(e).getConstraint().equals(T + "_pkey"), "constraint (prepared)");
            }
        }
        check(queryString(c, "select 'still usable'").equals("still usable"), "usable after errors");
        ok("errors: 42601, 42P01, 22P02, 23505 with server fields; session usable");
    }

    // 5 -------------------------------------------------------------------
    static void stepCopy(Connection c) throws Exception {
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        try (Statement s = c.createStatement()) {
            s.execute("create table " + q(TC) + " (id int primary key, name text, amount numeric)");
        }
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < N_COPY; i++) sb.append(i).append("\tname\\t").append(i).append('\t').append(BigDecimal.valueOf(i, 2)).append('\n');
        check(cm.copyIn("copy " + q(TC) + " from stdin", new StringReader(sb.toString())) == N_COPY, "text copy in");
        sb.setLength(0);
        sb.append("id,name,amount\n");
        for (int i = N_COPY; i < 2 * N_COPY; i++) sb.append(i).append(",\"csv, \"\"").append(i).append("\"\"\nline2\",").append(i).append(".5\n");
        check(cm.copyIn("copy " + q(TC) + " from stdin (format csv, header)", new StringReader(sb.toString())) == N_COPY, "csv copy in");
        // The low-level API: many writeToCopy calls, then endCopy.
        CopyIn in = cm.copyIn("copy " + q(TC) + " (id, name) from stdin");
        for (int i = 2 * N_COPY; i < 3 * N_COPY; i++) {
            byte[] row = (i + "\tlow-level-" + i + "\n").getBytes(StandardCharsets.UTF_8);
            in.writeToCopy(row, 0, row.length);
        }
        check(in.endCopy() == N_COPY, "low-level copy in");
        check(queryLong(c, "select count(*) from " + q(TC)) == 3 * N_COPY, "copy in count");
        check(queryLong(c, "select sum(id) from " + q(TC)) == (long) 3 * N_COPY * (3 * N_COPY - 1) / 2, "copy in ids");
        check(queryString(c, "select name from " + q(TC) + " where id = 7").equals("name\t7"), "text escape");
        check(queryString(c, "select name from " + q(TC) + " where id = " + (N_COPY + 3)).equals("csv, \"" + (N_COPY + 3) + "\"\nline2"), "csv quoting");
        ok("COPY FROM STDIN: text, csv, low-level CopyIn (" + 3 * N_COPY + " rows)");

        StringWriter w = new StringWriter();
        check(cm.copyOut("copy (select id, name from " + q(TC) + " where id < " + N_COPY + " order by id) to stdout", w) == N_COPY, "text copy out");
        String[] lines = w.toString().split("\n");
        check(lines.length == N_COPY && lines[7].equals("7\tname\\t7"), "text copy out lines " + lines.length);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        check(cm.copyOut("copy (select id, amount from " + q(TC) + " where id < " + 2 * N_COPY + " order by id) to stdout (format csv, header)", out) == 2 * N_COPY, "csv copy out");
        lines = out.toString(StandardCharsets.UTF_8).split("\n");
        check(lines.length == 2 * N_COPY + 1 && lines[0].equals("id,amount") && lines[lines.length - 1].equals((2 * N_COPY - 1) + "," + (2 * N_COPY - 1) + ".5"),
            "csv copy out: " + lines.length + " " + lines[lines.length - 1]);
        ok("COPY TO STDOUT: text, csv");

        sb.setLength(0);
        for (int i = 0; i < N_COPY; i++) sb.append(i == N_COPY / 2 ? "not-a-number" : String.valueOf(100000 + i)).append("\tmidway\t0\n");
        try {
            cm.copyIn("copy " + q(TC) + " from stdin", new StringReader(sb.toString()));
            throw new ScenarioError("bad COPY data accepted");
        } catch (PSQLException e) {
            check("22P02".equals(e.getSQLState()) && e.getMessage().contains("not-a-number"), "copy error " + e.getSQLState() + " " + e.getMessage());
        }
        // The client gives up: cancelCopy sends CopyFail.
        CopyIn gaveUp = cm.copyIn("copy " + q(TC) + " (id, name) from stdin");
        byte[] row = "200000\tnever\n".getBytes(StandardCharsets.UTF_8);
        gaveUp.writeToCopy(row, 0, row.length);
        gaveUp.cancelCopy();
        check(queryLong(c, "select count(*) from " + q(TC)) == 3 * N_COPY, "failed COPYs loaded nothing");
        check(queryString(c, "select 'after copy'").equals("after copy"), "usable after failed COPY");
        ok("COPY failing midway (22P02), CopyFail via cancelCopy; session usable");
    }

    // 6 -------------------------------------------------------------------
    static void stepCancel(Connection c) throws Exception {
        try (Connection victim = connect(); Statement vs = victim.createStatement()) {
            long pid = queryLong(victim, "select pg_backend_pid()");
            ExecutorService ex = Executors.newSingleThreadExecutor();
            try {
                AtomicReference<Long> cancelAt = new AtomicReference<>();
                Future<?> canceller = ex.submit(() -> {
                    waitUntil(() -> queryLong(c, "select count(*) from pg_stat_activity where pid = " + pid
                        + " and state = 'active' and query like 'select pg_sleep%'") == 1, 10000, "pg_sleep to start");
                    cancelAt.set(System.nanoTime());
                    vs.cancel();
                    return null;
                });
                expectState(vs, "select pg_sleep(30)", "57014");
                long end = System.nanoTime();
                canceller.get(10, TimeUnit.SECONDS);
                check((end - cancelAt.get()) / 1_000_000 < 5000, "cancel took " + (end - cancelAt.get()) / 1_000_000 + "ms");
            } finally {
                ex.shutdownNow();
            }
            check(queryLong(victim, "select pg_backend_pid()") == pid, "same session after cancel");
            // setQueryTimeout: the driver's timer sends the CancelRequest.
            vs.setQueryTimeout(1);
            long t0 = System.nanoTime();
            expectState(vs, "select pg_sleep(30)", "57014");
            check((System.nanoTime() - t0) / 1_000_000 < 6000, "query timeout took too long");
            vs.setQueryTimeout(0);
            check(queryString(victim, "select 'alive'").equals("alive"), "usable after cancel");
        }
        ok("cancel: Statement.cancel() from another thread and setQueryTimeout give 57014; session usable");
    }

    // 7 -------------------------------------------------------------------
    static List<PGNotification> receive(Connection l, int n, long timeoutMs) throws Exception {
        PGConnection pg = l.unwrap(PGConnection.class);
        List<PGNotification> got = new ArrayList<>();
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (got.size() < n) {
            long left = deadline - System.currentTimeMillis();
            if (left <= 0) throw new ScenarioError("timed out waiting for " + n + " notifications, got " + got.size());
            PGNotification[] batch = pg.getNotifications((int) left);
            if (batch != null) got.addAll(Arrays.asList(batch));
        }
        return got;
    }

    static void stepListenNotify(Connection c) throws Exception {
        try (Connection l = connect(); Statement ls = l.createStatement(); Statement s = c.createStatement()) {
            ls.execute("listen " + q(CHANNEL));
            String payload = "hello from pgjdbc ✓ " + SUFFIX;
            try (PreparedStatement ps = c.prepareStatement("select pg_notify(?, ?)")) {
                ps.setString(1, CHANNEL);
                ps.setString(2, payload);
                ps.execute();
            }
            List<PGNotification> got = receive(l, 1, 10000);
            check(got.size() == 1 && got.get(0).getName().equals(CHANNEL) && got.get(0).getParameter().equals(payload),
                "notification " + got);
            long pid = queryLong(c, "select pg_backend_pid()");
            check(got.get(0).getPID() == pid, "notifier pid " + got.get(0).getPID() + " vs " + pid);

            c.setAutoCommit(false);
            for (int i = 0; i < 3; i++) s.execute("notify " + q(CHANNEL) + ", 'tx-" + i + "'");
            c.commit();
            s.execute("notify " + q(CHANNEL) + ", 'rolled back'");
            c.rollback();
            c.setAutoCommit(true);
            s.execute("notify " + q(CHANNEL) + ", 'last'");
            List<String> payloads = new ArrayList<>();
            for (PGNotification n : receive(l, 4, 10000)) payloads.add(n.getParameter());
            check(payloads.equals(List.of("tx-0", "tx-1", "tx-2", "last")), "transactional notifications " + payloads);

            // Arriving while the listener runs queries.
            s.execute("notify " + q(CHANNEL) + ", 'during queries'");
            List<PGNotification> during = new ArrayList<>();
            waitUntil(() -> {
                queryLong(l, "select 1");
                PGNotification[] b = l.unwrap(PGConnection.class).getNotifications();
                if (b != null) during.addAll(Arrays.asList(b));
                return !during.isEmpty();
            }, 10000, "notification during queries");
            check(during.get(0).getParameter().equals("during queries"), "during queries");
            ls.execute("unlisten " + q(CHANNEL));
        }
        ok("LISTEN/NOTIFY between two connections (getNotifications)");
    }

    // 8 -------------------------------------------------------------------
    static String digest(ResultSet rs, long[] countAndSum) throws Exception {
        MessageDigest md = MessageDigest.getInstance("MD5");
        while (rs.next()) {
            long g = rs.getLong(1);
            if (countAndSum[0] > 0) md.update((byte) ',');
            md.update((g + ":" + rs.getString(2)).getBytes(StandardCharsets.UTF_8));
            countAndSum[0]++;
            countAndSum[1] += g;
        }
        return HexFormat.of().formatHex(md.digest());
    }

    static void stepLargeResult(Connection c) throws Exception {
        String want;
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(
                "select count(*), sum(g), md5(string_agg(g::text || ':row-' || g, ',' order by g)) from generate_series(1, " + N_BIG + ") g")) {
            rs.next();
            check(rs.getLong(1) == N_BIG && rs.getLong(2) == (long) N_BIG * (N_BIG + 1) / 2, "server totals");
            want = rs.getString(3);
        }
        String sql = "select g, 'row-' || g from generate_series(1, ?) g order by g";
        // Fetch size with autocommit off: a portal read 5000 rows at a time.
        c.setAutoCommit(false);
        for (int run = 0; run < 6; run++) { // past prepareThreshold: binary, named statement
            try (PreparedStatement ps = c.prepareStatement(sql)) {
                ps.setFetchSize(5000);
                ps.setInt(1, N_BIG);
                long[] cs = new long[2];
                String got;
                try (ResultSet rs = ps.executeQuery()) { got = digest(rs, cs); }
                check(cs[0] == N_BIG && cs[1] == (long) N_BIG * (N_BIG + 1) / 2 && got.equals(want),
                    "fetch-size run " + run + ": " + cs[0] + " " + cs[1] + " " + got + " vs " + want);
            }
            if (run == 0) {
                // Leave a portal half read, then go on with other statements.
                try (Statement s = c.createStatement()) {
                    s.setFetchSize(100);
                    try (ResultSet rs = s.executeQuery("select g from generate_series(1, 100000) g")) {
                        for (int i = 0; i < 250; i++) check(rs.next(), "partial read");
                        check(queryLong(c, "select 7") == 7, "query while a portal is open");
                        check(rs.next() && rs.getInt(1) == 251, "continue the open portal");
                    }
                }
            }
        }
        c.commit();
        c.setAutoCommit(true);
        // Everything in one go.
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            ps.setInt(1, N_BIG);
            long[] cs = new long[2];
            try (ResultSet rs = ps.executeQuery()) { check(digest(rs, cs).equals(want) && cs[0] == N_BIG, "buffered"); }
        }
        ok("large result (" + N_BIG + " rows): fetch size portals, buffered; checksums match");
    }

    // 9 -------------------------------------------------------------------
    static void stepNotices(Connection c) throws Exception {
        try (Statement s = c.createStatement()) {
            s.execute("do $$ begin raise notice 'hello %', 42; end $$");
            SQLWarning w = s.getWarnings();
            check(w != null && w.getMessage().equals("hello 42"), "notice as SQLWarning: " + w);
            check(w instanceof PSQLWarning, "PSQLWarning");
            ServerErrorMessage m = ((PSQLWarning) w).getServerErrorMessage();
            check(m.getSeverity().equals("NOTICE") && m.getSQLState().equals("00000"), "notice fields " + m);
            check(w.getNextWarning() == null, "one notice");
            s.clearWarnings();
            s.execute("create or replace function pg_temp.noisy(x int) returns int language plpgsql as $$ begin raise notice 'row %', x; return x; end $$");
            s.execute("do $$ begin raise warning 'careful'; end $$");
            check(s.getWarnings() != null && s.getWarnings().getMessage().equals("careful"), "warning");
        }
        try (PreparedStatement ps = c.prepareStatement("select pg_temp.noisy(g) from generate_series(1, ?) g")) {
            ps.setInt(1, 3);
            List<String> msgs = new ArrayList<>();
            try (ResultSet rs = ps.executeQuery()) {
                int n = 0;
                while (rs.next()) n++;
                check(n == 3, "noisy rows");
            }
            for (SQLWarning w = ps.getWarnings(); w != null; w = w.getNextWarning()) msgs.add(w.getMessage());
            check(msgs.equals(List.of("row 1", "row 2", "row 3")), "interleaved notices " + msgs);
        }
        ok("NoticeResponse surfaced as SQLWarning (notice, interleaved with rows, warning)");
    }

    // 10 ------------------------------------------------------------------
    static void stepParameterStatus(Connection c) throws Exception {
        PGConnection pg = c.unwrap(PGConnection.class);
        check("pgjdbc-scenario".equals(pg.getParameterStatus("application_name")), "startup application_name " + pg.getParameterStatus("application_name"));
        check("UTF8".equals(pg.getParameterStatus("client_encoding")) && "on".equals(pg.getParameterStatus("standard_conforming_strings")),
            "startup parameters " + pg.getParameterStatuses());
        try (Statement s = c.createStatement()) {
            s.execute("set application_name = 'jdbc-scenario'");
            check("jdbc-scenario".equals(pg.getParameterStatus("application_name")), "ParameterStatus application_name " + pg.getParameterStatus("application_name"));
            check("jdbc-scenario".equals(c.getClientInfo("ApplicationName")), "getClientInfo ApplicationName");
            check(queryString(c, "show application_name").equals("jdbc-scenario"), "SHOW application_name");
            s.execute("set timezone = 'Asia/Tokyo'");
            check("Asia/Tokyo".equals(pg.getParameterStatus("TimeZone")), "TimeZone " + pg.getParameterStatus("TimeZone"));
            s.execute("reset timezone");
        }
        c.setClientInfo("ApplicationName", "via-setClientInfo");
        check(queryString(c, "show application_name").equals("via-setClientInfo"), "setClientInfo sends SET");
        ok("ParameterStatus: application_name, TimeZone, startup parameters, setClientInfo");
    }

    static void cleanup() {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("drop table if exists " + q(T) + ", " + q(TC));
        } catch (Exception e) {
            System.err.println("warning: cleanup failed: " + e);
        }
    }

    interface Step { void run(Connection c) throws Exception; }

    public static void main(String[] args) {
        LinkedHashMap<String, Step> steps = new LinkedHashMap<>();
        steps.put("connect", PgJdbcScenario::stepConnect);
        steps.put("types", PgJdbcScenario::stepTypes);
        steps.put("prepared", PgJdbcScenario::stepPrepared);
        steps.put("transactions", PgJdbcScenario::stepTransactions);
        steps.put("errors", PgJdbcScenario::stepErrors);
        steps.put("copy", PgJdbcScenario::stepCopy);
        steps.put("cancel", PgJdbcScenario::stepCancel);
        steps.put("listen/notify", PgJdbcScenario::stepListenNotify);
        steps.put("large result", PgJdbcScenario::stepLargeResult);
        steps.put("notices", PgJdbcScenario::stepNotices);
        steps.put("parameter status", PgJdbcScenario::stepParameterStatus);
        String current = "connect";
        try (Connection c = connect()) {
            for (Map.Entry<String, Step> e : steps.entrySet()) {
                current = e.getKey();
                e.getValue().run(c);
            }
            current = "drop tables";
            try (Statement s = c.createStatement()) {
                s.execute("drop table " + q(T) + ", " + q(TC));
            }
        } catch (Throwable e) {
            e.printStackTrace();
            String state = e instanceof SQLException ? " (SQLSTATE " + ((SQLException) e).getSQLState() + ")" : "";
            System.err.println("FAILED: pgjdbc step '" + current + "': " + e + state);
            cleanup();
            System.exit(1);
        }
        System.out.println("pgjdbc scenario passed");
    }
}
