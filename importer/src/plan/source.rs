//! What one listing of a repository's link files says: its tags (with the version of each
//! `current/link`), its manifest revisions and its linked layers.
//!
//! The old layout keeps a repository's links as objects whose names carry the digest
//! (`_layers/sha256/<hex>/link`, `_manifests/revisions/sha256/<hex>/link`), so one flat listing
//! of `<repository>/_` answers "is this linked?" for all of them at once, where a stat per link
//! cost a request and a round trip each. `_uploads/` sorts after both and is never read.
//!
//! Memory: a linked digest costs 32 bytes. Beyond [`MAX_LISTED_LINKS`] a repository's sets are
//! dropped and each link is looked up on its own again, as before.

use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout::{self, REPOSITORIES_PREFIX};
use ferry_shared::storage::{BlobStore, ListOptions};

use crate::error::StepError;

/// Linked digests a listing keeps (32 bytes each, so 8 MiB) before it falls back to a stat per
/// link.
pub const MAX_LISTED_LINKS: usize = 256 * 1024;

/// One tag directory of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTag {
    /// The tag, as stored (valid: [`SourceLinks::list`] refuses invalid ones).
    pub name: String,
    /// Whether it has a `current/link` (a tag without one is skipped, as the registry did).
    pub has_current: bool,
    /// The version of its `current/link` when listed, where the store names versions.
    pub version: Option<String>,
}

/// A repository's link files, as one listing found them.
#[derive(Debug, Default)]
pub struct SourceLinks {
    tags: Vec<SourceTag>,
    /// Linked digests, sorted once listed (a listing gives them in order already); `None` once
    /// over [`MAX_LISTED_LINKS`]. A sorted vector costs exactly 32 bytes a digest.
    revisions: Option<Vec<[u8; 32]>>,
    layers: Option<Vec<[u8; 32]>>,
    list_calls: u64,
}

/// Which link of a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `_manifests/revisions/sha256/<hex>/link`: the manifest is a revision of the repository.
    Revision,
    /// `_layers/sha256/<hex>/link`: the blob (config or layer) is linked to the repository.
    Layer,
}

fn sha256_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Which of a repository's links a [`SourceListing`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingScope {
    /// `_layers/` and `_manifests/` (everything but `_uploads/`): what a pre-import plans with.
    Links,
    /// `_manifests/tags/` only: the tags and their link versions, what a final import needs
    /// first (other links then answer by a stat).
    Tags,
}

/// A listing of a repository's links, page by page: a start lists the first page to see that
/// the repository exists, and its step goes on from there ([`Self::finish`]), so a small
/// repository costs the two one request.
#[derive(Debug)]
pub struct SourceListing {
    links: SourceLinks,
    prefix: String,
    root_len: usize,
    uploads: String,
    options: ListOptions,
    over: bool,
    /// Whether anything was listed under `_manifests/tags/`.
    tags_dir_used: bool,
}

impl SourceListing {
    /// Lists the first page of `path`'s links in `scope`.
    pub async fn begin(
        store: &dyn BlobStore,
        path: &RepositoryPath,
        scope: ListingScope,
    ) -> Result<Self, StepError> {
        let root = format!("{REPOSITORIES_PREFIX}{path}/");
        let (under, sets) = match scope {
            ListingScope::Links => ("_", Some(Vec::new())),
            ListingScope::Tags => ("_manifests/tags/", None),
        };
        let mut listing = Self {
            links: SourceLinks {
                revisions: sets.clone(),
                layers: sets,
                ..SourceLinks::default()
            },
            prefix: format!("{root}{under}"),
            root_len: root.len(),
            uploads: format!("{root}_uploads/"),
            options: ListOptions {
                delimited: false,
                page_token: None,
                max_results: 1000,
            },
            over: false,
            tags_dir_used: false,
        };
        listing.next_page(store).await?;
        Ok(listing)
    }

    /// Whether the repository's tags directory holds anything, once the pages so far tell:
    /// `None` when they do not yet (a long listing whose tags come on a later page).
    pub fn has_tags(&self) -> Option<bool> {
        (self.tags_dir_used || self.over).then_some(self.tags_dir_used)
    }

    /// Lists the remaining pages.
    pub async fn finish(mut self, store: &dyn BlobStore) -> Result<SourceLinks, StepError> {
        while !self.over {
            self.next_page(store).await?;
        }
        let links = &mut self.links;
        for set in [&mut links.revisions, &mut links.layers]
            .into_iter()
            .flatten()
        {
            set.sort_unstable();
            set.dedup();
            set.shrink_to_fit();
        }
        Ok(self.links)
    }

    async fn next_page(&mut self, store: &dyn BlobStore) -> Result<(), StepError> {
        let page = store.list(&self.prefix, &self.options).await?;
        self.links.list_calls += 1;
        self.over = page.next_page_token.is_none();
        self.options.page_token = page.next_page_token;
        for object in page.objects {
            if object.key >= self.uploads {
                self.over = true;
                break;
            }
            let key = &object.key[self.root_len..];
            self.tags_dir_used |= key.starts_with("_manifests/tags/");
            self.links.take(key, object.version)?;
        }
        Ok(())
    }
}

impl SourceLinks {
    /// Lists `path`'s `_layers/` and `_manifests/` (one flat listing, paged) and keeps what it
    /// says. Fails with [`StepError::InvalidTag`] on a tag directory whose name is not a tag.
    pub async fn list(store: &dyn BlobStore, path: &RepositoryPath) -> Result<Self, StepError> {
        SourceListing::begin(store, path, ListingScope::Links)
            .await?
            .finish(store)
            .await
    }

