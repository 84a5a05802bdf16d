//! The same walk as [`RepositoryWalk`](super::RepositoryWalk), with many listings in flight, in
//! no particular order.
//!
//! Listing is latency bound: one delimited listing per directory, each a round trip to the
//! bucket. [`ParallelWalk`] keeps up to `listings_in_flight` of them running and hands out the
//! repositories as their listings come back. Memory stays bounded:
//!
//! - the directories still to list (the frontier) are taken last in, first out, so the walk goes
//!   deep before it goes wide, and the rest of a directory's pages waits under its children;
//! - the repositories found wait in a buffer of about a thousand; while it is full no listing
//!   starts (those in flight still land), so a consumer that pulls slowly slows the walk down,
//!   and one that stops pulling stops it.
//!
//! Pulled as a [`Stream`], the walk runs only while it is polled: a consumer that wants listings
//! to go on while it does something else polls the walk at the same time (`tokio::select!`), and
//! one that may not pull for a long time (longer than a request may wait for its answer to be
//! read) uses [`ParallelWalk::send_to`] instead, which reads every listing as it lands.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::{FusedStream, FuturesUnordered, Stream, StreamExt};
use tokio::sync::mpsc;

use super::{Found, MANIFESTS_DIR};
use crate::ids::RepositoryPath;
use crate::layout::REPOSITORIES_PREFIX;
use crate::storage::{BlobStore, ListOptions, ListPage, StorageError};

/// Listings in flight when the caller has no reason to pick another bound. A repository takes
/// about two listings, so against a bucket that answers in 25 ms this bound caps the walk at
/// about 2,500 repositories a second (measured on 2 cores: about 1,700; with 64, about 1,000).
pub const LISTINGS_IN_FLIGHT: usize = 128;

/// Repositories found and not yet pulled at which no new listing starts (each listing finds at
/// most one, so the buffer never holds more than this plus the listings in flight).
const FOUND_BUFFER: usize = 1000;

/// Entries asked for per listing page.
const PAGE_SIZE: usize = 1000;

/// One page of one directory, to list.
struct Listing {
    /// The directory, ending in `/`.
    prefix: String,
    /// The page after the one that returned this token; `None` for the first page.
    page_token: Option<String>,
}

type ListingResult = (String, Result<ListPage, StorageError>);

/// A walk of the repositories in a bucket with up to `listings_in_flight` delimited listings
/// running at once. It finds what [`RepositoryWalk`](super::RepositoryWalk) finds, in no
/// particular order; it is a [`Stream`] of [`Found`] that ends after the first storage error,
/// which it yields.
pub struct ParallelWalk<'a> {
    store: &'a dyn BlobStore,
    /// Directory pages still to list, taken from the end.
    frontier: Vec<Listing>,
    in_flight: FuturesUnordered<BoxFuture<'a, ListingResult>>,
    listings_in_flight: usize,
    found: VecDeque<Found>,
    found_buffer: usize,
    page_size: usize,
    list_calls: u64,
    /// Set once an error was yielded (or the walk ran out): nothing more comes.
    over: bool,
}

impl<'a> ParallelWalk<'a> {
    /// A walk of every repository in `store`, with at most `listings_in_flight` listings
    /// running at once (at least one).
    pub fn new(store: &'a dyn BlobStore, listings_in_flight: usize) -> Self {
        Self::under(store, REPOSITORIES_PREFIX, listings_in_flight)
    }

    /// A walk of the repositories under `prefix` (a directory of the repositories tree, ending
    /// in `/`), with at most `listings_in_flight` listings running at once (at least one).
    pub fn under(store: &'a dyn BlobStore, prefix: &str, listings_in_flight: usize) -> Self {
        Self {
            store,
            frontier: vec![Listing {
                prefix: prefix.to_owned(),
                page_token: None,
            }],
            in_flight: FuturesUnordered::new(),
            listings_in_flight: listings_in_flight.max(1),
            found: VecDeque::new(),
            found_buffer: FOUND_BUFFER,
            page_size: PAGE_SIZE,
            list_calls: 0,
            over: false,
        }
    }

    /// Storage list calls answered so far.
    pub fn list_calls(&self) -> u64 {
        self.list_calls
    }

