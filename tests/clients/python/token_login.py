"""psycopg 3 signs in to Sluice with an OIDC token as the password.

Reads PGHOST, PGPORT, PGUSER, PGDATABASE and SLUICE_TOKEN (the token; kept
out of PGPASSWORD to show a driver passing it as an ordinary password).
Prints `identity: <principal>|<kind>|<current_user>` (the principal with `@` as
`(at)`, which Sluice's masking leaves alone) and exits 0, or prints
the error and exits 1.
"""
import os
import sys

import psycopg


def main():
    try:
        with psycopg.connect(
            host=os.environ["PGHOST"],
            port=os.environ["PGPORT"],
            user=os.environ["PGUSER"],
            dbname=os.environ["PGDATABASE"],
            password=os.environ["SLUICE_TOKEN"],
            sslmode="require",
            connect_timeout=10,
        ) as conn:
            row = conn.execute(
                "select replace(current_setting('sluice.principal'), '@', '(at)'), current_setting('sluice.kind'), current_user"
            ).fetchone()
            # A prepared statement over the extended protocol, too.
            n = conn.execute("select %s::int + 1", (41,), prepare=True).fetchone()[0]
            assert n == 42, n
            print(f"identity: {row[0]}|{row[1]}|{row[2]}", flush=True)
    except psycopg.Error as e:
        print(f"error: {e}", flush=True)
        sys.exit(1)


main()
