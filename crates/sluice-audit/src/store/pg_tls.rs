//! TLS towards a PostgreSQL store (the audit trail and the approvals):
//! rustls under tokio-postgres, set by `[audit] store_tls` and
//! `store_ca_file`, with libpq's meaning of each mode.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

use crate::AuditError;

/// A tokio-postgres error as a message that says what went wrong: the
/// server's message and SQLSTATE (its `Display` is only "db error"), or
/// the error and its cause (a TLS or connection failure). Never holds the
/// password.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// TLS to a PostgreSQL store, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreTls {
    /// Plaintext.
    Disable,
    /// TLS if the server offers it, certificate not checked.
    Prefer,
    /// TLS or no connection, certificate not checked.
    Require,
    /// TLS, the certificate checked against `store_ca_file` (or the
    /// system's CAs) and the host name.
    VerifyFull,
}

/// Where a PostgreSQL store is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLocation {
    /// The URL (may hold a password: never print it).
    pub url: String,
    /// `store_tls`; unset: the URL's `sslmode` (`disable`, `prefer`,
    /// `require`), else `prefer`.
    pub tls: Option<StoreTls>,
    /// `store_ca_file`, for `verify-full`.
    pub ca_file: Option<PathBuf>,
}

impl PgLocation {
    /// The connection settings and the TLS connector to use with them.
    /// `password` overrides one in the URL; `application` names the
    /// connection in `pg_stat_activity`.
    pub fn connect_config(
        &self,
        password: Option<&str>,
        application: &str,
    ) -> Result<(tokio_postgres::Config, PgTls), AuditError> {
        let mut cfg: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|_| AuditError::Config("store: not a valid postgres:// URL".into()))?;
        if let Some(p) = password {
            cfg.password(p);
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(10));
        }
        cfg.application_name(application);
        let mode = self.tls.unwrap_or(match cfg.get_ssl_mode() {
            SslMode::Disable => StoreTls::Disable,
            SslMode::Require => StoreTls::Require,
            _ => StoreTls::Prefer,
        });
        cfg.ssl_mode(match mode {
            StoreTls::Disable => SslMode::Disable,
            StoreTls::Prefer => SslMode::Prefer,
            StoreTls::Require | StoreTls::VerifyFull => SslMode::Require,
        });
        Ok((cfg, PgTls::new(mode, self.ca_file.as_deref())?))
    }
}

/// The TLS connector for a store connection (`MakeTlsConnect`).
#[derive(Clone)]
pub struct PgTls {
    connector: Option<TlsConnector>,
}

impl PgTls {
    fn new(mode: StoreTls, ca_file: Option<&Path>) -> Result<PgTls, AuditError> {
        let config = client_config(mode, ca_file, "store_ca_file").map_err(AuditError::Config)?;
        Ok(PgTls {
            connector: config.map(|c| TlsConnector::from(Arc::new(c))),
        })
    }
}

/// A rustls client config for TLS to PostgreSQL with libpq's meaning of
/// `mode` (`None` for `disable`): `prefer` and `require` do not check the
/// certificate, `verify-full` checks it against `ca_file` (or the system's
/// CAs, when unset) and the host name. `ca_key` names the setting in errors.
pub fn client_config(
    mode: StoreTls,
    ca_file: Option<&Path>,
    ca_key: &str,
) -> Result<Option<rustls::ClientConfig>, String> {
    let provider = Arc::new(provider::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match mode {
        StoreTls::Disable => return Ok(None),
        StoreTls::Prefer | StoreTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
        StoreTls::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match ca_file {
                Some(path) => {
                    let bad =
                        |e: &dyn std::fmt::Display| format!("{ca_key} {}: {e}", path.display());
                    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                    }
                }
                None => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            if roots.is_empty() {
                return Err(format!(
                    "no CA certificates to verify the server with (set {ca_key})"
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(config))
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, io::Error> {
        // Called for every connection, TLS or not: errors wait for `connect`.
        Ok(PgTlsConnect {
            connector: self.connector.clone(),
            host: host.to_owned(),
        })
    }
}

/// One connection's handshake.
pub struct PgTlsConnect {
    connector: Option<TlsConnector>,
    host: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = self
                .connector
                .ok_or_else(|| io::Error::other("store_tls = \"disable\""))?;
            let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("store host {:?}: {e}", self.host),
                )
            })?;
            connector.connect(name, stream).await.map(PgTlsStream)
        })
    }
}

/// A TLS stream to the store.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding: `verify-full` is what authenticates
        // the server.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts any certificate but still checks the handshake signature, as
/// libpq's `prefer` and `require` do.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
