//! The Google Cloud Storage driver: `gs://bucket[/prefix]` over the JSON API.
//!
//! The client is the community crate `gcloud-storage` (JSON API over HTTP). Google's own
//! `google-cloud-storage` 1.x is not used: it sends list and rewrite over gRPC storage v2, which no
//! emulator installable here speaks, so a driver built on it could not be tested at all.
//!
//! * Endpoint and credentials: when `STORAGE_EMULATOR_HOST` is set (`host:port` or
//!   `http://host:port`, as Google's SDKs read it) the store talks anonymously to that endpoint;
//!   otherwise to `https://storage.googleapis.com` with application default credentials. The
//!   client is built on first use, so [`super::open`] stays synchronous; a credentials failure
//!   surfaces on the first call (and the next call tries again). Building it installs rustls's
//!   `ring` provider as the process default, unless one is installed already (reqwest is built
//!   without its own: the default one, aws-lc, is a long C build).
//! * Keys are relative to the URL's prefix: it is prepended to every key and stripped from
//!   listed keys and prefixes. Objects whose names end in `/` (console "folder" placeholders)
//!   are not listed: they are not blobs.
//! * Flat listings pass GCS's page token through. Delimited listings use the driver's own token
//!   (the last entry returned, like the local driver) with `startOffset`, and count objects and
//!   prefixes together against `max_results`. That also makes them correct on fake-gcs-server,
//!   which applies `maxResults` to objects only and repeats the remaining prefixes on every page.
//! * `read` is one request: it streams the object and stops as soon as it outgrows the limit
//!   (an object over the limit costs at most the limit and one more chunk of download).
//! * `open_read` is one request too (`alt=media`, by hand: see `gcs/read.rs`): the answer's
//!   status says whether the object exists, its `Content-Length` gives the size, and the body is
//!   passed on chunk by chunk as the caller pulls it.
//! * `copy` is one request: a server-side `rewrite` (no data through the process) with
//!   `ifGenerationMatch=0` on the destination, so a destination that exists (another step's
//!   copy of the same content-addressed blob) is refused with 412 and left alone, and reported
//!   as [`CopyOutcome::AlreadyPresent`]. No stat of the destination and no GET of the source
//!   precede it: each was a round trip and a request of the budget for what the precondition
//!   and the rewrite's own answer (size, CRC32C) already say. A missing source is a 404. The
//!   `expected` digest is not verified: that would mean downloading the blob (the local driver
//!   verifies digests). Within a bucket a rewrite is GCS's own copy of the stored object;
//!   `ferryctl verify` compares the CRC32C GCS keeps of each copy and its source afterwards, and
//!   `--deep` hashes the copies.
//! * `delete` is one request: `DELETE` with `ifGenerationMatch` set to the version (generation)
//!   the caller listed, so an object written again since is refused (412) and kept.
//! * The driver does not retry: [`super::Retrying`] does, on errors for which
//!   [`StorageError::is_transient`] holds (HTTP 408, 429, 5xx, and requests that got no answer).
//!   429s are counted ([`GcsStore::throttled`]).
//!
//! Tested here: all of the above against fake-gcs-server 1.54 (JSON API, in memory) in
//! `tests/tests/storage_conformance.rs`, the same cases as the local driver; and status mapping,
//! retries, the precondition race, multi-call rewrites and the CRC32C check against a scripted
//! HTTP server in `gcs/tests.rs`, because fake-gcs-server ignores `ifGenerationMatch` (on rewrite,
//! copy, upload and delete alike) and finishes every rewrite in one call. Not tested: real GCS,
//! its authentication, and TLS.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use token_source::TokenSource;

mod delete;
mod list;
mod read;
mod request;
mod rewrite;

use super::{
    BlobStore, CopyOutcome, DeleteOutcome, ListOptions, ListPage, ObjectMeta, ObjectReader,
    StorageError,
};
use crate::ids::Digest;

