//! A read-only OCI Distribution endpoint: the pull and discovery parts of the specification
//! (v1.1), served by every importer on `FERRY_REGISTRY_ADDR`.
//!
//! Each repository is served by one of two code paths, chosen per request from the metadata
//! database, as the registry Ferry migrates for did during its migration:
//! - **new**: the repository's migration completed (`import_complete`) or it was created on the
//!   new platform (`native`): tags and manifests come from the metadata database, blob bytes
//!   from the `gitlab/` prefix;
//! - **old**: any other repository, including one in the middle of its final import, is served
//!   from the old storage layout exactly as the old registry serves it, until the commit.
//!
//! The `ferry-code-path` response header names the path that answered, and
//! `ferry_registry_requests_total` counts requests by path. Blobs stream from storage, so memory
//! stays bounded whatever their size. Every write method is refused as `UNSUPPORTED`.

mod answer;
mod catalog;
mod new;
mod old;
mod route;
mod server;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use ferry_shared::ids::RepositoryPath;
use ferry_shared::security::Scope;
use ferry_shared::security::tokens::ReloadingTokens;
use ferry_shared::storage::{BlobStore, ByteStream};

pub use answer::{Body, CODE_PATH_HEADER, RegistryError};
pub use route::{MAX_PAGE, Page, Reference, Route};
pub use server::serve;

use crate::metrics::RegistryMetrics;
use crate::store::{MetadataStore, ServedRepository};

/// A manifest to answer with.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The digest of `payload`.
    pub digest: String,
    /// Its `Content-Type`.
    pub media_type: String,
    /// Its bytes.
    pub payload: Bytes,
}

/// A blob to answer with.
pub struct Blob {
    /// Its length.
    pub size: u64,
    /// Its bytes (`None` for a HEAD request).
    pub body: Option<ByteStream>,
}

/// The code path that serves a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePath {
    /// The old storage layout.
    Old,
    /// The metadata database and the `gitlab/` blobs.
    New(ServedRepository),
}

impl CodePath {
    /// Its name in the response header and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Old => "old",
            Self::New(_) => "new",
        }
    }
}

/// The registry endpoint's request handler.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<dyn BlobStore>,
    db: MetadataStore,
    tokens: Option<ReloadingTokens>,
    metrics: RegistryMetrics,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("storage", &self.inner.storage.url())
            .field("tokens", &self.inner.tokens.is_some())
            .finish()
    }
}

impl Registry {
    /// A handler reading `storage` and `db`; with `tokens`, every request must carry an
    /// accepted bearer token (read scope is enough).
    pub fn new(
        storage: Arc<dyn BlobStore>,
        db: MetadataStore,
        tokens: Option<ReloadingTokens>,
        metrics: RegistryMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage,
                db,
                tokens,
                metrics,
            }),
        }
    }

    /// Answers one request.
    pub async fn answer<B>(&self, request: &Request<B>) -> Response<Body> {
        let started = Instant::now();
        let head = request.method() == Method::HEAD;
        let route = self.authorize(request).and_then(|()| {
            Route::parse(
                request.method(),
                request.uri().path(),
                request.uri().query(),
            )
        });
        let endpoint = route.as_ref().map_or("none", Route::endpoint);
        let accepted = accepted_types(request.headers());
        let (code_path, answered) = match route {
            Ok(route) => self.route(route, head, accepted).await,
            Err(error) => (None, Err(error)),
        };
        let mut response = answered.unwrap_or_else(|error| error.response(head));
        let path_name = code_path.map_or("none", CodePath::as_str);
        if let Some(code_path) = code_path {
            response.headers_mut().insert(
                CODE_PATH_HEADER,
                HeaderValue::from_static(code_path.as_str()),
            );
        }
        self.inner.metrics.request(
            path_name,
            endpoint,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        response
    }

    fn authorize<B>(&self, request: &Request<B>) -> Result<(), RegistryError> {
        let Some(tokens) = &self.inner.tokens else {
            return Ok(());
        };
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match token.and_then(|token| tokens.current().scope(token.trim())) {
            Some(Scope::Read | Scope::Admin) => Ok(()),
            None => Err(RegistryError::Unauthorized),
        }
    }

    /// Which code path serves `name`.
    async fn code_path(&self, name: &RepositoryPath) -> Result<CodePath, RegistryError> {
        match self.inner.db.served_repository(name).await {
            Ok(Some(repository)) => Ok(CodePath::New(repository)),
            Ok(None) => Ok(CodePath::Old),
            Err(error) => Err(answer::unavailable(&error)),
        }
    }

    async fn route(
        &self,
        route: Route,
        head: bool,
        accepted: Vec<String>,
    ) -> (Option<CodePath>, Result<Response<Body>, RegistryError>) {
        let (name, request) = match route {
            Route::Base => return (None, Ok(json(StatusCode::OK, "{}".into(), head))),
            Route::Catalog(page) => return (None, self.catalog(&page, head).await),
            Route::Tags(name, page) => (name, RepositoryRequest::Tags(page)),
            Route::Manifest(name, reference) => {
                (name, RepositoryRequest::Manifest(reference, accepted))
            }
            Route::Blob(name, digest) => (name, RepositoryRequest::Blob(digest)),
        };
        match self.code_path(&name).await {
            Ok(path) => (
                Some(path),
                self.repository(&name, path, request, head).await,
            ),
            Err(error) => (None, Err(error)),
        }
    }

    async fn catalog(&self, page: &Page, head: bool) -> Result<Response<Body>, RegistryError> {
        let names = catalog::page(self.inner.storage.as_ref(), &self.inner.db, page).await?;
        let link = next_link("/v2/_catalog", page, &names);
        let body = serde_json::json!({ "repositories": names });
        Ok(with_link(
            json(StatusCode::OK, body.to_string(), head),
            link,
        ))
    }

    /// Answers a request about repository `name` from the code path that serves it.
    async fn repository(
        &self,
        name: &RepositoryPath,
        path: CodePath,
        request: RepositoryRequest,
        head: bool,
    ) -> Result<Response<Body>, RegistryError> {
        let storage = self.inner.storage.as_ref();
        let db = &self.inner.db;
        match request {
            RepositoryRequest::Tags(page) => {
                let tags = match path {
                    CodePath::New(repository) => new::tags(db, repository, &page).await,
                    CodePath::Old => old::tags(storage, name, &page).await,
                }?;
                let link = next_link(&format!("/v2/{name}/tags/list"), &page, &tags);
                let body = serde_json::json!({ "name": name.as_str(), "tags": tags });
                Ok(with_link(
                    json(StatusCode::OK, body.to_string(), head),
                    link,
                ))
            }
            RepositoryRequest::Manifest(reference, accepted) => {
                let manifest = match path {
                    CodePath::New(repository) => new::manifest(db, repository, &reference).await,
                    CodePath::Old => old::manifest(storage, name, &reference).await,
                }?;
                refuse_unaccepted(&manifest.media_type, &accepted)?;
                let mut response = answer::bytes_response(
                    StatusCode::OK,
                    &manifest.media_type,
                    manifest.payload,
                    head,
                );
                digest_headers(&mut response, &manifest.digest);
                Ok(response)
            }
            RepositoryRequest::Blob(digest) => {
                let blob = match path {
                    CodePath::New(repository) => {
                        new::blob(db, storage, repository, &digest, head).await
                    }
                    CodePath::Old => old::blob(storage, name, &digest, head).await,
                }?;
                if !head {
                    self.inner.metrics.blob_bytes(path.as_str(), blob.size);
                }
                let mut response =
                    answer::stream_response("application/octet-stream", blob.size, blob.body);
                digest_headers(&mut response, digest.as_str());
                Ok(response)
            }
        }
    }
}