    /// Runs the walk to its end alongside its consumer, sending what it finds into `found`, and
    /// returns the listings made. While `found` is full no listing starts, but those in flight
    /// are read as they land, so a consumer may pause for as long as it likes. It stops after
    /// sending a storage error, or as soon as `found` is closed.
    pub async fn send_to(mut self, found: mpsc::Sender<Result<Found, StorageError>>) -> u64 {
        loop {
            self.start_listings();
            if self.found.is_empty() && self.in_flight.is_empty() {
                // Nothing found waits and nothing runs, so nothing could start: the walk is over.
                return self.list_calls;
            }
            tokio::select! {
                permit = found.reserve(), if !self.found.is_empty() => {
                    let Ok(permit) = permit else {
                        return self.list_calls;
                    };
                    if let Some(next) = self.found.pop_front() {
                        permit.send(Ok(next));
                    }
                }
                landed = self.in_flight.next(), if !self.in_flight.is_empty() => match landed {
                    Some((prefix, Ok(page))) => self.take_page(prefix, page),
                    Some((_, Err(error))) => {
                        let _ = found.send(Err(error)).await;
                        return self.list_calls;
                    }
                    None => {}
                },
                () = found.closed(), if self.found.is_empty() => return self.list_calls,
            }
        }
    }

    /// Starts listings from the top of the frontier while there is room in flight and in the
    /// buffer of repositories found.
    fn start_listings(&mut self) {
        while self.in_flight.len() < self.listings_in_flight && self.found.len() < self.found_buffer
        {
            let Some(listing) = self.frontier.pop() else {
                break;
            };
            let store = self.store;
            let options = ListOptions {
                delimited: true,
                page_token: listing.page_token,
                max_results: self.page_size,
            };
            let prefix = listing.prefix;
            self.in_flight.push(Box::pin(async move {
                let page = store.list(&prefix, &options).await;
                (prefix, page)
            }));
        }
    }

    /// Takes in one page of `prefix`: its repository (if it holds `_manifests/`), its
    /// sub-directories to walk, and its next page to list after them.
    fn take_page(&mut self, prefix: String, page: ListPage) {
        self.list_calls += 1;
        let children = page.prefixes;
        let mut below = Vec::with_capacity(children.len());
        for child in children {
            let entry = &child[prefix.len()..];
            if entry == MANIFESTS_DIR {
                self.found.push_back(found_at(&prefix));
            } else if !entry.starts_with('_') {
                below.push(child);
            }
        }
        // The next page goes under the children, so that the walk finishes them before it reads
        // more of this directory; the first child goes on top.
        if let Some(token) = page.next_page_token {
            self.frontier.push(Listing {
                prefix,
                page_token: Some(token),
            });
        }
        self.frontier
            .extend(below.into_iter().rev().map(|child| Listing {
                prefix: child,
                page_token: None,
            }));
    }

    /// Drops everything left: after an error, nothing more comes.
    fn finish(&mut self) {
        self.over = true;
        self.frontier.clear();
        self.in_flight = FuturesUnordered::new();
        self.found.clear();
    }
}

/// What the directory `prefix`, which holds `_manifests/`, is.
fn found_at(prefix: &str) -> Found {
    let path = prefix.strip_prefix(REPOSITORIES_PREFIX).unwrap_or(prefix);
    match RepositoryPath::parse(path.trim_end_matches('/')) {
        Ok(path) => Found::Repository(path),
        Err(error) => Found::Invalid(error),
    }
}

