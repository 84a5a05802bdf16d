//! Calling the other Ferry service: a channel that speaks TLS when a CA is configured (with this
//! process's certificate as its client identity, re-read for every new connection so renewed
//! certificates are used), and that adds the bearer token and the trace context to every call.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::security::tls::ReloadingTls;

/// A channel to a Ferry service with [`CallCredentials`] on every call.
pub type Connection = InterceptedService<Channel, CallCredentials>;

/// Adds `authorization: Bearer <token>` (when configured) and `traceparent` to every call.
#[derive(Debug, Clone, Default)]
pub struct CallCredentials {
    bearer: Option<tonic::metadata::AsciiMetadataValue>,
}

impl CallCredentials {
    /// Credentials presenting `token`, if any.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            bearer: token.and_then(|t| format!("Bearer {t}").parse().ok()),
        }
    }
}

impl Interceptor for CallCredentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        crate::telemetry::traces::inject(request.metadata_mut());
        Ok(request)
    }
}

/// How this process connects to the other Ferry service.
#[derive(Debug, Clone, Default)]
pub struct Connector {
    tls: Option<ReloadingTls>,
    credentials: CallCredentials,
}

/// Options of one channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOptions<'a> {
    /// Name the server's certificate must carry; by default the URL's host. A `dns://` importer
    /// name resolves to pod addresses, which are dialled with the name as the expected identity.
    pub server_name: Option<&'a str>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Deadline of every call on the channel, if any.
    pub timeout: Option<Duration>,
}

impl Default for ChannelOptions<'_> {
    fn default() -> Self {
        Self {
            server_name: None,
            connect_timeout: Duration::from_secs(5),
            timeout: None,
        }
    }
}

impl Connector {
    /// A connector using `tls` (when its CA is set) and presenting `token`.
    pub fn new(tls: Option<ReloadingTls>, token: Option<&str>) -> Self {
        Self {
            tls,
            credentials: CallCredentials::new(token),
        }
    }

    /// A channel to `url` that connects on first use. `https://` URLs and every URL when a CA is
    /// configured use TLS; `https://` without a CA is refused (there is nothing to verify with).
    pub fn lazy(
        &self,
        url: &str,
        options: ChannelOptions<'_>,
    ) -> Result<Connection, tonic::transport::Error> {
        Ok(self.wrap(self.channel(url, options)?))
    }

    /// Like [`Self::lazy`], then connects once so that an unreachable server is reported now.
    pub async fn connect(
        &self,
        url: &str,
        options: ChannelOptions<'_>,
    ) -> Result<Connection, tonic::transport::Error> {
        let mut channel = self.channel(url, options)?;
        tower::ServiceExt::<http::Request<tonic::body::Body>>::ready(&mut channel).await?;
        Ok(self.wrap(channel))
    }

    fn wrap(&self, channel: Channel) -> Connection {
        InterceptedService::new(channel, self.credentials.clone())
    }

    fn channel(
        &self,
        url: &str,
        options: ChannelOptions<'_>,
    ) -> Result<Channel, tonic::transport::Error> {
        let tls = self.tls.clone().filter(|t| t.client().is_some());
        let plain = match (url.strip_prefix("https://"), &tls) {
            (Some(rest), Some(_)) => format!("http://{rest}"),
            // Without a CA, tonic refuses https:// with its own clear error.
            _ => url.to_owned(),
        };
        let mut endpoint = Endpoint::from_shared(plain)?.connect_timeout(options.connect_timeout);
        if let Some(timeout) = options.timeout {
            endpoint = endpoint.timeout(timeout);
        }
        Ok(match tls {
            None => endpoint.connect_lazy(),
            Some(tls) => {
                let server_name = options.server_name.map(str::to_owned);
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                    let tls = tls.clone();
                    let server_name = server_name.clone();
                    async move { connect_tls(&tls, &uri, server_name.as_deref()).await }
                }))
            }
        })
    }
}

async fn connect_tls(
    tls: &ReloadingTls,
    uri: &Uri,
    server_name: Option<&str>,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, std::io::Error> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    // An IPv6 literal comes bracketed in a URI; the resolver and the name check want it bare.
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("{uri} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let config = tls
        .client()
        .ok_or_else(|| invalid("no CA configured for TLS".to_owned()))?;
    let name = server_name.unwrap_or(host);
    let name = ServerName::try_from(name.to_owned())
        .map_err(|err| invalid(format!("{name:?} is not a server name: {err}")))?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(stream))
}
