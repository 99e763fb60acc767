//! `sluice login`, `sluice whoami` and `sluice connect`: sign in once with
//! the OIDC device flow, then reach any target with a fresh token as the
//! password, never a database password.
//!
//! Tokens are cached per issuer in `tokens.json` in the user's config
//! directory (`$SLUICE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/sluice`, else
//! `~/.config/sluice`), created with mode 0600 in a 0700 directory. An ID
//! token about to expire is refreshed with the refresh token.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_identity::http;

/// Refresh a token this long before it expires.
const REFRESH_MARGIN: u64 = 30;

/// The token cache file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cache {
    /// The issuer of the last `sluice login`, used when none is named.
    #[serde(default)]
    pub default_issuer: Option<String>,
    /// Tokens by issuer.
    #[serde(default)]
    pub issuers: BTreeMap<String, Entry>,
}

/// The tokens of one issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The OAuth client `sluice login` used.
    pub client_id: String,
    /// Where to refresh.
    pub token_endpoint: String,
    /// The ID token (the password by default).
    pub id_token: String,
    /// The access token.
    #[serde(default)]
    pub access_token: Option<String>,
    /// The refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// The cache directory.
pub fn config_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("SLUICE_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("sluice"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config/sluice"))
        .ok_or_else(|| "cannot find your config directory: set HOME or SLUICE_CONFIG_DIR".into())
}

fn cache_path() -> Result<PathBuf, String> {
    Ok(config_dir()?.join("tokens.json"))
}

