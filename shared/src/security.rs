//! Who may talk to a Ferry service, and how much at once: TLS (mutual between the scheduler and
//! the importers), bearer tokens with a read and an admin scope, and the admission limits
//! (timeout, concurrency, request size). Both binaries take the same [`SecurityArgs`].
//!
//! - [`tls`]: certificate files loaded into rustls configurations and reloaded when they change.
//! - [`tokens`]: the token table (`<scope> <token>` lines), reloaded when it changes.
//! - [`crate::grpc::admission`]: the tower layer that enforces all of it on every request.

pub mod tls;
pub mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::ConfigCheck;

pub use tokens::{Scope, TokenTable};

/// Seconds between checks of the TLS and token files, unless configured.
pub const DEFAULT_RELOAD_SECS: u64 = 10;
/// A call's deadline in seconds, unless configured.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 60;
/// Calls served at once, unless configured.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 256;
/// Largest request body in bytes, unless configured.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Security and admission flags shared by `ferry-scheduler` and `ferry-importer`.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain this process presents (as a server, and as a client to the other
    /// Ferry service). With the key, the gRPC port speaks TLS.
    #[arg(long, env = "FERRY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "FERRY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle: verifies the server when this process calls the other Ferry service (and
    /// turns TLS on for those calls), and verifies client certificates this server is shown.
    #[arg(long, env = "FERRY_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Seconds between checks of the TLS and token files for changes.
    #[arg(long, env = "FERRY_TLS_RELOAD_SECS", default_value_t = DEFAULT_RELOAD_SECS.to_string())]
    pub tls_reload_secs: String,
    /// File of accepted bearer tokens, one `<scope> <token>` per line (scope `read` or `admin`;
    /// `#` starts a comment). When set, every call needs a token or a verified client
    /// certificate.
    #[arg(long, env = "FERRY_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Bearer token this process presents when it calls the other Ferry service.
    #[arg(long, env = "FERRY_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Longest a call may take before it is answered DEADLINE_EXCEEDED, in seconds.
    #[arg(long, env = "FERRY_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS.to_string())]
    pub request_timeout_secs: String,
    /// Calls served at once; calls beyond it are shed with RESOURCE_EXHAUSTED.
    #[arg(long, env = "FERRY_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS.to_string())]
    pub max_concurrent_requests: String,
    /// Largest request body accepted, in bytes; a larger one is refused RESOURCE_EXHAUSTED.
    #[arg(long, env = "FERRY_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES.to_string())]
    pub max_request_bytes: String,
    /// Plain-text address serving only `grpc.health.v1` (for kubelet probes when the gRPC port
    /// needs TLS); `off` serves none.
    #[arg(long, env = "FERRY_HEALTH_ADDR", default_value = "off")]
    pub health_addr: String,
}

impl Default for SecurityArgs {
    /// The flags' defaults: no TLS, no tokens, default limits, no health-only port.
    fn default() -> Self {
        Self {
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            tls_reload_secs: DEFAULT_RELOAD_SECS.to_string(),
            auth_tokens_file: None,
            auth_token: None,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS.to_string(),
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS.to_string(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES.to_string(),
            health_addr: "off".into(),
        }
    }
}

/// Validated security and admission settings.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Certificate files, when TLS is configured.
    pub tls: Option<tls::TlsFiles>,
    /// How often files are checked for changes.
    pub reload_every: Duration,
    /// The token file, when tokens are required.
    pub tokens_file: Option<PathBuf>,
    /// The token this process presents as a client.
    pub client_token: Option<String>,
    /// Admission limits.
    pub limits: Limits,
    /// The plain-text health address, if any.
    pub health_addr: Option<std::net::SocketAddr>,
}

/// Admission limits applied to every call except health checks.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deadline of one call.
    pub request_timeout: Duration,
    /// Calls in flight at once.
    pub max_concurrent: usize,
    /// Largest request body.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
            max_concurrent: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

impl SecurityArgs {
    /// Checks the flags, recording every problem in `check`.
    pub fn validate(&self, check: &mut ConfigCheck) -> SecurityConfig {
        let tls = match (&self.tls_cert_file, &self.tls_key_file, &self.tls_ca_file) {
            (None, None, None) => None,
            (cert, key, ca) => {
                if cert.is_some() != key.is_some() {
                    check.problem(
                        "FERRY_TLS_CERT_FILE",
                        "and FERRY_TLS_KEY_FILE must be set together",
                    );
                }
                Some(tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                })
            }
        };
        if let Some(files) = &tls
            && let Err(err) = files.load()
        {
            check.problem("FERRY_TLS_CERT_FILE", err);
        }
        if let Some(path) = &self.auth_tokens_file
            && let Err(err) = TokenTable::read(path)
        {
            check.problem("FERRY_AUTH_TOKENS_FILE", err);
        }
        if self
            .auth_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty() || t.contains(char::is_whitespace))
        {
            check.problem(
                "FERRY_AUTH_TOKEN",
                "must be a non-empty token without spaces",
            );
        }
        let reload = check.positive("FERRY_TLS_RELOAD_SECS", &self.tls_reload_secs);
        let timeout = check.positive("FERRY_REQUEST_TIMEOUT_SECS", &self.request_timeout_secs);
        let concurrent = check.positive(
            "FERRY_MAX_CONCURRENT_REQUESTS",
            &self.max_concurrent_requests,
        );
        let bytes = check.positive("FERRY_MAX_REQUEST_BYTES", &self.max_request_bytes);
        let defaults = Limits::default();
        SecurityConfig {
            tls,
            reload_every: Duration::from_secs(reload.unwrap_or(DEFAULT_RELOAD_SECS)),
            tokens_file: self.auth_tokens_file.clone(),
            client_token: self.auth_token.clone().filter(|t| !t.trim().is_empty()),
            limits: Limits {
                request_timeout: timeout.map_or(defaults.request_timeout, Duration::from_secs),
                max_concurrent: concurrent.map_or(defaults.max_concurrent, |n| n as usize),
                max_request_bytes: bytes.map_or(defaults.max_request_bytes, |n| n as usize),
            },
            health_addr: check.socket_addr_or_off("FERRY_HEALTH_ADDR", &self.health_addr),
        }
    }
}