const DEFAULT_PAGE: usize = 1000;
/// GCS answers at most this many entries a page, whatever `maxResults` says.
const MAX_PAGE: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for any single read from a connection (not for a whole transfer).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// Where the store sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// Real GCS with application default credentials.
    Google,
    /// An emulator (or any endpoint) without credentials, e.g. `http://127.0.0.1:4443`.
    Anonymous(String),
}

/// A bucket (or a prefix of one) in Google Cloud Storage, over the JSON API.
///
/// Keys are relative to the prefix. `copy` is server-side and checked with CRC32C, not with the
/// `expected` digest. Errors worth retrying are transient ([`StorageError::is_transient`]); the
/// store itself does not retry (wrap it in [`super::Retrying`], as [`super::open`] does).
pub struct GcsStore {
    bucket: String,
    /// Empty, or the URL's path ending with `/`.
    prefix: String,
    endpoint: Endpoint,
    connection: tokio::sync::OnceCell<Connection>,
    throttled: AtomicU64,
}

/// The clients, built on first use.
struct Connection {
    storage: Client,
    /// The same connection pool, for the calls `gcloud-storage` cannot make (see `rewrite`).
    http: reqwest::Client,
    /// E.g. `https://storage.googleapis.com`.
    base: String,
    token: Option<Arc<dyn TokenSource>>,
}

impl fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsStore")
            .field("url", &self.url())
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// An emulator address as Google's SDKs take it from `STORAGE_EMULATOR_HOST`.
fn emulator_base(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.starts_with("http://") || host.starts_with("https://") {
        host.to_owned()
    } else {
        format!("http://{host}")
    }
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty() && segment != "." && segment != ".."
}

/// A key is a plain relative path: no empty, `.` or `..` segment, no backslash or line break.
fn valid_key(key: &str) -> bool {
    !key.contains(['\\', '\r', '\n']) && key.split('/').all(valid_segment)
}