impl Cache {
    /// Read the cache (empty if there is none).
    pub fn load() -> Result<Cache, String> {
        let path = cache_path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                format!(
                    "{}: not a token cache ({e}); remove it and run `sluice login`",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cache::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Write the cache with mode 0600 (directory 0700), atomically.
    pub fn save(&self) -> Result<PathBuf, String> {
        let path = cache_path()?;
        let dir = path.parent().map(PathBuf::from).unwrap_or_default();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".tokens.json.{}", std::process::id()));
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            // The mode given to open is masked by the umask; make sure.
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The issuer to use: the one named, else the last one logged in to.
    fn pick(&self, issuer: Option<&str>) -> Result<String, String> {
        match issuer.or(self.default_issuer.as_deref()) {
            Some(i) if self.issuers.contains_key(i) => Ok(i.to_owned()),
            Some(i) => Err(format!(
                "not logged in to {i}: run `sluice login --issuer {i}`"
            )),
            None => Err("not logged in: run `sluice login --issuer URL`".into()),
        }
    }
}

/// The claims of a JWT, unverified (Sluice verifies; this is for display
/// and expiry only).
pub fn claims(token: &str) -> Map<String, Value> {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn exp_of(token: &str) -> Option<u64> {
    claims(token).get("exp")?.as_f64().map(|e| e as u64)
}

/// Discovery for an issuer: (device_authorization_endpoint, token_endpoint).
fn endpoints(issuer: &str) -> Result<(Option<String>, String), String> {
    let doc = http::get_json(&sluice_identity::oidc::discovery_url(issuer))?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(format!(
            "{issuer}: the discovery document names another issuer; check the URL (exact, including any trailing /)"
        ));
    }
    let s = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
    let token = s("token_endpoint").ok_or("the issuer has no token_endpoint")?;
    Ok((s("device_authorization_endpoint"), token))
}

fn oauth_error(body: &Value) -> String {
    let e = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown error");
    match body.get("error_description").and_then(Value::as_str) {
        Some(d) => format!("{e}: {d}"),
        None => e.to_owned(),
    }
}

/// `sluice login --issuer URL`: the device authorization flow.
pub fn login(issuer: &str, client_id: &str, scope: &str) -> ExitCode {
    match run_login(issuer, client_id, scope) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice login: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_login(issuer: &str, client_id: &str, scope: &str) -> Result<(), String> {
    let (device_endpoint, token_endpoint) = endpoints(issuer)?;
    let device_endpoint = device_endpoint
        .ok_or("the issuer does not offer the device authorization flow (no device_authorization_endpoint)")?;
    let start = http::post_form(
        &device_endpoint,
        &[("client_id", client_id), ("scope", scope)],
    )?;
    if start.status != 200 {
        return Err(format!(
            "the issuer refused to start sign-in: {}",
            oauth_error(&start.body)
        ));
    }
    let field = |k: &str| start.body.get(k).and_then(Value::as_str).map(str::to_owned);
    let device_code = field("device_code").ok_or("no device_code in the answer")?;
    let user_code = field("user_code").ok_or("no user_code in the answer")?;
    let uri = field("verification_uri").ok_or("no verification_uri in the answer")?;
    let mut interval = start
        .body
        .get("interval")
        .and_then(Value::as_u64)
        .unwrap_or(5)
        .max(1);
    let expires_in = start
        .body
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(600);

    eprintln!("To sign in, open {uri} and enter the code {user_code}");
    if let Some(complete) = field("verification_uri_complete") {
        eprintln!("(or open {complete})");
    }
    eprint!("Waiting for approval");
    let deadline = Instant::now() + Duration::from_secs(expires_in);
    let grant = "urn:ietf:params:oauth:grant-type:device_code";
    let tokens = loop {
        std::thread::sleep(Duration::from_secs(interval));
        eprint!(".");
        if Instant::now() > deadline {
            eprintln!();
            return Err("the code expired before it was approved; run `sluice login` again".into());
        }
        let r = http::post_form(
            &token_endpoint,
            &[
                ("grant_type", grant),
                ("device_code", &device_code),
                ("client_id", client_id),
            ],
        )?;
        if r.status == 200 {
            eprintln!();
            break r.body;
        }
        match r.body.get("error").and_then(Value::as_str) {
            Some("authorization_pending") => {}
            // RFC 8628 §3.5: poll more slowly from now on.
            Some("slow_down") => interval += 5,
            _ => {
                eprintln!();
                return Err(format!("sign-in failed: {}", oauth_error(&r.body)));
            }
        }
    };
    let s = |k: &str| tokens.get(k).and_then(Value::as_str).map(str::to_owned);
    let id_token = s("id_token").ok_or("the issuer sent no ID token (is `openid` in --scope?)")?;
    let entry = Entry {
        client_id: client_id.to_owned(),
        token_endpoint,
        id_token,
        access_token: s("access_token"),
        refresh_token: s("refresh_token"),
    };
    let mut cache = Cache::load()?;
    cache.issuers.insert(issuer.to_owned(), entry.clone());
    cache.default_issuer = Some(issuer.to_owned());
    let path = cache.save()?;
    let c = claims(&entry.id_token);
    let who = c
        .get("email")
        .or_else(|| c.get("sub"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    eprintln!(
        "Signed in to {issuer} as {who}; tokens are cached in {}",
        path.display()
    );
    if entry.refresh_token.is_none() {
        eprintln!("(no refresh token was issued: run `sluice login` again when the token expires)");
    }
    Ok(())
}

/// The cached tokens for `issuer` (or the default), refreshed first when
/// the ID token expires within [`REFRESH_MARGIN`] seconds.
pub fn fresh(issuer: Option<&str>) -> Result<(String, Entry), String> {
    let mut cache = Cache::load()?;
    let issuer = cache.pick(issuer)?;
    let entry = cache.issuers[&issuer].clone();
    let expiring = exp_of(&entry.id_token).is_none_or(|e| e <= now() + REFRESH_MARGIN);
    if !expiring {
        return Ok((issuer, entry));
    }
    let Some(refresh) = entry.refresh_token.clone() else {
        return Err(format!(
            "your token has expired: run `sluice login --issuer {issuer}`"
        ));
    };
    let r = http::post_form(
        &entry.token_endpoint,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &entry.client_id),
        ],
    )?;
    if r.status != 200 {
        return Err(format!(
            "your sign-in has expired ({}): run `sluice login --issuer {issuer}`",
            oauth_error(&r.body)
        ));
    }
    let s = |k: &str| r.body.get(k).and_then(Value::as_str).map(str::to_owned);
    let updated = Entry {
        id_token: s("id_token").ok_or("the refresh gave no ID token")?,
        access_token: s("access_token").or(entry.access_token),
        // Issuers may rotate refresh tokens; keep the old one otherwise.
        refresh_token: s("refresh_token").or(Some(refresh)),
        ..entry
    };
    cache.issuers.insert(issuer.clone(), updated.clone());
    cache.save()?;
    Ok((issuer, updated))
}

/// Seconds as `4m 12s`.
fn human_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `sluice whoami`: who the cached token says you are, and until when.
pub fn whoami(issuer: Option<&str>, json: bool) -> ExitCode {
    let (issuer, entry) = match fresh(issuer) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("sluice whoami: {e}");
            return ExitCode::from(1);
        }
    };
    let c = claims(&entry.id_token);
    let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
    let groups: Vec<String> = match c.get("groups") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    let exp = exp_of(&entry.id_token);
    if json {
        let out = serde_json::json!({
            "issuer": issuer,
            "subject": s("sub"),
            "email": s("email"),
            "name": s("name"),
            "groups": groups,
            "expires_at": exp,
            "expires_in": exp.map(|e| e.saturating_sub(now())),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!("issuer:  {issuer}");
    let user = s("email").or_else(|| s("sub")).unwrap_or_default();
    match s("name") {
        Some(n) => println!("user:    {user} ({n})"),
        None => println!("user:    {user}"),
    }
    if let Some(sub) = s("sub") {
        println!("subject: {sub}");
    }
    println!(
        "groups:  {}",
        if groups.is_empty() {
            "(none)".to_owned()
        } else {
            groups.join(", ")
        }
    );
    match exp {
        Some(e) if e > now() => println!("expires: {} (in {})", utc(e), human_duration(e - now())),
        Some(e) => println!("expires: {} (expired)", utc(e)),
        None => println!("expires: unknown"),
    }
    ExitCode::SUCCESS
}

/// What `sluice connect` needs.
pub struct ConnectArgs {
    /// Target name (the database name).
    pub target: String,
    /// Sluice's `host:port`.
    pub proxy: String,
    /// Startup user name; default the token's email.
    pub user: Option<String>,
    /// Issuer; default the last one logged in to.
    pub issuer: Option<String>,
    /// libpq sslmode.
    pub sslmode: String,
    /// Use the access token instead of the ID token.
    pub access_token: bool,
    /// Print the connection instead of running psql.
    pub print: bool,
    /// Extra psql arguments.
    pub psql_args: Vec<String>,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn uri_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `sluice connect TARGET`: run psql with a fresh token, or print the settings.
pub fn connect(args: ConnectArgs) -> ExitCode {
    let (_issuer, entry) = match fresh(args.issuer.as_deref()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("sluice connect: {e}");
            return ExitCode::from(1);
        }
    };
    let token = if args.access_token {
        match entry.access_token {
            Some(t) => t,
            None => {
                eprintln!("sluice connect: no access token cached; drop --access-token");
                return ExitCode::from(1);
            }
        }
    } else {
        entry.id_token
    };
    let (host, port) = match args.proxy.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => {
            (h.trim_matches(['[', ']']).to_owned(), p.to_owned())
        }
        _ => {
            eprintln!("sluice connect: --proxy {:?} must be host:port", args.proxy);
            return ExitCode::from(2);
        }
    };
    // The token decides who you are; the user name is for the client's sake.
    let user = args.user.unwrap_or_else(|| {
        claims(&token)
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or("sluice")
            .to_owned()
    });
    let env = [
        ("PGHOST", host.clone()),
        ("PGPORT", port.clone()),
        ("PGUSER", user.clone()),
        ("PGDATABASE", args.target.clone()),
        ("PGSSLMODE", args.sslmode.clone()),
        ("PGPASSWORD", token),
    ];
    if args.print {
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        println!(
            "# postgresql://{}@{host_part}:{port}/{}?sslmode={}  (password: $PGPASSWORD)",
            uri_escape(&user),
            uri_escape(&args.target),
            uri_escape(&args.sslmode)
        );
        for (k, v) in &env {
            println!("export {k}={}", shell_quote(v));
        }
        return ExitCode::SUCCESS;
    }
    let psql = std::env::var("SLUICE_PSQL").unwrap_or_else(|_| "psql".into());
    let mut cmd = std::process::Command::new(&psql);
    cmd.args(&args.psql_args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    eprintln!("sluice connect: cannot run {psql}: {e}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(human_duration(252), "4m 12s");
        assert_eq!(human_duration(7), "7s");
        assert_eq!(human_duration(7300), "2h 1m");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        assert_eq!(uri_escape("alice@example.com"), "alice%40example.com");
    }

    #[test]
    fn claims_of_a_token() {
        let t = format!(
            "e30.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"exp":5,"email":"a@b"}"#)
        );
        assert_eq!(exp_of(&t), Some(5));
        assert_eq!(claims("garbage").len(), 0);
    }
}
