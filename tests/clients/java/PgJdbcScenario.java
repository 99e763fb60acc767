// pgjdbc through Sluice: server-prepared statements (after prepareThreshold),
// binary transfer, batches, transactions, errors, CopyManager, cancel,
// LISTEN/NOTIFY, notices (SQLWarning), large results with a fetch size.
// Reads the libpq environment (PGHOST, PGPORT, ...).
import java.io.ByteArrayOutputStream;
import java.io.StringReader;
import java.sql.*;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PSQLException;

public class PgJdbcScenario {
    static final String T = "jdbc_" + ProcessHandle.current().pid();

    static void ok(String step) { System.out.println("ok: " + step); }

    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/"
            + System.getenv("PGDATABASE");
        Properties p = new Properties();
        p.setProperty("user", System.getenv("PGUSER"));
        p.setProperty("password", System.getenv("PGPASSWORD"));
        String ssl = System.getenv().getOrDefault("SCENARIO_SSLMODE", "disable");
        p.setProperty("sslmode", ssl);
        if (!ssl.equals("disable")) p.setProperty("sslfactory", "org.postgresql.ssl.NonValidatingFactory");
        p.setProperty("prepareThreshold", "3");
        p.setProperty("binaryTransfer", "true");
        return DriverManager.getConnection(url, p);
    }

    static String expectState(Statement s, String sql, String state) throws SQLException {
        try {
            s.execute(sql);
        } catch (SQLException e) {
            check(state.equals(e.getSQLState()), sql + ": expected " + state + " got " + e.getSQLState() + " " + e.getMessage());
            return e.getMessage();
        }
        throw new AssertionError(sql + " did not fail");
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            try (ResultSet rs = s.executeQuery(
                    "select 42::int4, 'héllo'::text, 1.5::numeric, true, null::int, '\\x0102'::bytea, 1e300::float8, '2024-01-02'::date")) {
                rs.next();
                check(rs.getInt(1) == 42 && rs.getString(2).equals("héllo"), "ints/text");
                check(rs.getBigDecimal(3).compareTo(new java.math.BigDecimal("1.5")) == 0 && rs.getBoolean(4), "numeric/bool");
                rs.getInt(5);
                check(rs.wasNull(), "null");
                byte[] b = rs.getBytes(6);
                check(b.length == 2 && b[0] == 1 && b[1] == 2, "bytea");
                check(rs.getDouble(7) == 1e300 && rs.getDate(8).toString().equals("2024-01-02"), "float/date");
            }
            ok("types");

            // After prepareThreshold uses pgjdbc switches to a named server-side statement (binary results).
            try (PreparedStatement ps = c.prepareStatement("select ?::int8 * 2, ?::text || '!'")) {
                for (int i = 0; i < 10; i++) {
                    ps.setLong(1, i);
                    ps.setString(2, "x");
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check(rs.getLong(1) == i * 2 && rs.getString(2).equals("x!"), "prepared row " + i);
                    }
                }
            }
            ok("server-prepared statements, binary transfer");

            s.execute("create table " + T + " (id int primary key, v text)");
            try (PreparedStatement ps = c.prepareStatement("insert into " + T + " values (?, ?)")) {
                for (int i = 0; i < 500; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "v" + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                check(counts.length == 500, "batch size");
            }
            ok("batch");

            c.setAutoCommit(false);
            s.execute("insert into " + T + " values (1000, 'kept')");
            c.commit();
            s.execute("insert into " + T + " values (1001, 'dropped')");
            c.rollback();
            expectState(s, "select 1/0", "22012");
            expectState(s, "select 1", "25P02");
            c.rollback();
            Savepoint sp = c.setSavepoint();
            expectState(s, "insert into " + T + " values (1, 'dup')", "23505");
            c.rollback(sp);
            s.execute("insert into " + T + " values (1002, 'after savepoint')");
            c.commit();
            c.setAutoCommit(true);
            try (ResultSet rs = s.executeQuery("select string_agg(id::text, ',' order by id) from " + T + " where id >= 1000")) {
                rs.next();
                check(rs.getString(1).equals("1000,1002"), "transactions: " + rs.getString(1));
            }
            ok("transactions and savepoints");

            String msg = expectState(s, "insert into " + T + " values (1, 'x')", "23505");
            check(msg.contains("(id)=(1)"), "detail in message: " + msg);
            expectState(s, "selec 1", "42601");
            ok("errors");

            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            s.execute("create table " + T + "_c (id int, name text)");
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < 10000; i++) sb.append(i).append('\t').append("name-").append(i).append('\n');
            long n = cm.copyIn("copy " + T + "_c from stdin", new StringReader(sb.toString()));
            check(n == 10000, "copy in " + n);
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            cm.copyOut("copy (select * from " + T + "_c order by id) to stdout with (format csv)", out);
            String[] lines = out.toString("UTF-8").split("\n");
            check(lines.length == 10000 && lines[9999].equals("9999,name-9999"), "copy out");
            try {
                cm.copyIn("copy " + T + "_c from stdin", new StringReader("bad\tx\n"));
                throw new AssertionError("bad copy accepted");
            } catch (PSQLException e) {
                check("22P02".equals(e.getSQLState()), "copy error state " + e.getSQLState());
            }
            ok("copy");

            try (Connection victim = connect(); Statement vs = victim.createStatement()) {
                Thread t = new Thread(() -> {
                    try {
                        long deadline = System.currentTimeMillis() + 10000;
                        while (System.currentTimeMillis() < deadline) {
                            try (ResultSet rs = s.executeQuery("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'")) {
                                rs.next();
                                if (rs.getInt(1) > 0) { vs.cancel(); return; }
                            }
                            Thread.sleep(20);
                        }
                    } catch (Exception e) { throw new RuntimeException(e); }
                });
                t.start();
                expectState(vs, "select pg_sleep(30)", "57014");
                t.join();
                try (ResultSet rs = vs.executeQuery("select 2")) { rs.next(); check(rs.getInt(1) == 2, "usable after cancel"); }
            }
            ok("cancel");

            try (Connection l = connect(); Statement ls = l.createStatement()) {
                ls.execute("listen sluice_ch");
                s.execute("notify sluice_ch, 'hello-jdbc'");
                PGNotification[] got = l.unwrap(PGConnection.class).getNotifications(10000);
                check(got != null && got.length == 1 && got[0].getName().equals("sluice_ch")
                    && got[0].getParameter().equals("hello-jdbc"), "notification");
            }
            ok("listen/notify");

            s.execute("do $$ begin raise notice 'hello %', 42; end $$");
            SQLWarning w = s.getWarnings();
            check(w != null && w.getMessage().contains("hello 42"), "notice as warning");
            ok("notices");

            s.execute("set application_name = 'jdbc-scenario'");
            check(c.getClientInfo("ApplicationName").equals("jdbc-scenario"), "application_name via ParameterStatus");
            ok("parameter status");

            c.setAutoCommit(false);
            try (Statement fs = c.createStatement()) {
                fs.setFetchSize(5000);
                long count = 0, total = 0;
                try (ResultSet rs = fs.executeQuery("select g from generate_series(1, 200000) g")) {
                    while (rs.next()) { count++; total += rs.getLong(1); }
                }
                check(count == 200000 && total == 200000L * 200001 / 2, "large result");
            }
            c.commit();
            c.setAutoCommit(true);
            ok("large results");

            s.execute("drop table " + T + ", " + T + "_c");
        }
        System.out.println("pgjdbc scenario passed");
    }
}
