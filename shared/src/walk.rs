//! Discovering every repository in the old layout without holding the listing in memory.
//!
//! The walk is depth-first over delimited listings of `docker/registry/v2/repositories/`: a
//! directory holding `_manifests/` is a repository; other `_`-prefixed directories (`_layers`,
//! `_uploads`) are its data; anything else is descended into, since repositories nest. Memory is
//! bounded by depth × one listing page.
//!
//! [`RepositoryWalk`] makes one listing at a time, in order, and can resume after a repository
//! (the registry catalog needs both). [`ParallelWalk`] finds the same repositories in no
//! particular order with many listings in flight, for the inventory and the one-shot import.

mod parallel;

pub use parallel::{LISTINGS_IN_FLIGHT, ParallelWalk};

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
    /// For a walk resumed after a repository: the child (`name/`) of this directory on the way
    /// to it. Children before it were walked already; the way itself is walked from there on.
    resume_at: Option<String>,
}

impl Frame {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            page_token: None,
            pending: Vec::new().into_iter(),
            exhausted: false,
            resume_at: None,
        }
    }
}

/// The children (`name/`) on the way from the repositories' root to `path`'s `_manifests/`:
/// the walk finds `path` when it reaches the last of them.
fn way_to(path: &RepositoryPath) -> Vec<String> {
    path.as_str()
        .split('/')
        .map(|component| format!("{component}/"))
        .chain(std::iter::once(MANIFESTS_DIR.to_owned()))
        .collect()
}

const MANIFESTS_DIR: &str = "_manifests/";

/// A depth-first walk of the repositories in a bucket, pulled one at a time.
pub struct RepositoryWalk<'a> {
    store: &'a dyn BlobStore,
    stack: Vec<Frame>,
    list_calls: u64,
    /// For a resumed walk, the rest of the way below the deepest frame still on it.
    way: Vec<String>,
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
            way: Vec::new(),
        }
    }

    /// A walk of every repository in `store` that comes after `last` in walk order: the
    /// directories on the way to `last` are listed again, but nothing already walked is
    /// descended into, so resuming costs one listing per level of `last`'s path.
    pub fn after(store: &'a dyn BlobStore, last: &RepositoryPath) -> Self {
        let mut way = way_to(last).into_iter();
        let mut root = Frame::new(REPOSITORIES_PREFIX.to_owned());
        root.resume_at = way.next();
        Self {
            store,
            stack: vec![root],
            list_calls: 0,
            way: way.collect(),
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
                let entry = &child[frame.prefix.len()..];
                let mut on_the_way = false;
                if let Some(resume_at) = &frame.resume_at {
                    match entry.cmp(resume_at.as_str()) {
                        std::cmp::Ordering::Less => continue,
                        std::cmp::Ordering::Equal => {
                            frame.resume_at = None;
                            if entry == MANIFESTS_DIR {
                                // `last` itself: walked already.
                                continue;
                            }
                            on_the_way = true;
                        }
                        std::cmp::Ordering::Greater => {
                            // The way is gone (deleted meanwhile): go on from here.
                            frame.resume_at = None;
                            self.way.clear();
                        }
                    }
                }
                let name = entry.trim_end_matches('/');
                if name == "_manifests" {
                    let path = frame.prefix[REPOSITORIES_PREFIX.len()..].trim_end_matches('/');
                    return Ok(Some(match RepositoryPath::parse(path) {
                        Ok(path) => Found::Repository(path),
                        Err(error) => Found::Invalid(error),
                    }));
                }
                if !name.starts_with('_') {
                    let mut below = Frame::new(child);
                    if on_the_way && !self.way.is_empty() {
                        below.resume_at = Some(self.way.remove(0));
                    }
                    self.stack.push(below);
                }
                continue;
            }
            if frame.exhausted {
                if frame.resume_at.is_some() {
                    self.way.clear();
                }
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

/// A repository's tag directories, one listing page at a time, in byte order: their names as
/// stored, whether or not they are valid tags.
pub struct TagDirectories<'a> {
    store: &'a dyn BlobStore,
    prefix: String,
    options: ListOptions,
    over: bool,
    found_any: bool,
}

impl<'a> TagDirectories<'a> {
    /// The tag directories of `path`.
    pub fn new(store: &'a dyn BlobStore, path: &RepositoryPath) -> Self {
        Self {
            store,
            prefix: crate::layout::tags_prefix(path),
            options: ListOptions {
                delimited: true,
                page_token: None,
                max_results: 1000,
            },
            over: false,
            found_any: false,
        }
    }

    /// The names in the next page, or `None` once the listing is over.
    pub async fn next_page(&mut self) -> Result<Option<Vec<String>>, StorageError> {
        if self.over {
            return Ok(None);
        }
        let page = self.store.list(&self.prefix, &self.options).await?;
        self.found_any |= !page.prefixes.is_empty() || !page.objects.is_empty();
        self.over = page.next_page_token.is_none();
        self.options.page_token = page.next_page_token;
        let names = page
            .prefixes
            .iter()
            .map(|dir| dir[self.prefix.len()..].trim_end_matches('/').to_owned())
            .collect();
        Ok(Some(names))
    }

    /// Whether the tags directory held anything (a directory or an object) in the pages so far.
    pub fn found_any(&self) -> bool {
        self.found_any
    }
}

/// How many tags a repository has (its tag directories, whether or not their links are intact).
pub async fn count_tags(store: &dyn BlobStore, path: &RepositoryPath) -> Result<u64, StorageError> {
    let mut directories = TagDirectories::new(store, path);
    let mut count = 0;
    while let Some(names) = directories.next_page().await? {
        count += names.len() as u64;
    }
    Ok(count)
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

    #[tokio::test]
    async fn a_walk_resumed_after_any_repository_finds_the_rest_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        // Names that sort around `/` and `_manifests/`: `a-c` before `a/`, `a/0` before `a`'s
        // own `_manifests/`, `a/b` after it.
        for repository in ["a", "a-c", "a/0", "a/b", "a/b/c", "b", "b.d/e", "z/y/x"] {
            let path = dir
                .path()
                .join(REPOSITORIES_PREFIX)
                .join(repository)
                .join("_manifests/tags/v1/current/link");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let store = LocalStore::new(dir.path().to_path_buf()).unwrap();
        async fn rest(mut walk: RepositoryWalk<'_>) -> Vec<String> {
            let mut found = Vec::new();
            while let Some(Found::Repository(path)) = walk.next().await.unwrap() {
                found.push(path.to_string());
            }
            found
        }
        let all = rest(RepositoryWalk::new(&store)).await;
        assert_eq!(
            all,
            ["a-c", "a/0", "a", "a/b", "a/b/c", "b.d/e", "b", "z/y/x"]
        );
        for (index, last) in all.iter().enumerate() {
            let last = RepositoryPath::parse(last).unwrap();
            let resumed = rest(RepositoryWalk::after(&store, &last)).await;
            assert_eq!(resumed, all[index + 1..], "after {last}");
        }
        // After a repository that does not exist: what comes after its place.
        let gone = RepositoryPath::parse("a/ba").unwrap();
        let resumed = rest(RepositoryWalk::after(&store, &gone)).await;
        assert_eq!(resumed, ["b.d/e", "b", "z/y/x"]);
    }
}
