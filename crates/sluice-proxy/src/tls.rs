//! TLS on both sides: Sluice's own certificate for clients, and the
//! connectors Sluice uses towards upstreams.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use sha2::Digest;
use sluice_audit::store::pg_tls::client_config;
use sluice_audit::StoreTls;
use sluice_config::{Target, TlsFiles, UpstreamTls};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Sluice's client-facing TLS.
#[derive(Clone)]
pub struct ServerTls {
    /// The acceptor.
    pub acceptor: TlsAcceptor,
    /// `tls-server-end-point` channel-binding data for our certificate.
    pub end_point: Vec<u8>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(provider::default_provider())
}

/// Load the configured certificate, or create (once) a self-signed one in
/// `data_dir/tls/` so that passwords and tokens never travel in clear.
///
/// With `client_ca`, clients are asked for a certificate; one that is sent
/// must chain to that CA (else the handshake fails), and clients that send
/// none still connect and sign in by password or token.
pub fn server_tls(
    files: Option<&TlsFiles>,
    client_ca: Option<&Path>,
    data_dir: &Path,
) -> Result<ServerTls, String> {
    let (cert_path, key_path) = match files {
        Some(f) => (f.cert.clone(), f.key.clone()),
        None => {
            let dir = data_dir.join("tls");
            let cert = dir.join("server.crt");
            let key = dir.join("server.key");
            if !cert.exists() || !key.exists() {
                make_self_signed(&dir, &cert, &key).map_err(|e| {
                    format!(
                        "cannot create a self-signed certificate in {}: {e}",
                        dir.display()
                    )
                })?;
            }
            (cert, key)
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect())
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", cert_path.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("tls.cert: no certificate in {}", cert_path.display()))?;
    let end_point = end_point_hash(leaf);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("tls.key: cannot read {}: {e}", key_path.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path)?),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls: certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        end_point,
    })
}

/// Verifies client certificates against the CAs in `path` (optional for clients).
fn client_verifier(
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let err = |e: String| format!("tls.client_ca: {}: {e}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no CA certificates in the file".into()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| err(e.to_string()))
}

fn make_self_signed(dir: &Path, cert: &Path, key: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !host.trim().is_empty() {
        names.push(host.trim().to_owned());
    }
    let made = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    std::fs::write(cert, made.cert.pem())?;
    write_private(key, made.key_pair.serialize_pem().as_bytes())?;
    tracing::info!(cert = %cert.display(), "created a self-signed TLS certificate; set [tls] to use your own");
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// `tls-server-end-point` (RFC 5929): the certificate hashed with its
/// signature's hash, SHA-256 for MD5 and SHA-1.
pub fn end_point_hash(cert: &[u8]) -> Vec<u8> {
    match signature_hash(cert) {
        SigHash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        SigHash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
        SigHash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
    }
}

enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

/// Find the outer signatureAlgorithm OID of a DER certificate.
fn signature_hash(der: &[u8]) -> SigHash {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, .. }, .. }
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let find = || -> Option<&[u8]> {
        let (_, h, _) = header(der)?;
        let inner = der.get(h..)?;
        let (_, th, tl) = header(inner)?;
        let alg = inner.get(th + tl..)?;
        let (_, ah, _) = header(alg)?;
        let oid = alg.get(ah..)?;
        let (tag, oh, ol) = header(oid)?;
        (tag == 0x06).then(|| oid.get(oh..oh + ol)).flatten()
    };
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    match find() {
        Some(oid) if SHA384.contains(&oid) => SigHash::Sha384,
        Some(oid) if SHA512.contains(&oid) => SigHash::Sha512,
        _ => SigHash::Sha256,
    }
}

/// How to open TLS towards one target's upstream (libpq's `sslmode`, the
/// same as towards a PostgreSQL audit store).
pub fn upstream_connector(target: &Target) -> Result<Option<TlsConnector>, String> {
    let mode = match target.tls {
        UpstreamTls::Disable => StoreTls::Disable,
        UpstreamTls::Prefer => StoreTls::Prefer,
        UpstreamTls::Require => StoreTls::Require,
        UpstreamTls::VerifyFull => StoreTls::VerifyFull,
    };
    let config = client_config(mode, target.ca_file.as_deref(), "ca_file")?;
    Ok(config.map(|c| TlsConnector::from(Arc::new(c))))
}

/// The server name to verify for `host:port`.
pub fn server_name(upstream: &str) -> Result<ServerName<'static>, String> {
    let host = upstream
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(upstream)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("invalid upstream host {host:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
        let a = server_tls(None, None, &dir).unwrap();
        let b = server_tls(None, None, &dir).unwrap();
        assert_eq!(a.end_point, b.end_point);
        assert_eq!(a.end_point.len(), 32);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn server_name_of_ip_and_host() {
        assert!(matches!(
            server_name("127.0.0.1:5432").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("db.example.com:5432").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
