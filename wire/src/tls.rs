//! TLS with rustls: a server's certificate and key, and the CA a client verifies the
//! servers it calls against. PEM files, read at start-up. The `ring` provider is named
//! explicitly, so nothing depends on a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a server's certificate chain and private key are.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerTls {
    /// The server side of TLS: the chain and key, HTTP/2 and HTTP/1.1 offered.
    pub fn config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading certificates from {}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("reading a private key from {}", self.key.display()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the certificate and the key do not go together")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client's TLS: servers are trusted if their certificate chains to a CA in `ca`.
pub fn client_config(ca: &Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading CA certificates from {}", ca.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("a certificate in {}", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a CA certificate in {}", ca.display()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
