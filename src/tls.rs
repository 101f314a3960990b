//! TLS with rustls (the `ring` provider): the inbound certificate and the client config
//! for an `https://` upstream.
//!
//! The inbound certificate is read from PEM files at load and re-read whenever their
//! content changes: each new handshake asks [`Certificate`] for the current key, so new
//! connections get the new certificate while open ones keep the session they have. A
//! file caught half-written, or a new key that does not match its certificate, is logged
//! and the previous certificate stays in use. Owns no socket and no HTTP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// The one crypto provider sluice uses (ring: no C toolchain beyond cc, no cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and key read from PEM files, with the digest of the files' bytes.
pub struct Loaded {
    /// Ready for handshakes.
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the certificate file's bytes then the key file's.
    pub digest: [u8; 32],
}

/// Reads a certificate chain (leaf first) and its private key, and checks they match.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, String> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain = certificates(&cert_pem, cert)?;
    let private = private_key(&key_pem, key)?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        format!(
            "\"{}\" and \"{}\" do not make a usable certificate: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        digest: digest(&cert_pem, &key_pem),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read \"{}\": {e}", path.display()))
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(cert);
    hash.update(key);
    hash.finalize().into()
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
pub fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("\"{}\": malformed PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "\"{}\" holds no PEM CERTIFICATE block",
            path.display()
        ));
    }
    Ok(chain)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        format!(
            "\"{}\" holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

/// The inbound certificate: the current key, swapped when its files change.
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Digest of the files as last loaded or tried, so a broken file is reported once.
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificate {
    /// Starts from what the config loaded.
    pub fn new(settings: &TlsSettings) -> Arc<Self> {
        Arc::new(Self {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
            current: ArcSwap::new(settings.loaded.clone()),
            seen: Mutex::new(settings.digest),
        })
    }

    /// An acceptor offering ALPN `h2` and `http/1.1`, resolving the certificate per handshake.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Re-reads the files; swaps the certificate in when their content changed and they
    /// make a valid certificate. Returns whether it swapped. Blocking (reads files).
    pub fn refresh(&self) -> bool {
        let (Ok(cert_pem), Ok(key_pem)) = (read(&self.cert), read(&self.key)) else {
            return false; // Mid-rotation (a file briefly missing): try again next tick.
        };
        let now = digest(&cert_pem, &key_pem);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return false;
        }
        *seen = now;
        drop(seen);
        match load(&self.cert, &self.key) {
            Ok(loaded) => {
                self.current.store(loaded.key);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded; new connections use it");
                true
            }
            Err(error) => {
                // Seen, so it is logged once; a later write is tried again.
                tracing::error!(%error, "TLS certificate not reloaded; keeping the current one");
                false
            }
        }
    }

    /// Polls the files every `interval` for as long as it runs.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.refresh()).await;
        }
    }
}

/// What an `https://` upstream connection trusts and presents, read from files.
#[derive(Debug, Default)]
pub struct ClientFiles<'a> {
    /// Extra CA certificates (PEM).
    pub ca_file: Option<&'a Path>,
    /// Trust only `ca_file`.
    pub ca_only: bool,
    /// Client certificate chain and key (PEM).
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// Builds the rustls client config for an upstream: the system's roots (unless `ca_only`)
/// plus `ca_file`, and the client certificate if one is given. ALPN is left to the caller.
pub fn client_config(files: &ClientFiles<'_>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    if !files.ca_only {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(%error, "a system CA certificate could not be read");
        }
        let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    }
    if let Some(ca_file) = files.ca_file {
        let pem = read(ca_file)?;
        for cert in certificates(&pem, ca_file)? {
            roots.add(cert).map_err(|e| {
                format!(
                    "\"{}\": a certificate is not a usable CA: {e}",
                    ca_file.display()
                )
            })?;
        }
    }
    if roots.is_empty() {
        return Err(
            "no trusted CA certificates: the system has none; set `ca_file` to the upstream's CA"
                .into(),
        );
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots);
    match files.identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates(&read(cert)?, cert)?;
            let private = private_key(&read(key)?, key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| format!("client certificate \"{}\": {e}", cert.display()))
        }
    }
}

/// Checks a `server_name` setting: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("\"{name}\" is not a DNS name or IP address"))
}