impl Stream for ParallelWalk<'_> {
    type Item = Result<Found, StorageError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.over {
            return Poll::Ready(None);
        }
        loop {
            this.start_listings();
            match this.in_flight.poll_next_unpin(cx) {
                Poll::Ready(Some((prefix, Ok(page)))) => this.take_page(prefix, page),
                Poll::Ready(Some((_, Err(error)))) => {
                    this.finish();
                    return Poll::Ready(Some(Err(error)));
                }
                // Nothing in flight: the frontier is empty, or the buffer is full.
                Poll::Ready(None) => break,
                // The waker is registered with the listings in flight.
                Poll::Pending => break,
            }
        }
        if let Some(found) = this.found.pop_front() {
            return Poll::Ready(Some(Ok(found)));
        }
        if this.in_flight.is_empty() && this.frontier.is_empty() {
            this.over = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl FusedStream for ParallelWalk<'_> {
    fn is_terminated(&self) -> bool {
        self.over
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::ids::Digest;
    use crate::storage::{CopyOutcome, LocalStore, ObjectMeta, ObjectReader};
    use crate::walk::RepositoryWalk;

    fn bucket(keys: impl IntoIterator<Item = String>) -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        for key in keys {
            let path = dir.path().join(REPOSITORIES_PREFIX).join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let store = LocalStore::new(dir.path().to_path_buf()).unwrap();
        (dir, store)
    }

    /// The repositories (as paths) and the invalid directories (as errors) a walk found.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Walked {
        repositories: BTreeSet<String>,
        invalid: BTreeSet<String>,
    }

    impl Walked {
        fn add(&mut self, found: Found) {
            let fresh = match found {
                Found::Repository(path) => self.repositories.insert(path.to_string()),
                Found::Invalid(error) => self.invalid.insert(error.to_string()),
            };
            assert!(fresh, "found twice");
        }
    }

    async fn sequential(store: &dyn BlobStore) -> Walked {
        let mut walk = RepositoryWalk::new(store);
        let mut walked = Walked::default();
        while let Some(found) = walk.next().await.unwrap() {
            walked.add(found);
        }
        walked
    }

    async fn parallel(mut walk: ParallelWalk<'_>) -> Walked {
        let mut walked = Walked::default();
        while let Some(found) = walk.next().await {
            walked.add(found.unwrap());
        }
        assert!(
            walk.next().await.is_none(),
            "a finished walk stays finished"
        );
        walked
    }

    fn nested_tree() -> Vec<String> {
        let mut keys: Vec<String> = [
            "a/_manifests/tags/v1/current/link",
            "a/b/c/_manifests/tags/v1/current/link",
            "a/b/c/_layers/sha256/x/link",
            "a/b/c/_uploads/u/data",
            "a/b/c/_uploads/_manifests/x",
            "a-c/_manifests/tags/v1/current/link",
            "g/p/app/_manifests/revisions/sha256/y/link",
            "Bad/_manifests/tags/v1/current/link",
            "ok/UPPER/_manifests/tags/v1/current/link",
            "empty/dir/file",
            "z/y/x/w/v/_manifests/tags/v1/current/link",
        ]
        .map(String::from)
        .to_vec();
        for group in 0..7 {
            for project in 0..5 {
                keys.push(format!(
                    "g{group}/p{project}/app/_manifests/tags/v1/current/link"
                ));
                keys.push(format!("g{group}/p{project}/app/_layers/sha256/x/link"));
                if project % 2 == 0 {
                    keys.push(format!(
                        "g{group}/p{project}/_manifests/tags/v1/current/link"
                    ));
                }
            }
        }
        keys
    }

    #[tokio::test]
    async fn finds_what_the_ordered_walk_finds_including_invalid_paths() {
        let (_dir, store) = bucket(nested_tree());
        let expected = sequential(&store).await;
        assert_eq!(expected.repositories.len(), 5 + 7 * 5 + 7 * 3);
        assert_eq!(expected.invalid.len(), 2);
        for in_flight in [1, 3, LISTINGS_IN_FLIGHT] {
            let walk = ParallelWalk::new(&store, in_flight);
            assert_eq!(parallel(walk).await, expected, "{in_flight} in flight");
        }
    }

    #[tokio::test]
    async fn follows_page_tokens() {
        let (_dir, store) = bucket(nested_tree());
        let expected = sequential(&store).await;
        let mut walk = ParallelWalk::new(&store, 4);
        walk.page_size = 2;
        let mut walked = Walked::default();
        while let Some(found) = walk.next().await {
            walked.add(found.unwrap());
        }
        assert_eq!(walked, expected);
        // Directories of more than two entries took more than one page each.
        let mut one_page = ParallelWalk::new(&store, 4);
        while one_page.next().await.is_some() {}
        assert!(walk.list_calls() > one_page.list_calls() + 20);
    }

    #[tokio::test]
    async fn follows_page_tokens_of_full_pages() {
        let count = PAGE_SIZE + 50;
        let (_dir, store) = bucket(
            (0..count).map(|index| format!("g/r{index:04}/_manifests/tags/v1/current/link")),
        );
        let mut walk = ParallelWalk::new(&store, LISTINGS_IN_FLIGHT);
        let mut walked = Walked::default();
        while let Some(found) = walk.next().await {
            walked.add(found.unwrap());
        }
        assert_eq!(walked.repositories.len(), count);
        // The root, two pages of `g/`, and each repository's directory.
        assert_eq!(walk.list_calls(), 1 + 2 + count as u64);
    }

    /// A store that counts the `list` calls running at once, each taking a little while, and
    /// fails the listing of one prefix.
    #[derive(Debug)]
    struct Slow {
        inner: LocalStore,
        running: AtomicUsize,
        most: AtomicUsize,
        calls: AtomicUsize,
        fail_on: Option<String>,
    }

    impl Slow {
        fn new(inner: LocalStore, fail_on: Option<&str>) -> Self {
            Self {
                inner,
                running: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
                fail_on: fail_on.map(|dir| format!("{REPOSITORIES_PREFIX}{dir}")),
            }
        }
    }

    #[async_trait]
    impl BlobStore for Slow {
        async fn list(
            &self,
            prefix: &str,
            options: &ListOptions,
        ) -> Result<ListPage, StorageError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.fail_on.as_deref() == Some(prefix) {
                return Err(StorageError::Backend {
                    key: prefix.to_owned(),
                    status: Some(403),
                    message: "forbidden".to_owned(),
                });
            }
            self.inner.list(prefix, options).await
        }
        async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
            self.inner.stat(key).await
        }
        async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
            self.inner.read(key, max_bytes).await
        }
        async fn open_read(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
            self.inner.open_read(key).await
        }
        async fn copy(
            &self,
            src: &str,
            dst: &str,
            expected: Option<&Digest>,
        ) -> Result<CopyOutcome, StorageError> {
            self.inner.copy(src, dst, expected).await
        }
        async fn delete(
            &self,
            key: &str,
            version: &str,
        ) -> Result<crate::storage::DeleteOutcome, StorageError> {
            self.inner.delete(key, version).await
        }
        fn url(&self) -> String {
            self.inner.url()
        }
    }

    #[tokio::test]
    async fn keeps_at_most_the_bound_of_listings_in_flight() {
        let (_dir, store) = bucket(nested_tree());
        let expected = sequential(&store).await;
        let slow = Slow::new(store, None);
        let walk = ParallelWalk::new(&slow, 4);
        assert_eq!(parallel(walk).await, expected);
        assert_eq!(slow.most.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_slow_consumer_holds_the_walk_back() {
        let (_dir, store) = bucket(nested_tree());
        let expected = sequential(&store).await;
        let slow = Slow::new(store, None);
        let mut walk = ParallelWalk::new(&slow, 8);
        walk.found_buffer = 3;
        let mut walked = Walked::default();
        let mut most_waiting = 0;
        while let Some(found) = walk.next().await {
            walked.add(found.unwrap());
            most_waiting = most_waiting.max(walk.found.len());
            // Listings land meanwhile (5 ms each), faster than this consumer pulls.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(walked, expected);
        assert!(most_waiting >= 2, "the buffer never filled");
        assert!(most_waiting < 3 + 8, "{most_waiting} waiting");

        // Not pulled, the walk does nothing at all.
        let mut walk = ParallelWalk::new(&slow, 8);
        walk.next().await.unwrap().unwrap();
        let calls = slow.calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(slow.calls.load(Ordering::SeqCst), calls);
    }

    #[tokio::test]
    async fn sent_to_a_channel_the_walk_reads_its_listings_while_the_consumer_pauses() {
        let (dir, store) = bucket(nested_tree());
        let expected = sequential(&store).await;
        let slow = Slow::new(store, None);
        let mut walk = ParallelWalk::new(&slow, 8);
        walk.found_buffer = 3;
        let (sender, mut receiver) = mpsc::channel::<Result<Found, StorageError>>(2);
        let consumer = async {
            let mut walked = Walked::default();
            let first = receiver.recv().await.unwrap().unwrap();
            walked.add(first);
            // Not pulling: the listings in flight land and nothing new starts.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(slow.running.load(Ordering::SeqCst), 0);
            let calls = slow.calls.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(slow.calls.load(Ordering::SeqCst), calls);
            while let Some(found) = receiver.recv().await {
                walked.add(found.unwrap());
            }
            walked
        };
        let (list_calls, walked) = tokio::join!(walk.send_to(sender), consumer);
        assert_eq!(walked, expected);
        assert_eq!(list_calls, slow.calls.load(Ordering::SeqCst) as u64);

        // An error is the last thing sent; a closed channel ends the walk.
        let failing = Slow::new(
            LocalStore::new(dir.path().to_path_buf()).unwrap(),
            Some("g3/"),
        );
        let (sender, mut receiver) = mpsc::channel(100);
        ParallelWalk::new(&failing, 4).send_to(sender).await;
        let mut last = None;
        while let Some(found) = receiver.recv().await {
            last = Some(found);
        }
        assert!(matches!(last, Some(Err(StorageError::Backend { .. }))));
        let (sender, receiver) = mpsc::channel(1);
        drop(receiver);
        let list_calls = ParallelWalk::new(&slow, 4).send_to(sender).await;
        assert!(list_calls <= 1 + 4, "{list_calls} listings for nobody");
    }

    #[tokio::test]
    async fn a_storage_error_ends_the_walk_with_that_error() {
        let (_dir, store) = bucket(nested_tree());
        let slow = Slow::new(store, Some("g3/"));
        let mut walk = ParallelWalk::new(&slow, 4);
        let mut found = 0;
        let error = loop {
            match walk.next().await {
                Some(Ok(_)) => found += 1,
                Some(Err(error)) => break error,
                None => panic!("the walk ended without the error"),
            }
        };
        assert!(
            matches!(&error, StorageError::Backend { key, status: Some(403), .. } if key.ends_with("/g3/")),
            "{error}"
        );
        // Nothing below `g3/` (8 of the 63) can have been found.
        assert!(found <= 63 - 8, "{found} found before the error");
        assert!(walk.next().await.is_none());
        assert!(walk.is_terminated());
    }
}
