//! A real OpenID Provider for tests: `node tests/idp/server.js` (the npm
//! package `oidc-provider`), on a free port of 127.0.0.1, killed on drop.
//!
//! Helpers get real tokens from it: client credentials, the device flow
//! completed programmatically (the test-only `/test/approve` endpoint stands
//! in for the person at the browser), key rotation, and deliberately bad
//! tokens (`/test/mint`). Needs `npm ci` in `tests/idp` (done by
//! `scripts/install-test-deps.sh`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Accounts the IdP knows (email → groups): `alice@example.com` (dev,
/// region eu), `dan@example.com` (dba, dev; region us), `bob@example.com`
/// (analyst; region eu).
pub const ALICE: &str = "alice@example.com";
/// A DBA.
pub const DAN: &str = "dan@example.com";
/// An analyst.
pub const BOB: &str = "bob@example.com";
/// The public client of `sluice login`.
pub const CLI_CLIENT: &str = "sluice-cli";
/// A confidential client for a service (client credentials).
pub const SERVICE_CLIENT: (&str, &str) = ("etl-service", "etl-service-secret");
/// A confidential client for an agent acting for alice (client credentials).
pub const AGENT_CLIENT: (&str, &str) = ("report-agent", "report-agent-secret");

/// Tokens from a completed device flow.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// The ID token.
    pub id_token: String,
    /// The access token (opaque for the CLI client).
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: Option<String>,
}

/// A running test IdP.
pub struct IdpServer {
    child: Child,
    // Held open: the IdP exits when its stdin closes, so it never outlives the test.
    _stdin: ChildStdin,
    issuer: String,
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// The workspace root, two levels above the crate under test. Read at run
/// time (cargo and nextest set `CARGO_MANIFEST_DIR` for the test): the
/// value compiled in names the checkout that built this crate, which with
/// a shared target directory may be another clone, since removed.
fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
}

impl IdpServer {
    /// Start with tokens valid for 300 s.
    pub fn start() -> IdpServer {
        Self::start_with_ttl(300)
    }

    /// Start with ID and access tokens valid for `ttl_secs`.
    pub fn start_with_ttl(ttl_secs: u64) -> IdpServer {
        let dir = workspace_root().join("tests/idp");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "tests/idp/node_modules is missing: run scripts/install-test-deps.sh"
        );
        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .env("IDP_TOKEN_TTL", ttl_secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run node tests/idp/server.js (is Node.js installed?)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let out_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("IDP READY ") {
                    let _ = tx.send(issuer.to_owned());
                }
                if let Ok(mut l) = out_log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let err_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = err_log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(i) => i,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the test IdP did not start:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the issuer URL");
        IdpServer {
            child,
            _stdin: stdin,
            issuer,
            port,
            log,
        }
    }

    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// What the IdP printed so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// POST to a path of the IdP: (status, body).
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        basic: Option<(&str, &str)>,
    ) -> (u16, String) {
        let auth = basic
            .map(|(u, p)| format!("Authorization: Basic {}\r\n", base64(&format!("{u}:{p}"))))
            .unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{auth}\r\n{body}",
            self.port,
            body.len()
        );
        http(self.port, &request).unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log()))
    }

    fn post_json(&self, path: &str, body: &str) -> String {
        let (status, out) = self.post(path, "application/json", body, None);
        assert_eq!(status, 200, "POST {path}: {out}\n{}", self.log());
        out
    }

    /// An access token by client credentials (a JWT with audience `sluice`).
    pub fn client_credentials(&self, client: (&str, &str)) -> String {
        let (status, body) = self.post(
            "/token",
            "application/x-www-form-urlencoded",
            "grant_type=client_credentials",
            Some(client),
        );
        assert_eq!(status, 200, "client credentials: {body}");
        json_str(&body, "access_token").expect("access_token")
    }

    /// Start a device authorization for the CLI client: (device_code, user_code).
    pub fn device_authorization(&self) -> (String, String) {
        let (status, body) = self.post(
            "/device/auth",
            "application/x-www-form-urlencoded",
            "client_id=sluice-cli&scope=openid%20email%20profile%20groups%20offline_access",
            None,
        );
        assert_eq!(status, 200, "device authorization: {body}");
        (
            json_str(&body, "device_code").expect("device_code"),
            json_str(&body, "user_code").expect("user_code"),
        )
    }

    /// Approve a pending device code as `account` (what the person would do
    /// in the browser).
    pub fn approve(&self, user_code: &str, account: &str) {
        self.post_json(
            "/test/approve",
            &format!(r#"{{"user_code":"{user_code}","account":"{account}"}}"#),
        );
    }

    /// The whole device flow for `account`, done programmatically.
    pub fn device_flow(&self, account: &str) -> TokenSet {
        let (device_code, user_code) = self.device_authorization();
        self.approve(&user_code, account);
        let (status, body) = self.post(
            "/token",
            "application/x-www-form-urlencoded",
            &format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&client_id=sluice-cli&device_code={device_code}"),
            None,
        );
        assert_eq!(status, 200, "device token: {body}");
        TokenSet {
            id_token: json_str(&body, "id_token").expect("id_token"),
            access_token: json_str(&body, "access_token").expect("access_token"),
            refresh_token: json_str(&body, "refresh_token"),
        }
    }

    /// An ID token for `account` (by the device flow).
    pub fn id_token(&self, account: &str) -> String {
        self.device_flow(account).id_token
    }

    /// New signing keys; the old ones stay published only if `keep_old`.
    pub fn rotate(&self, keep_old: bool) {
        self.post_json("/test/rotate", &format!(r#"{{"keep_old":{keep_old}}}"#));
    }

    /// Sign arbitrary claims (a JSON object; `iss`, `iat`, `exp` are added
    /// unless given). `alg`: RS256, ES256, EdDSA, HS256 (keyed with the RSA
    /// modulus) or none. `key`: "current" or "foreign" (not published, same kid).
    pub fn mint(&self, claims_json: &str, alg: &str, key: &str) -> String {
        let body = self.post_json(
            "/test/mint",
            &format!(r#"{{"claims":{claims_json},"alg":"{alg}","key":"{key}"}}"#),
        );
        json_str(&body, "token").expect("token")
    }
}

impl Drop for IdpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange over a fresh connection: (status, body).
fn http(port: u16, request: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let mut body = &raw[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return Ok((status, String::from_utf8_lossy(body).into_owned()));
    }
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16)
            .map_err(|e| e.to_string())?;
        body = &body[eol + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}

/// The string value of `"key":"…"` in a flat JSON object (tokens and codes
/// need no unescaping).
pub fn json_str(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

fn base64(input: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = input.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The claims of a JWT (unverified), as JSON text.
pub fn jwt_claims(token: &str) -> String {
    let part = token.split('.').nth(1).unwrap_or_default();
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in part.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => continue,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(
            base64("etl-service:etl-service-secret"),
            "ZXRsLXNlcnZpY2U6ZXRsLXNlcnZpY2Utc2VjcmV0"
        );
        assert_eq!(base64("ab"), "YWI=");
        assert_eq!(
            json_str(r#"{"a": 1, "token" : "x.y.z"}"#, "token").as_deref(),
            Some("x.y.z")
        );
        assert_eq!(jwt_claims("e30.eyJzdWIiOiJhIn0.x"), r#"{"sub":"a"}"#);
    }
}
