//! Which endpoint of the OCI Distribution API a request names, parsed from its method, path and
//! query. Repository names hold slashes, so the path is split at the last endpoint marker
//! (`/manifests/`, `/blobs/`, `/tags/list`), as the distribution registry's own router does.

use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout::is_valid_tag;
use http::Method;

use super::answer::RegistryError;

/// Most entries one page of `tags/list` or `_catalog` holds; a larger `n` is refused.
pub const MAX_PAGE: usize = 1000;
/// Entries in a page when the client names no `n`.
pub const DEFAULT_PAGE: usize = 1000;

/// A page request: `n` entries after `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// How many entries, 1..=[`MAX_PAGE`].
    pub n: usize,
    /// The entry the previous page ended with.
    pub last: Option<String>,
}

/// What a manifest request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A tag.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

/// The endpoint a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`: the API version check.
    Base,
    /// `GET /v2/_catalog`.
    Catalog(Page),
    /// `GET /v2/<name>/tags/list`.
    Tags(RepositoryPath, Page),
    /// `GET|HEAD /v2/<name>/manifests/<reference>`.
    Manifest(RepositoryPath, Reference),
    /// `GET|HEAD /v2/<name>/blobs/<digest>`.
    Blob(RepositoryPath, Digest),
}

impl Route {
    /// The endpoint's name in metrics and logs.
    pub fn endpoint(&self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Catalog(_) => "catalog",
            Self::Tags(..) => "tags",
            Self::Manifest(..) => "manifest",
            Self::Blob(..) => "blob",
        }
    }

    /// Parses a request. Every write method (and every upload path) is refused as
    /// `UNSUPPORTED`: this registry only serves pulls.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Self, RegistryError> {
        let path = decode_colons(path);
        let Some(rest) = path.strip_prefix("/v2/") else {
            return if path == "/v2" {
                read_only(method, Self::Base)
            } else {
                Err(RegistryError::NotFound)
            };
        };
        if rest.is_empty() {
            return read_only(method, Self::Base);
        }
        if rest == "_catalog" {
            return read_only(method, Self::Catalog(page(query)?));
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return read_only(method, Self::Tags(name_of(name)?, page(query)?));
        }
        if let Some((name, _)) = rest.rsplit_once("/blobs/uploads") {
            name_of(name)?;
            return Err(RegistryError::Unsupported);
        }
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            let name = name_of(name)?;
            return read_only(method, Self::Manifest(name, reference_of(reference)?));
        }
        if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
            let name = name_of(name)?;
            let digest = Digest::parse(digest).map_err(|_| RegistryError::DigestInvalid)?;
            return read_only(method, Self::Blob(name, digest));
        }
        Err(RegistryError::NotFound)
    }
}

/// Undoes the one escape a valid path may carry: `%3A` for the colon of a digest.
fn decode_colons(path: &str) -> std::borrow::Cow<'_, str> {
    if path.contains('%') {
        std::borrow::Cow::Owned(path.replace("%3A", ":").replace("%3a", ":"))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

fn read_only(method: &Method, route: Route) -> Result<Route, RegistryError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(route)
    } else {
        Err(RegistryError::Unsupported)
    }
}

fn name_of(name: &str) -> Result<RepositoryPath, RegistryError> {
    RepositoryPath::parse(name).map_err(|_| RegistryError::NameInvalid(truncated(name)))
}

fn reference_of(reference: &str) -> Result<Reference, RegistryError> {
    if reference.contains(':') {
        return Digest::parse(reference)
            .map(Reference::Digest)
            .map_err(|_| RegistryError::DigestInvalid);
    }
    if is_valid_tag(reference) {
        Ok(Reference::Tag(reference.to_owned()))
    } else {
        Err(RegistryError::TagInvalid(truncated(reference)))
    }
}

fn page(query: Option<&str>) -> Result<Page, RegistryError> {
    let mut page = Page {
        n: DEFAULT_PAGE,
        last: None,
    };
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "n" => {
                page.n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| RegistryError::PaginationNumberInvalid(truncated(&value)))?;
            }
            "last" if !value.is_empty() => page.last = Some(truncated(&value)),
            _ => {}
        }
    }
    Ok(page)
}

/// Input echoed in an error, cut to a length a response may carry.
fn truncated(value: &str) -> String {
    value.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn get(path: &str) -> Result<Route, RegistryError> {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        Route::parse(&Method::GET, path, query)
    }

    fn name(path: &str) -> RepositoryPath {
        RepositoryPath::parse(path).expect("valid")
    }

    #[test]
    fn names_with_slashes_split_at_the_last_marker() {
        assert_eq!(get("/v2/"), Ok(Route::Base));
        assert_eq!(
            get("/v2/a/manifests/b/manifests/latest"),
            Ok(Route::Manifest(
                name("a/manifests/b"),
                Reference::Tag("latest".into())
            ))
        );
        assert_eq!(
            get(&format!(
                "/v2/group/app/blobs/{}",
                DIGEST.replace(':', "%3A")
            )),
            Ok(Route::Blob(
                name("group/app"),
                Digest::parse(DIGEST).expect("digest")
            ))
        );
        assert_eq!(
            get("/v2/group/app/tags/list?n=2&last=v1"),
            Ok(Route::Tags(
                name("group/app"),
                Page {
                    n: 2,
                    last: Some("v1".into())
                }
            ))
        );
        assert_eq!(
            get("/v2/_catalog"),
            Ok(Route::Catalog(Page {
                n: DEFAULT_PAGE,
                last: None
            }))
        );
    }

    #[test]
    fn bad_input_gets_the_spec_s_codes() {
        assert_eq!(
            get("/v2/Group/manifests/latest"),
            Err(RegistryError::NameInvalid("Group".into()))
        );
        assert_eq!(
            get("/v2/group/manifests/sha256:xyz"),
            Err(RegistryError::DigestInvalid)
        );
        assert_eq!(
            get("/v2/group/blobs/latest"),
            Err(RegistryError::DigestInvalid)
        );
        assert_eq!(
            get("/v2/group/manifests/.hidden"),
            Err(RegistryError::TagInvalid(".hidden".into()))
        );
        for n in ["0", "1001", "-1", "x"] {
            assert_eq!(
                get(&format!("/v2/_catalog?n={n}")),
                Err(RegistryError::PaginationNumberInvalid(n.into()))
            );
        }
        assert_eq!(get("/v3/"), Err(RegistryError::NotFound));
        assert_eq!(get("/v2/group/elsewhere"), Err(RegistryError::NotFound));
    }

    #[test]
    fn every_write_is_unsupported() {
        for (method, path) in [
            (Method::PUT, "/v2/group/app/manifests/latest"),
            (Method::DELETE, "/v2/group/app/manifests/latest"),
            (Method::POST, "/v2/group/app/blobs/uploads/"),
            (Method::PATCH, "/v2/group/app/blobs/uploads/1234"),
            (Method::GET, "/v2/group/app/blobs/uploads/1234"),
            (Method::DELETE, &format!("/v2/group/app/blobs/{DIGEST}")),
        ] {
            assert_eq!(
                Route::parse(&method, path, None),
                Err(RegistryError::Unsupported),
                "{method} {path}"
            );
        }
    }
}
