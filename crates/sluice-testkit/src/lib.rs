//! Test support: throwaway PostgreSQL servers, Sluice processes and test
//! certificates. Everything is started fresh per test on random ports and
//! torn down on drop, so tests run in parallel and never touch services that
//! happen to be running on the machine.
#![warn(missing_docs)]

pub mod idp;

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
pub fn wait_until(deadline: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(
        wait_quietly(deadline, f),
        "timed out after {deadline:?} waiting for {what}"
    );
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
        // A distinct name per CA, so a chain never finds a stranger's CA by name.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            ^ u128::from(std::process::id()) << 64;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("Sluice test CA {nonce}"));
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

/// The (uid, gid) PostgreSQL must run as: the `postgres` system user when we
/// are root (initdb and postgres refuse to run as root), else ourselves.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let f: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .expect("running as root needs the `postgres` system user (install postgresql)");
    Some((f[2].parse().expect("uid"), f[3].parse().expect("gid")))
}

/// A PostgreSQL program with a clean environment: no `PG*` variables from
/// the caller (PGSSLMODE, PGOPTIONS, …), C locale, run in `cwd`.
fn pg_command(program: &Path, owner: Option<(u32, u32)>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").current_dir(cwd).stdin(Stdio::null());
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid).env("HOME", cwd);
    }
    cmd
}

/// A throwaway PostgreSQL: initdb in a temp dir, a random free port on
/// 127.0.0.1, a database `app` and a role for every password method
/// ([`SCRAM_USER`], [`MD5_USER`], [`CLEAR_USER`], [`TRUST_USER`]). Stopped
/// and deleted on drop. Nothing is shared between servers.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    port: u16,
    child: Option<Child>,
    ca: Option<TestCa>,
}

impl PgServer {
    /// Start without TLS (same as `start_with(PgOptions::default())`).
    pub fn start() -> PgServer {
        Self::start_with(PgOptions::default())
    }

