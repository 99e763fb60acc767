//! `sluice.toml`: parsing, validation and secret resolution.
//!
//! A config error names the file, the key and the reason. Secrets are read
//! from the environment or from files, never written inline, and never shown
//! by `Debug`.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_identity::{PrincipalKind, ScramVerifier};

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The key (`targets[0].password_env`), or `-` when the file as a whole is wrong.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// A secret value; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners.
    pub listen: Listen,
    /// Client-facing TLS; `None` means a self-signed certificate in the data directory.
    pub tls: Option<TlsFiles>,
    /// Databases clients may reach.
    pub targets: Vec<Target>,
    /// Local identities.
    pub users: Vec<User>,
    /// OIDC issuers (accepted so configs keep working; sign-in by token is not built yet).
    pub oidc: Vec<Oidc>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Where policies come from.
    pub policy: PolicyConfig,
}

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.cedar` files added to the built-in guardrails
    /// (relative paths are relative to the config file).
    pub dir: Option<PathBuf>,
    /// Built-in guardrails to switch off, by @id.
    #[serde(default)]
    pub disable: Vec<String>,
}

/// `[listen]`.
#[derive(Debug, Clone)]
pub struct Listen {
    /// PostgreSQL wire protocol listener.
    pub postgres: SocketAddr,
    /// HTTP admin listener.
    pub http: Option<SocketAddr>,
    /// Whether clients may connect without TLS.
    pub plaintext: Plaintext,
}

/// Who may connect without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plaintext {
    /// Anyone.
    Allow,
    /// Only clients on a loopback address (the default).
    Loopback,
    /// Nobody: TLS is required.
    Deny,
}

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// How Sluice talks TLS to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Never.
    Disable,
    /// If the server offers it, without verifying the certificate.
    Prefer,
    /// Always, without verifying the certificate.
    Require,
    /// Always, verifying the chain and the host name.
    VerifyFull,
}

/// One `[[targets]]` entry.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name clients use as their database name.
    pub name: String,
    /// Environment label (`production`, `staging`, …).
    pub environment: String,
    /// `host:port` of the upstream.
    pub upstream: String,
    /// Database name on the upstream.
    pub database: String,
    /// Sluice's own login on the upstream.
    pub user: String,
    /// Its password, if the server asks for one.
    pub password: Option<Secret>,
    /// TLS mode to the upstream.
    pub tls: UpstreamTls,
    /// CA bundle for `verify-full` (system roots when absent).
    pub ca_file: Option<PathBuf>,
}

impl Target {
    /// True for targets marked production.
    pub fn is_production(&self) -> bool {
        self.environment == "production"
    }
}

/// One `[[users]]` entry.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Human, service or agent.
    pub kind: PrincipalKind,
    /// Groups.
    pub groups: Vec<String>,
    /// SCRAM verifier.
    pub verifier: ScramVerifier,
    /// Attributes seen by policy.
    pub attributes: BTreeMap<String, String>,
}

/// One `[[oidc]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// Issuer URL.
    pub issuer: String,
    /// Expected audience.
    pub audience: String,
    /// Claim that names the principal.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Claim that lists groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_user_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}

/// `[limits]`: sizes and timeouts.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message a client may send, in bytes. (Server messages that
    /// could be large, DataRow and CopyData, are streamed and not held whole.)
    pub max_message_size: usize,
    /// Seconds a client has to finish startup and authentication.
    pub startup_timeout_secs: u64,
    /// Seconds to wait for an upstream to accept a connection.
    pub connect_timeout_secs: u64,
    /// Seconds SIGTERM waits for sessions to end before closing them.
    pub shutdown_timeout_secs: u64,
    /// Threads that run sessions; 0 means one per CPU.
    pub workers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // PostgreSQL's own limit for a single field is 1 GiB.
            max_message_size: 1 << 30,
            startup_timeout_secs: 10,
            connect_timeout_secs: 5,
            shutdown_timeout_secs: 30,
            workers: 0,
        }
    }
}

// ---- raw (as written) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: RawListen,
    tls: Option<RawTls>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    oidc: Vec<Oidc>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    policy: PolicyConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    postgres: String,
    http: Option<String>,
    #[serde(default = "default_plaintext")]
    plaintext: Plaintext,
}

fn default_plaintext() -> Plaintext {
    Plaintext::Loopback
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    environment: String,
    upstream: String,
    database: String,
    user: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_upstream_tls")]
    tls: UpstreamTls,
    ca_file: Option<PathBuf>,
}

