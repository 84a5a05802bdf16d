//! TLS material from PEM files (mounted from Kubernetes Secrets), turned into rustls server and
//! client configurations, and swapped in place when the files change so that a renewed
//! certificate is used by the next connection without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Paths of the PEM files; any may be absent (a client may have only a CA, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain this process presents.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// CA bundle that verifies peers.
    pub ca: Option<PathBuf>,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("{0}")]
    Rustls(String),
}

/// One consistent reading of the files, built into configurations.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// Bytes read, to tell whether the files changed.
    fingerprint: Vec<u8>,
    /// Server side: present when a certificate and key are configured.
    pub server: Option<Arc<ServerConfig>>,
    /// The same server identity for HTTP/1.1 endpoints (the registry endpoint): ALPN offers
    /// `http/1.1` instead of `h2`.
    pub https_server: Option<Arc<ServerConfig>>,
    /// Client side: present when a CA is configured (TLS to the other service).
    pub client: Option<Arc<ClientConfig>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            path: path.to_owned(),
            what: format!("bad PEM: {err}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "holds no CERTIFICATE".to_owned(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const H2: &[u8] = b"h2";

impl TlsFiles {
    /// Reads the files and builds the configurations.
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        let cert = self.cert.as_deref().map(|p| read(p).map(|b| (p, b)));
        let key = self.key.as_deref().map(|p| read(p).map(|b| (p, b)));
        let ca = self.ca.as_deref().map(|p| read(p).map(|b| (p, b)));
        let cert = cert.transpose()?;
        let key = key.transpose()?;
        let ca = ca.transpose()?;
        let mut fingerprint = Vec::new();
        for (_, bytes) in [&cert, &key, &ca].into_iter().flatten() {
            fingerprint.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            fingerprint.extend_from_slice(bytes);
        }
        let roots = match &ca {
            None => None,
            Some((path, pem)) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(path, pem)? {
                    roots.add(cert).map_err(|err| TlsError::Pem {
                        path: path.to_path_buf(),
                        what: format!("not a usable CA certificate: {err}"),
                    })?;
                }
                Some(Arc::new(roots))
            }
        };
        let identity = match (&cert, &key) {
            (Some((cert_path, cert_pem)), Some((key_path, key_pem))) => {
                let chain = certificates(cert_path, cert_pem)?;
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| TlsError::Pem {
                    path: key_path.to_path_buf(),
                    what: format!("holds no usable PRIVATE KEY: {err}"),
                })?;
                Some((chain, key))
            }
            _ => None,
        };
        let rustls_error = |err: rustls::Error| TlsError::Rustls(err.to_string());
        let server = match &identity {
            None => None,
            Some((chain, key)) => {
                let builder = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(rustls_error)?;
                let builder = match &roots {
                    // Client certificates are verified when shown, but not demanded at the
                    // handshake: callers without one (ferryctl with a token) are judged per call
                    // by the admission layer.
                    Some(roots) => builder.with_client_cert_verifier(
                        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                            .allow_unauthenticated()
                            .build()
                            .map_err(|err| TlsError::Rustls(err.to_string()))?,
                    ),
                    None => builder.with_no_client_auth(),
                };
                let mut config = builder
                    .with_single_cert(chain.clone(), key.clone_key())
                    .map_err(rustls_error)?;
                config.alpn_protocols = vec![H2.to_vec()];
                Some(Arc::new(config))
            }
        };
        let client = match &roots {
            None => None,
            Some(roots) => {
                let builder = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(rustls_error)?
                    .with_root_certificates(roots.clone());
                let mut config = match identity {
                    Some((chain, key)) => builder
                        .with_client_auth_cert(chain, key)
                        .map_err(rustls_error)?,
                    None => builder.with_no_client_auth(),
                };
                config.alpn_protocols = vec![H2.to_vec()];
                Some(Arc::new(config))
            }
        };
        let https_server = server.as_ref().map(|grpc| {
            let mut https = ServerConfig::clone(grpc);
            https.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(https)
        });
        Ok(TlsMaterial {
            fingerprint,
            server,
            https_server,
            client,
        })
    }
}

impl TlsMaterial {
    /// Whether this server verifies client certificates (it serves TLS and has a CA).
    pub fn verifies_clients(&self) -> bool {
        self.server.is_some() && self.client.is_some()
    }
}

impl super::Fingerprinted for TlsMaterial {
    fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }
}

/// The current TLS material, reloaded from its files in the background.
pub type ReloadingTls = super::Reloading<TlsMaterial>;

impl ReloadingTls {
    /// Loads `files` now and checks them again every `every` (see [`super::Reloading`]).
    pub fn from_files(files: TlsFiles, every: Duration) -> Result<Self, TlsError> {
        super::Reloading::start("TLS certificates", move || files.load(), every)
    }

    /// The server configuration in use now, if this process serves TLS.
    pub fn server(&self) -> Option<Arc<ServerConfig>> {
        self.current().server.clone()
    }

    /// The HTTP/1.1 server configuration in use now, if this process serves TLS.
    pub fn https_server(&self) -> Option<Arc<ServerConfig>> {
        self.current().https_server.clone()
    }

    /// The client configuration in use now, if calls to the other service use TLS.
    pub fn client(&self) -> Option<Arc<ClientConfig>> {
        self.current().client.clone()
    }
}

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes the connection from `peer` with `config` within [`HANDSHAKE_TIMEOUT`]. A failed
/// or slow handshake is logged and gives `None`.
pub async fn handshake(
    config: Arc<ServerConfig>,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            None
        }
    }
}