    /// Start with options; panics (with the server log) if it cannot.
    pub fn start_with(opts: PgOptions) -> PgServer {
        let (bin, owner) = (pg_bin_dir(), server_user());
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .expect("create temp dir");
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let chown = |p: &Path| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
            }
        };
        chown(root);
        let data = root.join("data");
        let out = pg_command(&bin.join("initdb"), owner, root)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=trust", "--auth-host=reject"])
            .args(["--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let ca = opts.tls.then(TestCa::new);
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 200\npassword_encryption = 'scram-sha-256'\n",
            root.display()
        );
        let host = match &ca {
            Some(ca) => {
                let files = ca.write_server_files(root);
                for f in [&files.ca, &files.cert, &files.key] {
                    chown(f);
                }
                conf.push_str(&format!(
                    "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                    files.cert.display(),
                    files.key.display()
                ));
                "hostssl"
            }
            None => "host",
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        f.write_all(conf.as_bytes()).expect("write postgresql.conf");
        let net = "127.0.0.1/32";
        let hba = format!(
            "local all all trust\n\
             {host} all {SCRAM_USER} {net} scram-sha-256\n\
             {host} all {MD5_USER} {net} md5\n\
             {host} all {CLEAR_USER} {net} password\n\
             {host} all {TRUST_USER} {net} trust\n\
             {host} all postgres {net} scram-sha-256\n\
             host all all all reject\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");

        let mut server = PgServer {
            dir,
            bin,
            owner,
            port: 0,
            child: None,
            ca,
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
        let all = format!("{SCRAM_USER}, {MD5_USER}, {CLEAR_USER}, {TRUST_USER}");
        server.psql(
            "app",
            &format!("grant all on database app to {all}; grant all on schema public to {all};"),
        );
        server
    }

    /// Start the postmaster and wait until it accepts connections. With
    /// `fixed` unset, a port clash ("could not bind") is retried on another port.
    fn launch(&mut self, fixed: Option<u16>) {
        let log_path = self.dir.path().join("postgres.log");
        for _ in 0..5 {
            let port = fixed.unwrap_or_else(free_port);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("open postgres.log");
            let seen = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
            let mut child = pg_command(&self.bin.join("postgres"), self.owner, self.dir.path())
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-p", &port.to_string()])
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
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
                    let _ = child.wait();
                    panic!("PostgreSQL not ready after 60 s:\n{}", self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let log = std::fs::read(&log_path).unwrap_or_default();
            let attempt = String::from_utf8_lossy(log.get(seen..).unwrap_or_default());
            if !attempt.contains("could not bind") {
                break;
            }
        }
        panic!("PostgreSQL did not start:\n{}", self.log_tail());
    }

    /// Whether the server accepts connections (asked over its unix socket).
    fn ready(&self, port: u16) -> bool {
        pg_command(&self.tool("pg_isready"), None, self.dir.path())
            .args(["-q", "-t", "5", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(self.dir.path())
            .args(["-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A client program from the server's bin dir, else from `PATH`.
    fn tool(&self, name: &str) -> PathBuf {
        let path = self.bin.join(name);
        if path.exists() {
            path
        } else {
            PathBuf::from(name)
        }
    }

    /// The last 40 lines of the server log.
    fn log_tail(&self) -> String {
        let log = std::fs::read(self.dir.path().join("postgres.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Its TCP port on 127.0.0.1.
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

    /// Path of the CA certificate (PEM), when TLS is on.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca.as_ref().map(|_| self.dir.path().join("ca.crt"))
    }

    /// Run SQL as the superuser through psql over the unix socket
    /// (`-X -q -A -t -v ON_ERROR_STOP=1 -c SQL`, so several statements run as
    /// one transaction); trimmed stdout. Panics with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = pg_command(&self.tool("psql"), None, self.dir.path())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// libpq URL for a direct connection as [`SCRAM_USER`] to database `app`:
    /// `sslmode=disable`, or `sslmode=require` when TLS is on (the server then
    /// refuses plain TCP logins).
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

    /// Kill the server at once, as a crash would: SIGKILL to the postmaster
    /// and every backend, so open connections drop. Waits until all are gone.
    /// With `synchronous_commit = off`, commits of the last few hundred ms
    /// may be lost; `SET synchronous_commit = on` first where that matters.
    pub fn kill(&mut self) {
        self.halt(false);
    }

    /// Stop it cleanly (fast shutdown) and wait; SIGKILL after 30 s.
    pub fn stop(&mut self) {
        self.halt(true);
    }

    /// Start it again on the same port and data dir after [`stop`](Self::stop)
    /// or [`kill`](Self::kill) (stops it first if it is running).
    pub fn restart(&mut self) {
        self.halt(true);
        let _ = std::fs::remove_file(self.dir.path().join("data/postmaster.pid"));
        self.launch(Some(self.port));
    }

    fn halt(&mut self, graceful: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The child is not reaped before `wait` below, so its pid stays ours.
        let pid = child.id() as libc::pid_t;
        if graceful {
            send(pid, libc::SIGINT);
            if wait_quietly(Duration::from_secs(30), || {
                matches!(child.try_wait(), Ok(Some(_)))
            }) {
                return;
            }
        }
        // Freeze the postmaster so it forks nothing more, then kill it and its children.
        send(pid, libc::SIGSTOP);
        let children = children_of(pid);
        send(pid, libc::SIGKILL);
        for &c in &children {
            send(c, libc::SIGKILL);
        }
        let _ = child.wait();
        wait_quietly(Duration::from_secs(10), || {
            children.iter().all(|&c| !alive(c))
        });
        // A crashed postmaster leaves its SysV shared memory segment behind:
        // its id is the second number on line 7 of postmaster.pid.
        let pidfile = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"));
        let shmid = pidfile.ok().and_then(|t| {
            let line = t.lines().nth(6)?.to_owned();
            line.split_whitespace().nth(1)?.parse::<libc::c_int>().ok()
        });
        if let Some(id) = shmid {
            // SAFETY: IPC_RMID takes no buffer; the id is this server's segment,
            // which cannot have been reused while it still exists.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.halt(true);
    }
}

fn send(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// Pids whose parent is `pid`, from /proc.
fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&p| stat_fields(p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: libc::pid_t) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state != 'Z')
}

/// (state, ppid) from /proc/PID/stat; the command name may hold spaces and parentheses.
fn stat_fields(pid: libc::pid_t) -> Option<(char, libc::pid_t)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

/// Poll `f` every 20 ms until true (returns true) or `deadline` passes (false).
fn wait_quietly(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
    data_dir: Option<PathBuf>,
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
            data_dir: None,
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

    /// Wait up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_quietly(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// GET `path` on the HTTP port (raw HTTP/1.1, `Connection: close`):
    /// (status, body); `(0, "")` if the request fails.
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

/// GET over a fresh connection: (status, body), `None` if it fails.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = &raw[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return Some((status, String::from_utf8_lossy(body).into_owned()));
    }
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
    Some((status, String::from_utf8_lossy(&out).into_owned()))
}

impl SluiceBuilder {
    /// Set an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Use this data directory (kept across restarts) instead of a fresh one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
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
                .arg(
                    self.data_dir
                        .clone()
                        .unwrap_or_else(|| dir.path().join("data")),
                )
                .args(&self.args)
                .env("SLUICE_LOG_FORMAT", "pretty")
                .env("NO_COLOR", "1")
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
