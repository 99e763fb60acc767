//! Self-tests: throwaway servers really accept each role over TCP with its
//! password method (checked with psql, i.e. libpq), refuse wrong passwords,
//! run side by side, and die and come back when told to.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sluice_testkit::*;

const ROLES: [(&str, &str); 4] = [
    (SCRAM_USER, SCRAM_PASSWORD),
    (MD5_USER, MD5_PASSWORD),
    (CLEAR_USER, CLEAR_PASSWORD),
    (TRUST_USER, ""),
];

/// psql (libpq) with a conninfo string and a password, nothing from our environment.
fn psql_cmd(conninfo: &str, password: &str, sql: &str) -> Command {
    let mut cmd = Command::new(pg_bin_dir().join("psql"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .stdin(Stdio::null());
    cmd
}

fn run(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let Output {
        status,
        stdout,
        stderr,
    } = psql_cmd(conninfo, password, sql)
        .output()
        .expect("run psql");
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&stderr).into_owned())
    }
}

fn conninfo(pg: &PgServer, user: &str, ssl: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname=app {ssl}",
        pg.port()
    )
}

#[test]
fn plain_server_accepts_each_role_with_its_password_method() {
    let pg = PgServer::start();
    assert_eq!(pg.addr(), format!("127.0.0.1:{}", pg.port()));
    assert!(pg.ca().is_none() && pg.ca_file().is_none());
    for (user, password) in ROLES {
        let who = run(
            &conninfo(&pg, user, "sslmode=disable"),
            password,
            "select current_user",
        );
        assert_eq!(who.as_deref(), Ok(user), "{user}");
        if user != TRUST_USER {
            let err =
                run(&conninfo(&pg, user, "sslmode=disable"), "wrong", "select 1").expect_err(user);
            assert!(
                err.contains("password authentication failed"),
                "{user}: {err}"
            );
        }
    }
    // Nobody reaches the superuser over TCP without its (unset) password.
    let err = run(
        &conninfo(&pg, "postgres", "sslmode=disable"),
        "",
        "select 1",
    )
    .unwrap_err();
    assert!(err.contains("password"), "{err}");
    let err = run(&conninfo(&pg, "nobody", "sslmode=disable"), "x", "select 1").unwrap_err();
    assert!(err.contains("pg_hba.conf"), "{err}");

    // Passwords are stored as the method needs; app belongs to the SCRAM role.
    let stored = pg.psql(
        "postgres",
        "select string_agg(rolname || ':' || coalesce(left(rolpassword, 3), '-'), ' ' order by rolname) \
         from pg_authid where rolname like 'sluice%'",
    );
    assert_eq!(
        stored,
        "sluice_clear:SCR sluice_md5:md5 sluice_scram:SCR sluice_trust:-"
    );
    let owner = pg.psql(
        "postgres",
        "select pg_get_userbyid(datdba) from pg_database where datname = 'app'",
    );
    assert_eq!(owner, SCRAM_USER);
    // Every role may create tables in app's public schema.
    for (user, password) in ROLES {
        let sql = format!("create table t_{user} (id int); drop table t_{user}");
        run(&conninfo(&pg, user, "sslmode=disable"), password, &sql).unwrap();
    }
    // direct_url is usable as it is.
    assert_eq!(
        run(&pg.direct_url(), "", "select current_user").as_deref(),
        Ok(SCRAM_USER)
    );
}

#[test]
fn tls_server_accepts_each_role_over_verified_tls_only() {
    let pg = PgServer::start_with(PgOptions { tls: true });
    let ca = pg.ca_file().expect("ca file");
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        pg.ca().unwrap().cert_pem()
    );
    for host in ["127.0.0.1", "localhost"] {
        for (user, password) in ROLES {
            let info = format!(
                "host={host} hostaddr=127.0.0.1 port={} user={user} dbname=app \
                 sslmode=verify-full sslrootcert={}",
                pg.port(),
                ca.display()
            );
            let sql =
                "select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()";
            assert_eq!(
                run(&info, password, sql),
                Ok(format!("{user} true")),
                "{host}"
            );
            if user != TRUST_USER {
                let err = run(&info, "wrong", "select 1").expect_err(user);
                assert!(err.contains("password authentication failed"), "{err}");
            }
        }
    }
    // Plain TCP is refused outright.
    let err = run(
        &conninfo(&pg, SCRAM_USER, "sslmode=disable"),
        SCRAM_PASSWORD,
        "select 1",
    )
    .unwrap_err();
    assert!(err.contains("pg_hba.conf"), "{err}");
    assert!(pg.direct_url().ends_with("sslmode=require"));
    assert_eq!(
        run(&pg.direct_url(), "", "select current_user").as_deref(),
        Ok(SCRAM_USER)
    );
    // A certificate from another CA does not verify.
    let dir = tempfile::tempdir().unwrap();
    let files = TestCa::new().write_server_files(dir.path());
    let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let info = format!(
        "{} sslrootcert={}",
        conninfo(&pg, SCRAM_USER, "sslmode=verify-full"),
        files.ca.display()
    );
    let err = run(&info, SCRAM_PASSWORD, "select 1").unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
}

#[test]
fn two_servers_run_side_by_side() {
    let starts: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(PgServer::start))
        .collect();
    let mut servers: Vec<PgServer> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    assert_ne!(servers[0].port(), servers[1].port());
    // synchronous_commit is off: make this commit durable before the kill.
    servers[0].psql(
        "app",
        "set synchronous_commit = on; create table only_here (id int)",
    );
    let count = "select count(*) from pg_tables where tablename = 'only_here'";
    assert_eq!(servers[0].psql("app", count), "1");
    assert_eq!(servers[1].psql("app", count), "0");
    servers[0].kill();
    assert_eq!(servers[1].psql("app", "select 1"), "1");
    let mut killed = servers.remove(0);
    killed.restart();
    assert_eq!(killed.psql("app", count), "1");
}

#[test]
fn kill_drops_connections_and_restart_keeps_port_and_data() {
    let mut pg = PgServer::start();
    let port = pg.port();
    pg.psql(
        "app",
        "set synchronous_commit = on; create table kept (id int); insert into kept values (7); \
         alter table kept owner to sluice_scram",
    );
    let info = conninfo(&pg, SCRAM_USER, "sslmode=disable");
    let mut sleeper = psql_cmd(&info, SCRAM_PASSWORD, "select pg_sleep(60)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the sleeping query", || {
        pg.psql(
            "postgres",
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'",
        ) == "1"
    });
    pg.kill();
    // Backends died with the postmaster: the client sees its connection go.
    wait_until(Duration::from_secs(10), "psql to notice", || {
        sleeper.try_wait().unwrap().is_some()
    });
    assert!(!sleeper.wait().unwrap().success());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    pg.kill(); // a second kill is harmless

    pg.restart();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("app", "select id from kept"), "7");
    pg.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    pg.restart();
    assert_eq!(
        run(&info, SCRAM_PASSWORD, "select id from kept").as_deref(),
        Ok("7")
    );
}