    /// Lists only `path`'s tags: their `current/link` versions, no revisions or layers (every
    /// link then answers by a stat).
    pub async fn list_tags(
        store: &dyn BlobStore,
        path: &RepositoryPath,
    ) -> Result<Self, StepError> {
        SourceListing::begin(store, path, ListingScope::Tags)
            .await?
            .finish(store)
            .await
    }

    /// Notes one listed key (relative to the repository's directory).
    fn take(&mut self, key: &str, version: Option<String>) -> Result<(), StepError> {
        if let Some(rest) = key.strip_prefix("_manifests/tags/") {
            let Some((tag, below)) = rest.split_once('/') else {
                return Ok(()); // An object directly in `tags/`: not a tag directory.
            };
            if !layout::is_valid_tag(tag) {
                return Err(StepError::InvalidTag(tag.to_owned()));
            }
            let current = below == "current/link";
            // Keys come in order, so a tag's entries are together.
            if self.tags.last().is_none_or(|last| last.name != tag) {
                self.tags.push(SourceTag {
                    name: tag.to_owned(),
                    has_current: false,
                    version: None,
                });
            }
            if current && let Some(last) = self.tags.last_mut() {
                last.has_current = true;
                last.version = version;
            }
            return Ok(());
        }
        let (link, rest) = if let Some(rest) = key.strip_prefix("_layers/sha256/") {
            (Link::Layer, rest)
        } else if let Some(rest) = key.strip_prefix("_manifests/revisions/sha256/") {
            (Link::Revision, rest)
        } else {
            return Ok(());
        };
        let Some(hex) = rest.strip_suffix("/link") else {
            return Ok(());
        };
        let Some(digest) = sha256_bytes(hex) else {
            return Ok(()); // Not a digest a manifest can name: never asked about.
        };
        let listed = |set: &Option<Vec<[u8; 32]>>| set.as_ref().map_or(0, Vec::len);
        if listed(&self.layers) + listed(&self.revisions) >= MAX_LISTED_LINKS {
            self.layers = None;
            self.revisions = None;
        }
        let set = match link {
            Link::Revision => &mut self.revisions,
            Link::Layer => &mut self.layers,
        };
        if let Some(set) = set {
            set.push(digest);
        }
        Ok(())
    }

    /// Takes the repository's tags out, in key order (to read their links), leaving the links'
    /// sets: a step holds its tags once.
    pub fn take_tags(&mut self) -> Vec<SourceTag> {
        std::mem::take(&mut self.tags)
    }

    /// Listings made.
    pub fn list_calls(&self) -> u64 {
        self.list_calls
    }

    /// Whether `digest` is linked to `path` as `link`: from the listing, or (past
    /// [`MAX_LISTED_LINKS`]) by a stat of the link.
    pub async fn is_linked(
        &self,
        store: &dyn BlobStore,
        path: &RepositoryPath,
        link: Link,
        digest: &Digest,
    ) -> Result<bool, StepError> {
        let set = match link {
            Link::Revision => &self.revisions,
            Link::Layer => &self.layers,
        };
        if let Some(set) = set {
            return Ok(
                sha256_bytes(digest.hex()).is_some_and(|bytes| set.binary_search(&bytes).is_ok())
            );
        }
        let key = match link {
            Link::Revision => layout::revision_link_key(path, digest),
            Link::Layer => layout::layer_link_key(path, digest),
        };
        Ok(store.stat(&key).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_shared::storage::LocalStore;

    fn hex(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[tokio::test]
    async fn one_listing_finds_tags_revisions_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepositoryPath::parse("g/app").unwrap();
        let base = dir.path().join(REPOSITORIES_PREFIX).join("g/app");
        let files = [
            format!("_layers/sha256/{}/link", hex(1)),
            format!("_manifests/revisions/sha256/{}/link", hex(2)),
            "_manifests/tags/v1/current/link".to_owned(),
            format!("_manifests/tags/v1/index/sha256/{}/link", hex(2)),
            format!("_manifests/tags/v2/index/sha256/{}/link", hex(2)),
            "_uploads/u/data".to_owned(),
            // A nested repository is not this one's.
            format!("sub/_layers/sha256/{}/link", hex(3)),
        ];
        for file in &files {
            let path = base.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let store = LocalStore::new(dir.path().to_path_buf()).unwrap();
        let mut links = SourceLinks::list(&store, &repo).await.unwrap();
        let taken = links.take_tags();
        let tags: Vec<(&str, bool)> = (taken.iter())
            .map(|t| (t.name.as_str(), t.has_current))
            .collect();
        assert_eq!(tags, [("v1", true), ("v2", false)]);
        let digest = |n: u8| Digest::parse(&format!("sha256:{}", hex(n))).unwrap();
        for (link, n, linked) in [
            (Link::Layer, 1, true),
            (Link::Layer, 2, false),
            (Link::Layer, 3, false),
            (Link::Revision, 2, true),
            (Link::Revision, 1, false),
        ] {
            let found = links.is_linked(&store, &repo, link, &digest(n)).await;
            assert_eq!(found.unwrap(), linked, "{link:?} {n}");
        }
        assert_eq!(links.list_calls(), 1);
    }

    #[tokio::test]
    async fn an_invalid_tag_directory_fails_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join(REPOSITORIES_PREFIX)
            .join("app/_manifests/tags/-bad/current/link");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
        let store = LocalStore::new(dir.path().to_path_buf()).unwrap();
        let repo = RepositoryPath::parse("app").unwrap();
        let err = SourceLinks::list(&store, &repo).await.unwrap_err();
        assert!(matches!(err, StepError::InvalidTag(tag) if tag == "-bad"));
    }
}