fn valid_bucket(bucket: &str) -> bool {
    (3..=222).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

impl GcsStore {
    /// The store `gs://bucket[/prefix]` names; see [`GcsStore::new`].
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("gs://")
            .ok_or_else(|| invalid("expected gs://bucket[/prefix]"))?;
        if rest.contains(['?', '#']) {
            return Err(invalid("a gs:// URL has no query or fragment"));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Self::new(bucket, prefix).map_err(|err| match err {
            StorageError::InvalidUrl { reason, .. } => invalid(&reason),
            other => other,
        })
    }

    /// A store for `prefix` (may be empty) in `bucket`: anonymous at `STORAGE_EMULATOR_HOST`
    /// (`host:port` or `http://host:port`) when that is set, else real GCS with application
    /// default credentials. Nothing connects until the first call.
    pub fn new(bucket: &str, prefix: &str) -> Result<Self, StorageError> {
        let endpoint = match std::env::var("STORAGE_EMULATOR_HOST") {
            Ok(host) if !host.trim().is_empty() => Endpoint::Anonymous(emulator_base(&host)),
            _ => Endpoint::Google,
        };
        Self::build(bucket, prefix, endpoint)
    }

    /// A store for `prefix` in `bucket` at an explicit endpoint (`host:port` or a URL), without
    /// credentials: for emulators and tests, whatever the environment says.
    pub fn with_endpoint(bucket: &str, prefix: &str, endpoint: &str) -> Result<Self, StorageError> {
        Self::build(bucket, prefix, Endpoint::Anonymous(emulator_base(endpoint)))
    }

    fn build(bucket: &str, prefix: &str, endpoint: Endpoint) -> Result<Self, StorageError> {
        let url = format!("gs://{bucket}/{prefix}");
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: url.clone(),
            reason: reason.to_owned(),
        };
        if !valid_bucket(bucket) {
            return Err(invalid(
                "the bucket name must be 3-222 characters of a-z, 0-9, '-', '_' and '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() && !valid_key(prefix) {
            return Err(invalid(
                "the prefix must be a plain relative path (no empty, '.' or '..' segments)",
            ));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            endpoint,
            connection: tokio::sync::OnceCell::new(),
            throttled: AtomicU64::new(0),
        })
    }

    /// How many requests GCS has refused with 429 (rate limiting) so far.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    async fn connection(&self) -> Result<&Connection, StorageError> {
        self.connection
            .get_or_try_init(|| Connection::new(&self.endpoint, self.url()))
            .await
    }

    fn object_name(&self, key: &str) -> Result<String, StorageError> {
        if !valid_key(key) {
            return Err(StorageError::InvalidKey(key.to_owned()));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// A listing prefix may end with `/` or with part of a name (`a/b` lists `a/b*`).
    fn list_prefix(&self, prefix: &str) -> Result<String, StorageError> {
        let (dirs, _name) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        if prefix.contains(['\\', '\r', '\n']) || (!dirs.is_empty() && !valid_key(dirs)) {
            return Err(StorageError::InvalidKey(prefix.to_owned()));
        }
        Ok(format!("{}{prefix}", self.prefix))
    }

    /// The key of a listed name, or `None` for names outside the prefix.
    fn key_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str())
            .filter(|key| !key.is_empty())
    }

    fn meta_of(&self, object: &Object) -> Option<ObjectMeta> {
        if object.name.ends_with('/') {
            return None; // A "folder" placeholder, not a blob.
        }
        Some(ObjectMeta {
            key: self.key_of(&object.name)?.to_owned(),
            size: u64::try_from(object.size).unwrap_or(0),
            crc32c: object.crc32c.clone(),
            version: Some(object.generation.to_string()),
            created: object.time_created.map(std::time::SystemTime::from),
        })
    }

    /// Maps an HTTP status to an error: 404 is `NotFound`, the rest keep their status.
    fn status_error(&self, key: &str, status: u16, message: String) -> StorageError {
        match status {
            404 => StorageError::NotFound {
                key: key.to_owned(),
            },
            429 => {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                StorageError::Backend {
                    key: key.to_owned(),
                    status: Some(status),
                    message,
                }
            }
            _ => StorageError::Backend {
                key: key.to_owned(),
                status: Some(status),
                message,
            },
        }
    }

    fn http_error(&self, key: &str, error: reqwest::Error) -> StorageError {
        if let Some(status) = error.status() {
            return self.status_error(key, status.as_u16(), error.to_string());
        }
        if error.is_timeout() || error.is_connect() || error.is_request() || error.is_body() {
            // No answer: the request may well succeed next time.
            StorageError::Backend {
                key: key.to_owned(),
                status: None,
                message: error_chain(&error),
            }
        } else {
            let kind = if error.is_decode() {
                std::io::ErrorKind::InvalidData
            } else {
                std::io::ErrorKind::Other
            };
            StorageError::Io {
                key: key.to_owned(),
                source: std::io::Error::new(kind, error),
            }
        }
    }

    fn error(&self, key: &str, error: GcsError) -> StorageError {
        match error {
            GcsError::Response(response) => self.status_error(key, response.code, response.message),
            GcsError::HttpClient(error) | GcsError::RawResponse(error, _) => {
                self.http_error(key, error)
            }
            GcsError::TokenSource(error) => StorageError::Backend {
                key: key.to_owned(),
                status: None,
                message: format!("getting a Google access token: {error}"),
            },
            other => StorageError::Io {
                key: key.to_owned(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }

    /// The object's metadata, `None` when it does not exist.
    async fn get(
        &self,
        connection: &Connection,
        key: &str,
        name: &str,
    ) -> Result<Option<Object>, StorageError> {
        let request = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: name.to_owned(),
            ..Default::default()
        };
        match connection.storage.get_object(&request).await {
            Ok(object) => Ok(Some(object)),
            Err(error) => match self.error(key, error) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

impl Connection {
    async fn new(endpoint: &Endpoint, url: String) -> Result<Self, StorageError> {
        // reqwest is built with `rustls-no-provider` (aws-lc is a long C build): use ring. An
        // error means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let setup_error = |reason: String| StorageError::Io {
            key: url.clone(),
            source: std::io::Error::other(reason),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|err| setup_error(format!("building the HTTP client: {err}")))?;
        let config = ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http.clone()).build()),
            ..Default::default()
        };
        let (config, base) = match endpoint {
            Endpoint::Anonymous(base) => {
                let config = ClientConfig {
                    storage_endpoint: base.clone(),
                    ..config
                };
                (config.anonymous(), base.clone())
            }
            Endpoint::Google => {
                let config = config.with_auth().await.map_err(|err| {
                    setup_error(format!(
                        "no usable Google application default credentials: {err}"
                    ))
                })?;
                (config, GOOGLE_ENDPOINT.to_owned())
            }
        };
        let token = (config.token_source_provider.as_ref()).map(|provider| provider.token_source());
        Ok(Self {
            storage: Client::new(config),
            http,
            base,
            token,
        })
    }
}

#[async_trait]
impl BlobStore for GcsStore {
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StorageError> {
        let name_prefix = self.list_prefix(prefix)?;
        let connection = self.connection().await?;
        let limit = if options.max_results == 0 {
            DEFAULT_PAGE
        } else {
            options.max_results
        };
        if options.delimited {
            let token = options.page_token.as_deref();
            (self.list_delimited(connection, prefix, name_prefix, limit, token)).await
        } else {
            let token = options.page_token.clone();
            (self.list_flat(connection, prefix, name_prefix, limit, token)).await
        }
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let name = self.object_name(key)?;
        let connection = self.connection().await?;
        let object = self.get(connection, key, &name).await?;
        Ok(object.and_then(|object| self.meta_of(&object)))
    }

    async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        let name = self.object_name(key)?;
        let connection = self.connection().await?;
        let too_large = || StorageError::TooLarge {
            key: key.to_owned(),
            limit: max_bytes,
        };
        // One request: the bytes themselves, counted as they arrive. An object over the limit
        // costs at most the limit and one more chunk of download.
        let request = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: name,
            ..Default::default()
        };
        let stream = (connection.storage)
            .download_streamed_object(&request, &Range::default())
            .await
            .map_err(|error| self.error(key, error))?;
        let mut stream = std::pin::pin!(stream);
        let mut data = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| self.error(key, error))?;
            if (data.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data.freeze())
    }

    /// One request: `GET ?alt=media`, whose headers give the size and whose body is the stream.
    async fn open_read(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        self.open_stream(key).await
    }

    /// One request: the rewrite, whose "does not exist" precondition refuses a destination
    /// that exists already (HTTP 412: [`CopyOutcome::AlreadyPresent`]).
    async fn copy(
        &self,
        src: &str,
        dst: &str,
        _expected: Option<&Digest>,
    ) -> Result<CopyOutcome, StorageError> {
        let src_name = self.object_name(src)?;
        let dst_name = self.object_name(dst)?;
        let connection = self.connection().await?;
        match self.rewrite(connection, src, &src_name, &dst_name).await? {
            Some(copied) => Ok(CopyOutcome::Copied(copied.size)),
            None => Ok(CopyOutcome::AlreadyPresent),
        }
    }

    /// One request: `DELETE` with `ifGenerationMatch` (HTTP 412: [`DeleteOutcome::Changed`]).
    async fn delete(&self, key: &str, version: &str) -> Result<DeleteOutcome, StorageError> {
        let name = self.object_name(key)?;
        let connection = self.connection().await?;
        self.delete_generation(connection, key, &name, version)
            .await
    }

    fn requests(&self, operation: super::Operation) -> (u32, u32) {
        match operation {
            // POST the rewrite (one call almost always); a destination that exists refuses it.
            super::Operation::Copy => (0, 1),
            // One DELETE.
            super::Operation::Delete => (0, 1),
            // One GET: the listing, the metadata or the bytes (an open's size comes with them).
            super::Operation::List
            | super::Operation::Stat
            | super::Operation::Read
            | super::Operation::OpenRead => (1, 0),
        }
    }

    fn url(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_owned()
    }
}

#[cfg(test)]
mod tests;