/// What a request about one repository asks for.
enum RepositoryRequest {
    Tags(Page),
    /// With the media types the client accepts.
    Manifest(Reference, Vec<String>),
    Blob(ferry_shared::ids::Digest),
}

/// The media types a request's `Accept` headers list, parameters dropped, as the distribution
/// registry reads them (every header, each a comma-separated list).
fn accepted_types(headers: &header::HeaderMap) -> Vec<String> {
    (headers.get_all(header::ACCEPT).iter())
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|item| item.split(';').next())
        .map(|media_type| media_type.trim().to_ascii_lowercase())
        .filter(|media_type| !media_type.is_empty())
        .collect()
}

/// Refuses an OCI manifest or index to a client whose `Accept` does not list its type, as the
/// distribution registry does (with `MANIFEST_UNKNOWN`). Other kinds are served whatever the
/// client accepts: the registry's rewrites for old clients (schema 1, a list's default platform)
/// are not made.
fn refuse_unaccepted(media_type: &str, accepted: &[String]) -> Result<(), RegistryError> {
    let reason = match media_type {
        crate::manifest::OCI_MANIFEST => {
            "OCI manifest found, but accept header does not support OCI manifests"
        }
        crate::manifest::OCI_INDEX => {
            "OCI index found, but accept header does not support OCI indexes"
        }
        _ => return Ok(()),
    };
    if accepted.iter().any(|accepted| accepted == media_type) {
        Ok(())
    } else {
        Err(RegistryError::ManifestNotAccepted(reason))
    }
}

fn json(status: StatusCode, body: String, head: bool) -> Response<Body> {
    answer::bytes_response(status, "application/json", Bytes::from(body), head)
}

fn digest_headers(response: &mut Response<Body>, digest: &str) {
    if let Ok(value) = HeaderValue::from_str(digest) {
        response
            .headers_mut()
            .insert("docker-content-digest", value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
}

/// The `Link` to the next page when this one is full.
fn next_link(path: &str, page: &Page, entries: &[String]) -> Option<String> {
    let last = entries.last().filter(|_| entries.len() == page.n)?;
    let last: String = url::form_urlencoded::byte_serialize(last.as_bytes()).collect();
    Some(format!("<{path}?n={}&last={last}>; rel=\"next\"", page.n))
}

fn with_link(mut response: Response<Body>, link: Option<String>) -> Response<Body> {
    if let Some(value) = link.and_then(|link| HeaderValue::from_str(&link).ok()) {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oci_manifest_is_served_only_to_a_client_that_accepts_it() {
        let mut headers = header::HeaderMap::new();
        headers.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json; q=0.9"),
        );
        let docker_only = accepted_types(&headers);
        headers.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json, */*"),
        );
        let with_oci = accepted_types(&headers);
        let oci = crate::manifest::OCI_MANIFEST;
        assert!(matches!(
            refuse_unaccepted(oci, &docker_only),
            Err(RegistryError::ManifestNotAccepted(_))
        ));
        assert!(refuse_unaccepted(oci, &with_oci).is_ok());
        assert!(matches!(
            refuse_unaccepted(crate::manifest::OCI_INDEX, &with_oci),
            Err(RegistryError::ManifestNotAccepted(_))
        ));
        let docker = "application/vnd.docker.distribution.manifest.v2+json";
        assert!(refuse_unaccepted(docker, &[]).is_ok());
    }
}