impl Default for SecurityConfig {
    /// No TLS, no tokens, default limits: what tests and a laptop run use.
    fn default() -> Self {
        Self {
            tls: None,
            reload_every: Duration::from_secs(DEFAULT_RELOAD_SECS),
            tokens_file: None,
            client_token: None,
            limits: Limits::default(),
            health_addr: None,
        }
    }
}

/// Something loaded from files whose bytes tell whether the files changed.
pub trait Fingerprinted {
    /// The bytes read (or a digest of them).
    fn fingerprint(&self) -> &[u8];
}

/// A value loaded from files and reloaded in the background when they change (a Kubernetes
/// Secret mount is updated in place). A reload that fails keeps the value in use and logs why.
#[derive(Debug)]
pub struct Reloading<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<T: Fingerprinted + Send + Sync + 'static> Reloading<T> {
    /// Loads now (an error is returned) and then every `every` on a task of the current runtime.
    pub fn start<E, F>(what: &'static str, load: F, every: Duration) -> Result<Self, E>
    where
        E: std::fmt::Display + Send + 'static,
        F: Fn() -> Result<T, E> + Send + Sync + 'static,
    {
        let current = Arc::new(RwLock::new(Arc::new(load()?)));
        let shared = Arc::downgrade(&current);
        let load = Arc::new(load);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(slot) = shared.upgrade() else { return };
                let load = load.clone();
                match tokio::task::spawn_blocking(move || load()).await {
                    Ok(Ok(value)) => {
                        let mut slot = slot.write().unwrap_or_else(|e| e.into_inner());
                        if slot.fingerprint() != value.fingerprint() {
                            *slot = Arc::new(value);
                            tracing::info!("{what} changed; reloaded");
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "cannot reload {what}; keeping the ones in use");
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Self { current })
    }

    /// A value that never reloads.
    pub fn fixed(value: T) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(value))),
        }
    }

    /// The value in use now.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The security settings at run time: files loaded (and being reloaded), ready to serve and
/// to call the other service with.
#[derive(Debug, Clone)]
pub struct Security {
    /// TLS material, when configured.
    pub tls: Option<tls::ReloadingTls>,
    /// Accepted tokens, when required.
    pub tokens: Option<tokens::ReloadingTokens>,
    /// The token this process presents.
    pub client_token: Option<String>,
    /// Admission limits.
    pub limits: Limits,
    /// The plain-text health address, if any.
    pub health_addr: Option<std::net::SocketAddr>,
}

impl Security {
    /// Loads the configured files and starts their reloaders (call inside the runtime).
    pub fn start(config: &SecurityConfig) -> Result<Self, String> {
        let tls = config
            .tls
            .clone()
            .map(|files| tls::ReloadingTls::from_files(files, config.reload_every))
            .transpose()
            .map_err(|err| format!("FERRY_TLS_*: {err}"))?;
        let tokens = config
            .tokens_file
            .clone()
            .map(|path| tokens::ReloadingTokens::from_file(path, config.reload_every))
            .transpose()
            .map_err(|err| format!("FERRY_AUTH_TOKENS_FILE: {err}"))?;
        Ok(Self {
            tls,
            tokens,
            client_token: config.client_token.clone(),
            limits: config.limits,
            health_addr: config.health_addr,
        })
    }

    /// What a server of methods `read_methods` (the rest need admin) enforces.
    pub fn serve_options(
        &self,
        read_methods: &'static [&'static str],
    ) -> crate::grpc::ServeOptions {
        let verifies_certificates = self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.current().verifies_clients());
        crate::grpc::ServeOptions {
            tls: self.tls.clone().filter(|tls| tls.server().is_some()),
            admission: crate::grpc::admission::AdmissionLayer::new(
                crate::grpc::admission::AccessPolicy {
                    tokens: self.tokens.clone(),
                    verifies_certificates,
                    read_methods,
                },
                self.limits,
            ),
            health_addr: self.health_addr,
        }
    }

    /// How this process calls the other Ferry service.
    pub fn connector(&self) -> crate::grpc::client::Connector {
        crate::grpc::client::Connector::new(self.tls.clone(), self.client_token.as_deref())
    }
}
