//! TLS for the client port, from PEM files that may be replaced while Ferry
//! runs (cert-manager rotates them in place): the certificate is reloaded when
//! its files change, without a restart and without dropping connections.

use super::parse::{err, ConfigError};
use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The client port's TLS setup.
#[derive(Clone, Debug)]
pub struct Tls {
    /// What the acceptor uses (HTTP/2 and HTTP/1.1 by ALPN).
    pub server: Arc<rustls::ServerConfig>,
    /// The certificate it serves, reloadable.
    pub certs: Arc<CertFiles>,
}

/// A certificate chain and key from PEM files, reloaded when the files change.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// (modified, length) of the two files when loaded.
    stamp: Option<[(SystemTime, u64); 2]>,
}

impl CertFiles {
    fn load(cert: &Path, key: &Path) -> Result<CertFiles, ConfigError> {
        let loaded = load(cert, key)?;
        Ok(CertFiles {
            cert: cert.into(),
            key: key.into(),
            current: RwLock::new(loaded),
        })
    }

    /// Reloads the files if either changed since they were read: `Ok(true)`
    /// when a new certificate is now served. A bad new file keeps the old
    /// certificate in service, and says why.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.cert, &self.key);
        if now.is_some() && now == self.current.read().stamp {
            return Ok(false);
        }
        let loaded = load(&self.cert, &self.key).map_err(|e| e.to_string())?;
        *self.current.write() = loaded;
        Ok(true)
    }

    /// The files, for logs.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().key.clone())
    }
}

fn stamp(cert: &Path, key: &Path) -> Option<[(SystemTime, u64); 2]> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

fn load(cert: &Path, key: &Path) -> Result<Loaded, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let stamp = stamp(cert, key);
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .or_else(|e| err(format!("tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return err(format!("tls_cert {}: no certificate in it", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .or_else(|e| err(format!("tls_key {}: {e}", key.display())))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .or_else(|e| err(format!("tls_key {}: {e}", key.display())))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .or_else(|e| err(format!("tls_cert/tls_key: {e}")))?;
    Ok(Loaded {
        key: Arc::new(certified),
        stamp,
    })
}

/// The admission webhook's TLS: its certificate, and with `client_ca` a
/// required client certificate signed by that CA (the API server's).
pub(crate) fn webhook_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Tls, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let certs = Arc::new(CertFiles::load(cert, key)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .or_else(|e| err(format!("TLS: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .or_else(|e| err(format!("webhook.client_ca {}: {e}", ca.display())))?;
            for c in cas {
                roots
                    .add(c)
                    .or_else(|e| err(format!("webhook.client_ca {}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return err(format!(
                    "webhook.client_ca {}: no certificate in it",
                    ca.display()
                ));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .or_else(|e| err(format!("webhook.client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(certs.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        server: Arc::new(server),
        certs,
    })
}

/// The TLS server configuration from PEM files: both or neither.
pub(crate) fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Tls>, ConfigError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return err("tls_cert and tls_key go together"),
    };
    let certs = Arc::new(CertFiles::load(cert, key)?);
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .or_else(|e| err(format!("TLS: {e}")))?
    .with_no_client_auth()
    .with_cert_resolver(certs.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Tls {
        server: Arc::new(server),
        certs,
    }))
}
