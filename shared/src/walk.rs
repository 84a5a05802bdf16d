//! Discovering every repository in the old layout without holding the listing in memory.
//!
//! The walk is depth-first over delimited listings of `docker/registry/v2/repositories/`: a
//! directory holding `_manifests/` is a repository; other `_`-prefixed directories (`_layers`,
//! `_uploads`) are its data; anything else is descended into, since repositories nest. Memory is
//! bounded by depth × one listing page.

use crate::ids::{IdError, RepositoryPath};
use crate::layout::REPOSITORIES_PREFIX;
use crate::storage::{BlobStore, ListOptions, StorageError};

/// What the walk found next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A repository.
    Repository(RepositoryPath),
    /// A directory holding `_manifests/` whose path is not a valid repository path.
    Invalid(IdError),
}

struct Frame {
    prefix: String,
    page_token: Option<String>,
    pending: std::vec::IntoIter<String>,
    exhausted: bool,
}

impl Frame {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            page_token: None,
            pending: Vec::new().into_iter(),
            exhausted: false,
        }
    }
}

/// A depth-first walk of the repositories in a bucket, pulled one at a time.
pub struct RepositoryWalk<'a> {
    store: &'a dyn BlobStore,
    stack: Vec<Frame>,
    list_calls: u64,
}

impl<'a> RepositoryWalk<'a> {
    /// A walk of every repository in `store`.
    pub fn new(store: &'a dyn BlobStore) -> Self {
        Self::under(store, REPOSITORIES_PREFIX)
    }

    /// A walk of the repositories under `prefix` (a directory of the repositories tree, ending
    /// in `/`).
    pub fn under(store: &'a dyn BlobStore, prefix: &str) -> Self {
        Self {
            store,
            stack: vec![Frame::new(prefix.to_owned())],
            list_calls: 0,
        }
    }

    /// Storage list calls made so far.
    pub fn list_calls(&self) -> u64 {
        self.list_calls
    }

    /// The next repository, or `None` when the walk is over.
    pub async fn next(&mut self) -> Result<Option<Found>, StorageError> {
        while let Some(frame) = self.stack.last_mut() {
            if let Some(child) = frame.pending.next() {
                let name = child[frame.prefix.len()..].trim_end_matches('/');
                if name == "_manifests" {
                    let path = frame.prefix[REPOSITORIES_PREFIX.len()..].trim_end_matches('/');
                    return Ok(Some(match RepositoryPath::parse(path) {
                        Ok(path) => Found::Repository(path),
                        Err(error) => Found::Invalid(error),
                    }));
                }
                if !name.starts_with('_') {
                    self.stack.push(Frame::new(child));
                }
                continue;
            }
            if frame.exhausted {
                self.stack.pop();
                continue;
            }
            let options = ListOptions {
                delimited: true,
                page_token: frame.page_token.take(),
                max_results: 1000,
            };
            let page = self.store.list(&frame.prefix, &options).await?;
            self.list_calls += 1;
            frame.exhausted = page.next_page_token.is_none();
            frame.page_token = page.next_page_token;
            frame.pending = page.prefixes.into_iter();
        }
        Ok(None)
    }
}

/// How many tags a repository has (its tag directories, whether or not their links are intact).
pub async fn count_tags(store: &dyn BlobStore, path: &RepositoryPath) -> Result<u64, StorageError> {
    let prefix = crate::layout::tags_prefix(path);
    let mut options = ListOptions {
        delimited: true,
        page_token: None,
        max_results: 1000,
    };
    let mut count = 0;
    loop {
        let page = store.list(&prefix, &options).await?;
        count += page.prefixes.len() as u64;
        match page.next_page_token {
            Some(token) => options.page_token = Some(token),
            None => return Ok(count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStore;

    #[tokio::test]
    async fn finds_nested_repositories_and_skips_their_data_directories() {
        let dir = tempfile::tempdir().unwrap();
        for key in [
            "a/_manifests/tags/v1/current/link",
            "a/b/c/_manifests/tags/v1/current/link",
            "a/b/c/_layers/sha256/x/link",
            "a/b/c/_uploads/u/data",
            "g/p/app/_manifests/revisions/sha256/y/link",
            "Bad/_manifests/tags/v1/current/link",
            "empty/dir/file",
        ] {
            let path = dir.path().join(REPOSITORIES_PREFIX).join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let store = LocalStore::new(dir.path().to_path_buf()).unwrap();
        let mut walk = RepositoryWalk::new(&store);
        let mut found = Vec::new();
        let mut invalid = 0;
        while let Some(item) = walk.next().await.unwrap() {
            match item {
                Found::Repository(path) => found.push(path.to_string()),
                Found::Invalid(_) => invalid += 1,
            }
        }
        assert_eq!(found, ["a", "a/b/c", "g/p/app"]);
        assert_eq!(invalid, 1);
        assert!(walk.list_calls() >= 6);
    }
}
