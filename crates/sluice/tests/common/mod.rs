//! Shared setup for the integration tests: a real PostgreSQL, a real Sluice
//! process in front of it, and ways to talk to both.
#![allow(dead_code)]

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub use sluice_testkit::{PgServer, SluiceProcess};

/// The local user every test signs in as.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "alice-pw";
/// The target name clients use as their database.
pub const TARGET: &str = "app-dev";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// `[listen]` with the test ports; `extra` goes into the same table.
pub fn listen(extra: &str) -> String {
    format!(
        "[listen]\npostgres = \"127.0.0.1:@PG_PORT@\"\nhttp = \"127.0.0.1:@HTTP_PORT@\"\n{extra}\n"
    )
}

/// One `[[targets]]` entry for `pg`, logging in as `role` whose password is
/// in the environment variable `TARGET_PW`.
pub fn target(name: &str, upstream: &str, role: &str, tls: &str) -> String {
    target_in("development", name, upstream, role, tls)
}

/// A `[[targets]]` entry in an environment.
pub fn target_in(environment: &str, name: &str, upstream: &str, role: &str, tls: &str) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\nenvironment = \"{environment}\"\nupstream = \"{upstream}\"\ndatabase = \"app\"\nuser = \"{role}\"\npassword_env = \"TARGET_PW\"\ntls = \"{tls}\"\n"
    )
}

/// A `[[users]]` entry.
pub fn user(name: &str, password: &str) -> String {
    format!(
        "[[users]]\nname = \"{name}\"\nkind = \"human\"\ngroups = [\"dev\"]\npassword_hash = \"{}\"\n",
        sluice_identity::make_verifier(password)
    )
}

/// The usual setup: PostgreSQL, and Sluice in front of it with one target
/// (logging in by SCRAM) and one user.
pub fn start() -> (PgServer, SluiceProcess) {
    start_with("", "")
}

/// The usual setup with extra `[listen]` keys and extra top-level TOML.
pub fn start_with(listen_extra: &str, extra: &str) -> (PgServer, SluiceProcess) {
    let pg = PgServer::start();
    let config = format!(
        "{}{}{}{extra}",
        listen(listen_extra),
        target(TARGET, &pg.addr(), sluice_testkit::SCRAM_USER, "disable"),
        user(USER, PASSWORD)
    );
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    (pg, sluice)
}

/// libpq-style connection string for a Sluice process.
pub fn conn_str(sluice: &SluiceProcess) -> String {
    format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={TARGET} sslmode=disable",
        sluice.pg_port()
    )
}

/// Connect with tokio-postgres, driving the connection in the background.
pub async fn connect(sluice: &SluiceProcess) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&conn_str(sluice), tokio_postgres::NoTls)
        .await
        .expect("connect through sluice");
    tokio::spawn(conn);
    client
}

/// Run `psql` with args; returns (success, stdout, stderr).
pub fn psql(sluice: &SluiceProcess, extra_conn: &str, args: &[&str]) -> (bool, String, String) {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={USER} dbname={TARGET} {extra_conn}",
        sluice.pg_port()
    );
    let out = std::process::Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw protocol connection, for what no driver would send.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Connect from a given loopback address (127.0.0.2, …), as another
    /// host would.
    pub fn connect_from(source: std::net::Ipv4Addr, port: u16) -> Raw {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&std::net::SocketAddr::from((source, 0)).into())
            .expect("bind the source address");
        socket
            .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
            .expect("tcp connect");
        let s: TcpStream = socket.into();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Raw { s, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // A refused write shows up as a closed connection on the next read.
        let _ = self.s.write_all(bytes);
    }

    /// Read one tagged message: (tag, body). `None` when the server closed.
    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let msg: Vec<u8> = self.buf.drain(..len + 1).collect();
                    return Some((msg[0], msg[5..].to_vec()));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read one byte (answers to SSLRequest / GSSENCRequest).
    pub fn recv_byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.s.read_exact(&mut b).expect("read byte");
        b[0]
    }

    /// Read messages until an ErrorResponse; return its fields by type.
    pub fn expect_error(&mut self) -> Vec<(u8, String)> {
        loop {
            match self.recv() {
                Some((b'E', body)) => return parse_fields(&body),
                Some(_) => continue,
                None => panic!("connection closed without an ErrorResponse"),
            }
        }
    }

    /// True when the server closes the connection within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// Send a startup packet and sign in by SCRAM; returns after ReadyForQuery.
    pub fn login(&mut self, user: &str, password: &str, database: &str) {
        self.send(&startup(&[("user", user), ("database", database)]));
        let mut scram = None;
        loop {
            let (tag, body) = self.recv().expect("server closed during login");
            let code = if tag == b'R' {
                i32::from_be_bytes([body[0], body[1], body[2], body[3]])
            } else {
                -1
            };
            match (tag, code) {
                (b'R', 10) => {
                    let s = postgres_protocol::authentication::sasl::ScramSha256::new(
                        password.as_bytes(),
                        postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
                    );
                    let mut m = Vec::new();
                    m.extend_from_slice(b"SCRAM-SHA-256\0");
                    m.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                    m.extend_from_slice(s.message());
                    self.send(&message(b'p', &m));
                    scram = Some(s);
                }
                (b'R', 11) => {
                    let s = scram.as_mut().unwrap();
                    s.update(&body[4..]).unwrap();
                    let msg = s.message().to_vec();
                    self.send(&message(b'p', &msg));
                }
                (b'R', 12) | (b'R', 0) => {}
                (b'Z', _) => return,
                (b'E', _) => panic!("login failed: {:?}", parse_fields(&body)),
                _ => {}
            }
        }
    }
}

pub fn parse_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let kind = body[i];
        let end = body[i + 1..].iter().position(|&b| b == 0).unwrap() + i + 1;
        out.push((
            kind,
            String::from_utf8_lossy(&body[i + 1..end]).into_owned(),
        ));
        i = end + 1;
    }
    out
}

pub fn field(fields: &[(u8, String)], kind: u8) -> String {
    fields
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A tagged message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A protocol 3.0 startup packet.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    startup_version(3, 0, params)
}

pub fn startup_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(((major as i32) << 16) | minor as i32).to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    message(b'Q', &b)
}

/// Peak resident memory of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A one-thread HTTP server (a webhook or OTLP receiver) that answers 200
/// to every POST and hands over the bodies that are JSON. Returns its URL
/// (ending in `path`).
pub fn json_receiver(path: &str) -> (String, std::sync::mpsc::Receiver<serde_json::Value>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            if let Ok(v) = serde_json::from_slice(&body) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    (url, rx)
}
