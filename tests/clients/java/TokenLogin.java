// pgjdbc signs in to Sluice with an OIDC token as the password.
//
// Reads PGHOST, PGPORT, PGUSER, PGDATABASE and SLUICE_TOKEN. Prints
// `identity: <principal>|<kind>|<current_user>` (`@` printed as `(at)`, which
// Sluice's masking leaves alone) and exits 0, or prints the
// error and exits 1. pgjdbc sends the password in clear when Sluice asks
// for it (AuthenticationCleartextPassword), which Sluice does only over TLS.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Properties;

public final class TokenLogin {
    private TokenLogin() {}

    public static void main(String[] args) {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
                + "/" + System.getenv("PGDATABASE");
        Properties props = new Properties();
        props.setProperty("user", System.getenv("PGUSER"));
        props.setProperty("password", System.getenv("SLUICE_TOKEN"));
        props.setProperty("sslmode", "require");
        props.setProperty("connectTimeout", "10");
        try (Connection c = DriverManager.getConnection(url, props);
             PreparedStatement st = c.prepareStatement(
                 "select replace(current_setting('sluice.principal'), '@', '(at)'), current_setting('sluice.kind'), current_user, ?::int + 1")) {
            st.setInt(1, 41);
            try (ResultSet rs = st.executeQuery()) {
                rs.next();
                if (rs.getInt(4) != 42) {
                    throw new SQLException("bad result " + rs.getInt(4));
                }
                System.out.println("identity: " + rs.getString(1) + "|" + rs.getString(2) + "|" + rs.getString(3));
            }
        } catch (SQLException e) {
            System.out.println("error: " + e.getMessage());
            System.exit(1);
        }
    }
}
