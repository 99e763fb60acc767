//! Test support: throwaway PostgreSQL servers, Sluice processes and test
//! certificates. Everything is started fresh per test on random ports and
//! torn down on drop, so tests run in parallel and never touch services that
//! happen to be running on the machine.
#![warn(missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Role that logs in with SCRAM-SHA-256.
pub const SCRAM_USER: &str = "sluice_scram";
/// Its password.
pub const SCRAM_PASSWORD: &str = "scram-secret";
/// Role that logs in with md5.
pub const MD5_USER: &str = "sluice_md5";
/// Its password.
pub const MD5_PASSWORD: &str = "md5-secret";
/// Role that logs in with a cleartext password.
pub const CLEAR_USER: &str = "sluice_clear";
/// Its password.
pub const CLEAR_PASSWORD: &str = "clear-secret";
/// Role that logs in without a password (trust).
pub const TRUST_USER: &str = "sluice_trust";

/// The newest PostgreSQL server binaries on the machine (or `$PG_BIN`).
pub fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("postgres").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, p)| p).expect(
        "no PostgreSQL server under /usr/lib/postgresql/*/bin (install postgresql, or set PG_BIN)",
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Poll `f` every 20 ms until it is true; panic naming `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Paths of a written certificate set.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key (mode 0600).
    pub key: PathBuf,
}

/// A certificate authority made at test time.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("generate CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Sluice test CA");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1: (cert PEM, key PEM).
    pub fn issue_server(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("generate server key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Write `ca.crt`, `server.crt` and `server.key` into `dir`.
    pub fn write_server_files(&self, dir: &Path) -> TlsFiles {
        let (cert, key) = self.issue_server();
        let files = TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, self.cert_pem()).expect("write ca.crt");
        std::fs::write(&files.cert, cert).expect("write server.crt");
        std::fs::write(&files.key, key).expect("write server.key");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        files
    }
}

/// Options for [`PgServer::start_with`].
#[derive(Debug, Default, Clone, Copy)]
pub struct PgOptions {
    /// Serve TLS with a certificate from a fresh [`TestCa`]; TCP logins then need TLS.
    pub tls: bool,
}

/// The system user PostgreSQL runs as when the tests run as root.
fn server_user() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs the `postgres` system user (install postgresql)");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().expect("uid"), f[3].parse().expect("gid")))
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's effective uid.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A throwaway PostgreSQL: initdb in a temp dir, a random port on
/// 127.0.0.1, roles for every password method, torn down on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    ca: Option<TestCa>,
    owner: Option<(u32, u32)>,
}

impl PgServer {
    /// Start without TLS.
    pub fn start() -> PgServer {
        Self::start_with(PgOptions::default())
    }

    /// Start with options.
    pub fn start_with(opts: PgOptions) -> PgServer {
        let owner = server_user();
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let data = dir.path().join("data");
        let out = pg_command("initdb", owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let ca = opts.tls.then(TestCa::new);
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\npassword_encryption = 'scram-sha-256'\n",
            dir.path().display()
        );
        let host = if let Some(ca) = &ca {
            let files = ca.write_server_files(&data);
            if let Some((uid, gid)) = owner {
                for f in [&files.ca, &files.cert, &files.key] {
                    std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown tls files");
                }
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            "hostssl"
        } else {
            "host"
        };
        append(&data.join("postgresql.conf"), &conf);
        let hba = format!(
            "local all all trust\n\
             {host} all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             {host} all {MD5_USER} 127.0.0.1/32 md5\n\
             {host} all {CLEAR_USER} 127.0.0.1/32 password\n\
             {host} all {TRUST_USER} 127.0.0.1/32 trust\n\
             {host} all postgres 127.0.0.1/32 scram-sha-256\n\
             host all all 0.0.0.0/0 reject\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");

        let mut server = PgServer {
            dir,
            port: 0,
            child: None,
            ca,
            owner,
        };
        server.launch(None);
        server.psql(
            "postgres",
            &format!(
                "create role {SCRAM_USER} login password '{SCRAM_PASSWORD}';
                 set password_encryption = 'md5';
                 create role {MD5_USER} login password '{MD5_PASSWORD}';
                 reset password_encryption;
                 create role {CLEAR_USER} login password '{CLEAR_PASSWORD}';
                 create role {TRUST_USER} login;"
            ),
        );
        server.psql(
            "postgres",
            &format!("create database app owner {SCRAM_USER}"),
        );
        server.psql(
            "app",
            &format!(
                "grant all on database app to {MD5_USER}, {CLEAR_USER}, {TRUST_USER};
                 grant all on schema public to {MD5_USER}, {CLEAR_USER}, {TRUST_USER};"
            ),
        );
        server
    }

    /// Start the server process; on a port clash, try other ports.
    fn launch(&mut self, port: Option<u16>) {
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_port);
            let log = self.dir.path().join("postgres.log");
            let log_file = std::fs::File::create(&log).expect("create log");
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&log, Some(uid), Some(gid)).expect("chown log");
            }
            let mut child = pg_command("postgres", self.owner)
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("start postgres");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if self.ready(port) {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
            if !last_log.contains("could not bind") && !last_log.contains("Address already in use")
            {
                break;
            }
        }
        panic!("PostgreSQL did not start:\n{last_log}");
    }

    fn ready(&self, port: u16) -> bool {
        Command::new(pg_bin_dir().join("pg_isready"))
            .args(["-q", "-h"])
            .arg(self.dir.path())
            .args(["-p", &port.to_string(), "-U", "postgres"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA that signed its certificate, when TLS is on.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// Path of the CA certificate, when TLS is on.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca
            .as_ref()
            .map(|_| self.dir.path().join("data/ca.crt"))
    }

    /// Run SQL as the superuser over the unix socket; trimmed stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// libpq URL for a direct connection as [`SCRAM_USER`] to `app`.
    pub fn direct_url(&self) -> String {
        let ssl = if self.ca.is_some() {
            "require"
        } else {
            "disable"
        };
        format!(
            "postgresql://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{}/app?sslmode={ssl}",
            self.port
        )
    }

    /// Kill the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // Backends outlive a killed postmaster briefly; end them too.
            let _ = Command::new("pkill")
                .args(["-KILL", "-f"])
                .arg(format!("{}", self.dir.path().join("data").display()))
                .status();
            wait_until(Duration::from_secs(10), "port to close", || {
                TcpStream::connect(("127.0.0.1", self.port)).is_err()
            });
        }
    }

    /// Stop cleanly (fast shutdown) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// Start again on the same port and data after [`stop`](Self::stop) or [`kill`](Self::kill).
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.dir.path().join("data/postmaster.pid"));
        self.launch(Some(self.port));
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pg_command(name: &str, owner: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(pg_bin_dir().join(name));
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
    cmd
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

/// A Sluice process for a test, with its own config, data dir and log.
pub struct SluiceProcess {
    dir: tempfile::TempDir,
    child: Child,
    pg_port: u16,
    http_port: u16,
}

/// Builds a [`SluiceProcess`].
pub struct SluiceBuilder {
    bin: PathBuf,
    config: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl SluiceProcess {
    /// `config` is the whole TOML; `@PG_PORT@` and `@HTTP_PORT@` are replaced
    /// by free ports.
    pub fn builder(bin: impl Into<PathBuf>, config: &str) -> SluiceBuilder {
        SluiceBuilder {
            bin: bin.into(),
            config: config.to_owned(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Its PostgreSQL-protocol port.
    pub fn pg_port(&self) -> u16 {
        self.pg_port
    }

    /// Its HTTP port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `127.0.0.1:PG_PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.pg_port)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by name (`HUP`, `TERM`, `KILL`, …).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {sig} failed");
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET a path on the HTTP port: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path).unwrap_or((0, String::new()))
    }

    /// Replace the config file (same ports).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(
            self.config_path(),
            fill_ports(config, self.pg_port, self.http_port),
        )
        .expect("write config");
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fill_ports(config: &str, pg: u16, http: u16) -> String {
    config
        .replace("@PG_PORT@", &pg.to_string())
        .replace("@HTTP_PORT@", &http.to_string())
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

impl SluiceBuilder {
    /// Set an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Add a command-line argument after `serve`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// Start and wait until `/healthz` answers; panic with the log otherwise.
    pub fn start(self) -> SluiceProcess {
        self.try_start()
            .unwrap_or_else(|log| panic!("sluice did not start:\n{log}"))
    }

    /// Start and wait until `/healthz` answers, or return the log.
    pub fn try_start(self) -> Result<SluiceProcess, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("sluice-proc-")
                .tempdir()
                .expect("temp dir");
            let (pg_port, http_port) = (free_port(), free_port());
            let config_path = dir.path().join("sluice.toml");
            std::fs::write(&config_path, fill_ports(&self.config, pg_port, http_port))
                .expect("write config");
            let log = std::fs::File::create(dir.path().join("sluice.log")).expect("create log");
            let mut child = Command::new(&self.bin)
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(&self.args)
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("SLUICE_LOG_FORMAT", "pretty")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let exited = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break true;
                }
                if matches!(http_get(http_port, "/healthz"), Some((200, _))) {
                    return Ok(SluiceProcess {
                        dir,
                        child,
                        pg_port,
                        http_port,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            last = std::fs::read_to_string(dir.path().join("sluice.log")).unwrap_or_default();
            // Retry only when another process took one of our ports.
            if !(exited && last.contains("Address already in use")) {
                break;
            }
        }
        Err(last)
    }
}