fn default_upstream_tls() -> UpstreamTls {
    UpstreamTls::Prefer
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    kind: String,
    #[serde(default)]
    groups: Vec<String>,
    password_hash: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

impl Config {
    /// Load and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        let mut config = Self::parse(&text, &file, &|name| std::env::var(name).ok())?;
        if let Some(dir) = &config.policy.dir {
            if dir.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                config.policy.dir = Some(base.join(dir));
            }
        }
        Ok(config)
    }

    /// Parse config text; `env` looks up environment variables.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: file.to_owned(),
            key,
            reason,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let reason = e.message().to_owned();
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "-".into());
            err(key, reason)
        })?;

        let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|_| {
                err(
                    key.into(),
                    format!("{v:?} is not an address like 127.0.0.1:7432"),
                )
            })
        };
        let listen = Listen {
            postgres: addr("listen.postgres", &raw.listen.postgres)?,
            http: raw
                .listen
                .http
                .as_deref()
                .map(|h| addr("listen.http", h))
                .transpose()?,
            plaintext: raw.listen.plaintext,
        };

        let mut targets = Vec::new();
        for (i, t) in raw.targets.into_iter().enumerate() {
            let key = |k: &str| format!("targets[{i}].{k}");
            if t.name.is_empty() {
                return Err(err(key("name"), "must not be empty".into()));
            }
            if targets.iter().any(|o: &Target| o.name == t.name) {
                return Err(err(key("name"), format!("duplicate target {:?}", t.name)));
            }
            if !t.upstream.contains(':') {
                return Err(err(
                    key("upstream"),
                    format!("{:?} must be host:port", t.upstream),
                ));
            }
            let password = match (&t.password_env, &t.password_file) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        key("password_env"),
                        "set password_env or password_file, not both".into(),
                    ))
                }
                (Some(var), None) => Some(Secret(env(var).ok_or_else(|| {
                    err(
                        key("password_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?)),
                (None, Some(path)) => {
                    let v = std::fs::read_to_string(path).map_err(|e| {
                        err(
                            key("password_file"),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    Some(Secret(v.trim_end_matches(['\r', '\n']).to_owned()))
                }
                (None, None) => None,
            };
            if t.ca_file.is_some() && t.tls != UpstreamTls::VerifyFull {
                return Err(err(
                    key("ca_file"),
                    "only used with tls = \"verify-full\"".into(),
                ));
            }
            targets.push(Target {
                name: t.name,
                environment: t.environment,
                upstream: t.upstream,
                database: t.database,
                user: t.user,
                password,
                tls: t.tls,
                ca_file: t.ca_file,
            });
        }

        let mut users = Vec::new();
        for (i, u) in raw.users.into_iter().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            if users.iter().any(|o: &User| o.name == u.name) {
                return Err(err(key("name"), format!("duplicate user {:?}", u.name)));
            }
            let kind = u.kind.parse().map_err(|e| err(key("kind"), e))?;
            let verifier = ScramVerifier::parse(&u.password_hash).map_err(|e| {
                err(
                    key("password_hash"),
                    format!("{e} (make one with `sluice passwd`)"),
                )
            })?;
            users.push(User {
                name: u.name,
                kind,
                groups: u.groups,
                verifier,
                attributes: u.attributes,
            });
        }

        let limits = raw.limits;
        if limits.max_message_size < 8192 {
            return Err(err(
                "limits.max_message_size".into(),
                "must be at least 8192".into(),
            ));
        }

        Ok(Config {
            listen,
            tls: raw.tls.map(|t| TlsFiles {
                cert: t.cert,
                key: t.key,
            }),
            targets,
            users,
            oidc: raw.oidc,
            limits,
            policy: raw.policy,
        })
    }

    /// The target a client names as its database.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// A local user by name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "APP_PROD_DB_PASSWORD").then(|| "hunter2".to_owned())
    }

    fn minimal() -> String {
        format!(
            r#"
[listen]
postgres = "127.0.0.1:7432"
http = "127.0.0.1:7080"

[[targets]]
name = "app-prod"
environment = "production"
upstream = "127.0.0.1:5432"
database = "app"
user = "sluice_app"
password_env = "APP_PROD_DB_PASSWORD"

[[users]]
name = "alice"
kind = "human"
groups = ["dev"]
password_hash = "{}"
attributes = {{ region = "eu" }}
"#,
            sluice_identity::make_verifier("pw")
        )
    }

    #[test]
    fn the_design_contract_file_loads() {
        let c = Config::parse(&minimal(), "sluice.toml", &env).unwrap();
        assert_eq!(c.listen.postgres.port(), 7432);
        assert_eq!(c.listen.plaintext, Plaintext::Loopback);
        let t = c.target("app-prod").unwrap();
        assert!(t.is_production());
        assert_eq!(t.password.as_ref().unwrap().expose(), "hunter2");
        assert_eq!(t.tls, UpstreamTls::Prefer);
        let u = c.user("alice").unwrap();
        assert_eq!(u.kind, PrincipalKind::Human);
        assert_eq!(u.attributes["region"], "eu");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = Config::parse(&minimal(), "sluice.toml", &|_| None).unwrap_err();
        assert_eq!(e.to_string(), "sluice.toml: targets[0].password_env: environment variable APP_PROD_DB_PASSWORD is not set");

        let text = minimal().replace("kind = \"human\"", "kind = \"robot\"");
        let e = Config::parse(&text, "f.toml", &env).unwrap_err();
        assert_eq!(e.key, "users[0].kind");

        let text = minimal().replace("upstream =", "upstreem =");
        let e = Config::parse(&text, "f.toml", &env).unwrap_err();
        assert!(e.reason.contains("upstreem"), "{e}");
        assert!(e.key.starts_with("line "), "{e}");

        let text = minimal().replace("SCRAM-SHA-256$", "md5$");
        let e = Config::parse(&text, "f.toml", &env).unwrap_err();
        assert_eq!(e.key, "users[0].password_hash");
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let text = minimal().replace(
            "password_env = \"APP_PROD_DB_PASSWORD\"",
            &format!("password_file = {:?}", p.display().to_string()),
        );
        let c = Config::parse(&text, "f.toml", &env).unwrap();
        assert_eq!(c.targets[0].password.as_ref().unwrap().expose(), "s3cret");
    }
}
