//! One set of storage tests, run against every driver: the local directory driver, the GCS
//! driver against fake-gcs-server (started by `make test` / `scripts/setup.sh`; the address is
//! `FERRY_GCS_EMULATOR`, default `127.0.0.1:4443`), and the GCS driver against Ferry's own
//! latency emulator (`ferry_tests::gcs_emulator`, in process). Each case seeds objects by their
//! raw bucket key, bypassing the driver, then checks what the driver makes of them. The last
//! tests hold the emulator to what it is for: overlapping delayed requests, counted by kind, and
//! the preconditions fake-gcs-server ignores.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_shared::ids::Digest;
use ferry_shared::storage::{
    BlobStore, CopyOutcome, DeleteOutcome, ListOptions, ListPage, ObjectMeta, StorageError,
};
use ferry_tests::buckets::{Bucket, GcsBucket, LocalBucket};
use ferry_tests::gcs_emulator::{GcsEmulator, RequestKind};
use futures::TryStreamExt as _;

/// A page's objects and prefixes as one list of keys, in order.
fn entries(page: &ListPage) -> Vec<String> {
    let objects = page.objects.iter().map(|o| o.key.clone());
    let mut all: Vec<String> = objects.chain(page.prefixes.iter().cloned()).collect();
    all.sort();
    all
}

/// Every page of a listing, checking each against the page size.
async fn pages(store: &dyn BlobStore, prefix: &str, delimited: bool, size: usize) -> Vec<ListPage> {
    let mut options = ListOptions {
        delimited,
        page_token: None,
        max_results: size,
    };
    let mut pages = Vec::new();
    loop {
        let page = store.list(prefix, &options).await.expect("list");
        let count = page.objects.len() + page.prefixes.len();
        assert!(count <= size, "{count} entries in a page of {size}");
        assert!(pages.len() < 1000, "the listing does not end");
        let token = page.next_page_token.clone();
        pages.push(page);
        match token {
            Some(token) => options.page_token = Some(token),
            None => return pages,
        }
    }
}

async fn list_all(
    store: &dyn BlobStore,
    prefix: &str,
    delimited: bool,
    size: usize,
) -> Vec<String> {
    let pages = pages(store, prefix, delimited, size).await;
    pages.iter().flat_map(entries).collect()
}

async fn flat_listing_pages_through_every_key_in_order(bucket: &dyn Bucket) {
    let mut expected = Vec::new();
    for i in 0..25 {
        for (key, data) in [
            (format!("r/d{i:02}/x"), "x"),
            (format!("r/d{i:02}.txt"), "yy"),
        ] {
            bucket.put(&key, data.as_bytes()).await;
            expected.push(key);
        }
    }
    bucket.put("q/outside", b"z").await;
    bucket.put("rr", b"z").await;
    expected.sort();
    let store = bucket.store("");
    for size in [1, 3, 7, 1000] {
        let keys = list_all(&*store, "r/", false, size).await;
        assert_eq!(keys, expected, "page size {size}");
    }
    let pages = pages(&*store, "r/", false, 7).await;
    assert!(
        pages.len() >= 8,
        "50 keys in pages of 7: {} pages",
        pages.len()
    );
    let sizes: Vec<u64> = pages[0].objects.iter().map(|o| o.size).collect();
    assert_eq!(sizes, [2, 1, 2, 1, 2, 1, 2], "d00.txt sorts before d00/x");
    assert!(pages.iter().all(|p| p.prefixes.is_empty()));
    assert_eq!(list_all(&*store, "r/d0", false, 4).await.len(), 20);
    assert_eq!(list_all(&*store, "r", false, 1000).await.len(), 51);
}

async fn delimited_listing_returns_directories_as_prefixes_and_paginates(bucket: &dyn Bucket) {
    let keys = [
        "t/a/current/link",
        "t/b/current/link",
        "t/c",
        "t/d.txt",
        "t/d/x/y",
        "t/e",
        "t/f.txt",
        "t/g/1",
        "t/g/2",
        "t/h",
        "u/x",
    ];
    for key in keys {
        bucket.put(key, key.as_bytes()).await;
    }
    let store = bucket.store("");
    let expected = [
        "t/a/", "t/b/", "t/c", "t/d.txt", "t/d/", "t/e", "t/f.txt", "t/g/", "t/h",
    ];
    for size in [1, 2, 3, 1000] {
        let all = list_all(&*store, "t/", true, size).await;
        assert_eq!(all, expected, "page size {size}");
    }
    let options = ListOptions {
        delimited: true,
        page_token: None,
        max_results: 2,
    };
    let first = store.list("t/", &options).await.expect("list");
    assert_eq!(first.prefixes, ["t/a/", "t/b/"]);
    assert!(first.objects.is_empty());
    assert!(first.next_page_token.is_some());
    let top = list_all(&*store, "", true, 1000).await;
    assert_eq!(top, ["t/", "u/"]);
    assert_eq!(list_all(&*store, "t/d", true, 1).await, ["t/d.txt", "t/d/"]);
    assert!(list_all(&*store, "missing/", true, 10).await.is_empty());
    let probe = ListOptions {
        delimited: true,
        page_token: None,
        max_results: 1,
    };
    let page = store.list("t/g/", &probe).await.expect("list");
    assert_eq!(entries(&page), ["t/g/1"]);
}

async fn stat_reports_objects_only(bucket: &dyn Bucket) {
    bucket.put("a/b", b"12345").await;
    let store = bucket.store("");
    let meta = store.stat("a/b").await.expect("stat").expect("exists");
    assert_eq!((meta.key.as_str(), meta.size), ("a/b", 5));
    assert_eq!(store.stat("a").await.expect("stat"), None, "a directory");
    assert_eq!(store.stat("a/c").await.expect("stat"), None);
    assert_eq!(store.stat("zz").await.expect("stat"), None);
}

async fn reads_are_bounded(bucket: &dyn Bucket) {
    bucket.put("a/b", b"12345").await;
    bucket.put("a/empty", b"").await;
    let store = bucket.store("");
    assert_eq!(store.read("a/b", 5).await.expect("read"), &b"12345"[..]);
    assert_eq!(
        store.read("a/b", 1 << 20).await.expect("read"),
        &b"12345"[..]
    );
    assert!(store.read("a/empty", 0).await.expect("read").is_empty());
    let err = store.read("a/b", 4).await.expect_err("must fail");
    assert!(
        matches!(err, StorageError::TooLarge { limit: 4, .. }),
        "{err}"
    );
    let err = store.read("a/c", 4).await.expect_err("must fail");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
}

/// The metadata and every chunk of `key` opened for reading; `None` when it does not exist.
async fn open_all(store: &dyn BlobStore, key: &str) -> Option<(ObjectMeta, Vec<Bytes>)> {
    let reader = store.open_read(key).await.expect("open")?;
    let chunks: Vec<Bytes> = reader.body.try_collect().await.expect("stream");
    Some((reader.meta, chunks))
}

async fn open_read_streams_small_and_empty_objects(bucket: &dyn Bucket) {
    bucket.put("a/b", b"12345").await;
    bucket.put("a/empty", b"").await;
    let store = bucket.store("");
    let (meta, chunks) = open_all(&*store, "a/b").await.expect("exists");
    assert_eq!((meta.key.as_str(), meta.size), ("a/b", 5));
    assert_eq!(chunks.concat(), b"12345");
    let (meta, chunks) = open_all(&*store, "a/empty").await.expect("exists");
    assert_eq!((meta.key.as_str(), meta.size), ("a/empty", 0));
    assert!(chunks.iter().all(Bytes::is_empty), "{chunks:?}");
}

async fn open_read_streams_a_large_object_unchanged(bucket: &dyn Bucket) {
    // Several chunks of any driver (the local one reads 64 KiB at a time).
    let data: Vec<u8> = (0..(5 << 16) + 4321).map(|i| (i * 7 % 251) as u8).collect();
    bucket.put("blobs/sha256/ab/abcd/data", &data).await;
    let store = bucket.store("");
    let (meta, chunks) = open_all(&*store, "blobs/sha256/ab/abcd/data")
        .await
        .expect("exists");
    assert_eq!(meta.size, data.len() as u64);
    let stat = store.stat("blobs/sha256/ab/abcd/data").await.expect("stat");
    // GCS's download answer does not say when the object was created; everything else agrees.
    let without_created = |meta: ObjectMeta| ObjectMeta {
        created: None,
        ..meta
    };
    assert_eq!(
        stat.map(without_created),
        Some(without_created(meta)),
        "the open and stat agree"
    );
    assert!(
        chunks.len() > 1,
        "streamed in one chunk of {} bytes",
        data.len()
    );
    assert_eq!(chunks.concat(), data, "the same bytes, in order");
}

async fn open_read_of_a_missing_object_is_none(bucket: &dyn Bucket) {
    bucket.put("a/b", b"12345").await;
    let store = bucket.store("");
    for key in ["a/c", "zz", "a", "a/b/c"] {
        assert!(open_all(&*store, key).await.is_none(), "{key}");
    }
}

async fn copy_copies_and_a_missing_source_is_not_found(bucket: &dyn Bucket) {
    let data = b"layer bytes";
    bucket.put("src/data", data).await;
    let store = bucket.store("");
    let digest = Digest::of(data);
    let outcome = store.copy("src/data", "dst/x/data", Some(&digest)).await;
    assert_eq!(
        outcome.expect("copy"),
        CopyOutcome::Copied(data.len() as u64)
    );
    assert_eq!(bucket.get("dst/x/data").await.as_deref(), Some(&data[..]));
    let err = store
        .copy("nope/data", "dst/z/data", None)
        .await
        .expect_err("must fail");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert_eq!(bucket.get("dst/z/data").await, None);
    assert_eq!(bucket.get("src/data").await.as_deref(), Some(&data[..]));
}

async fn a_prefix_is_applied_and_stripped(bucket: &dyn Bucket) {
    for key in [
        "some/prefix/a/1",
        "some/prefix/b",
        "some/prefixed",
        "some/other",
        "elsewhere/b",
    ] {
        bucket.put(key, key.as_bytes()).await;
    }
    let store = bucket.store("some/prefix");
    assert!(store.url().ends_with("/some/prefix"), "{}", store.url());
    assert_eq!(list_all(&*store, "", false, 1).await, ["a/1", "b"]);
    assert_eq!(list_all(&*store, "", true, 1).await, ["a/", "b"]);
    assert_eq!(list_all(&*store, "a/", true, 10).await, ["a/1"]);
    let meta = store.stat("b").await.expect("stat").expect("exists");
    assert_eq!((meta.key.as_str(), meta.size), ("b", 13));
    assert_eq!(
        store.read("a/1", 100).await.expect("read"),
        &b"some/prefix/a/1"[..]
    );
    let (meta, chunks) = open_all(&*store, "a/1").await.expect("exists");
    assert_eq!((meta.key.as_str(), meta.size), ("a/1", 15));
    assert_eq!(chunks.concat(), b"some/prefix/a/1");
    assert!(open_all(&*store, "some/prefix/b").await.is_none());
    assert_eq!(store.stat("some/prefix/b").await.expect("stat"), None);
    let outcome = store.copy("b", "c/d", None).await.expect("copy");
    assert_eq!(outcome, CopyOutcome::Copied(13));
    assert_eq!(
        bucket.get("some/prefix/c/d").await.as_deref(),
        Some(&b"some/prefix/b"[..])
    );
}

async fn hostile_keys_are_refused(bucket: &dyn Bucket) {
    bucket.put("a/b", b"1").await;
    let store = bucket.store("");
    for key in ["../etc/passwd", "/etc/passwd", "a/../../x", "a//b", ""] {
        let err = store.read(key, 10).await.expect_err("must fail");
        assert!(matches!(err, StorageError::InvalidKey(_)), "{key}: {err}");
        let err = store.open_read(key).await.expect_err("must fail");
        assert!(matches!(err, StorageError::InvalidKey(_)), "{key}: {err}");
        let err = store.copy("a/b", key, None).await.expect_err("must fail");
        assert!(matches!(err, StorageError::InvalidKey(_)), "{key}: {err}");
    }
}

/// The emulator's delay in the conformance cases: small, but through the same timer path as a
/// real round trip's.
const EMULATOR_LATENCY: Duration = Duration::from_millis(1);

/// Runs every case against both drivers, the GCS one on both servers: `local::<case>`,
/// `gcs::<case>` (fake-gcs-server) and `emulator::<case>`. Attributes written before a case
/// apply to its emulator run only.
macro_rules! conformance {
    ($($(#[$emulator:meta])* $case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::LocalBucket::new()).await;
                }
            )*
        }
        mod gcs {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::GcsBucket::new().await).await;
                }
            )*
        }
        mod emulator {
            $(
                $(#[$emulator])*
                #[tokio::test]
                async fn $case() {
                    let emulator = super::GcsEmulator::start(super::EMULATOR_LATENCY);
                    super::$case(&super::GcsBucket::at(&emulator.endpoint()).await).await;
                }
            )*
        }
    };
}

conformance!(
    flat_listing_pages_through_every_key_in_order,
    // GCS pages objects and prefixes together (the emulator does too): in pages of one, the
    // server's page after the token `t/d.txt` is [object t/d.txt, prefix t/d/], which the
    // driver once cut at the smaller of the two, losing t/d/.
    delimited_listing_returns_directories_as_prefixes_and_paginates,
    stat_reports_objects_only,
    reads_are_bounded,
    open_read_streams_small_and_empty_objects,
    open_read_streams_a_large_object_unchanged,
    open_read_of_a_missing_object_is_none,
    copy_copies_and_a_missing_source_is_not_found,
    delete_removes_the_version_given,
    versions_change_when_an_object_is_written_again,
    a_prefix_is_applied_and_stripped,
    hostile_keys_are_refused,
);

/// A copy onto an existing object leaves it alone and says so. Not on fake-gcs-server, which
/// ignores `ifGenerationMatch` and replaces it (with the same bytes, for a content-addressed
/// blob); the emulator honours the precondition as GCS does.
async fn copy_leaves_existing_destinations_alone(bucket: &dyn Bucket) {
    let data = b"layer bytes";
    bucket.put("src/data", data).await;
    bucket.put("taken/data", b"other").await;
    let store = bucket.store("");
    let digest = Digest::of(data);
    let first = store.copy("src/data", "dst/x/data", Some(&digest)).await;
    assert_eq!(first.expect("copy"), CopyOutcome::Copied(data.len() as u64));
    let again = store.copy("src/data", "dst/x/data", Some(&digest)).await;
    assert_eq!(again.expect("copy"), CopyOutcome::AlreadyPresent);
    let taken = store.copy("src/data", "taken/data", None).await;
    assert_eq!(taken.expect("copy"), CopyOutcome::AlreadyPresent);
    assert_eq!(
        bucket.get("taken/data").await.as_deref(),
        Some(&b"other"[..])
    );
}

#[tokio::test]
async fn local_copy_leaves_existing_destinations_alone() {
    copy_leaves_existing_destinations_alone(&LocalBucket::new()).await;
}

#[tokio::test]
async fn emulator_copy_leaves_existing_destinations_alone() {
    let emulator = GcsEmulator::start(EMULATOR_LATENCY);
    copy_leaves_existing_destinations_alone(&GcsBucket::at(&emulator.endpoint()).await).await;
}

/// A delete removes the object in the version a stat (or listing) gave, says when nothing is
/// there, and refuses hostile keys. Stats and listings say when the object was written.
async fn delete_removes_the_version_given(bucket: &dyn Bucket) {
    let before = std::time::SystemTime::now() - Duration::from_secs(60);
    bucket.put("d/x/data", b"abandoned").await;
    bucket.put("d/y/data", b"kept").await;
    let store = bucket.store("");
    let meta = store.stat("d/x/data").await.expect("stat").expect("exists");
    let created = meta.created.expect("a creation time");
    assert!(created > before, "{created:?}");
    let listed = store
        .list("d/", &ListOptions::default())
        .await
        .expect("list");
    assert!(
        listed.objects.iter().all(|o| o.created.is_some()),
        "{listed:?}"
    );
    let version = meta.version.expect("a version");
    let deleted = store.delete("d/x/data", &version).await.expect("delete");
    assert_eq!(deleted, DeleteOutcome::Deleted);
    assert_eq!(bucket.get("d/x/data").await, None);
    assert_eq!(bucket.get("d/y/data").await.as_deref(), Some(&b"kept"[..]));
    let again = store.delete("d/x/data", &version).await.expect("delete");
    assert_eq!(again, DeleteOutcome::Absent);
    let hostile = store.delete("d/../y/data", &version).await;
    assert!(
        matches!(hostile, Err(StorageError::InvalidKey(_))),
        "{hostile:?}"
    );
}

/// A delete of a version that is no longer the object's keeps the object. Not on
/// fake-gcs-server, which ignores `ifGenerationMatch` on delete too; the emulator honours it.
async fn delete_keeps_an_object_written_again(bucket: &dyn Bucket) {
    bucket.put("d/z/data", b"first").await;
    let store = bucket.store("");
    let meta = store.stat("d/z/data").await.expect("stat").expect("exists");
    let listed = meta.version.expect("a version");
    bucket.put("d/z/data", b"second, longer").await;
    let outcome = store.delete("d/z/data", &listed).await.expect("delete");
    assert_eq!(outcome, DeleteOutcome::Changed);
    assert_eq!(
        bucket.get("d/z/data").await.as_deref(),
        Some(&b"second, longer"[..])
    );
}

#[tokio::test]
async fn local_delete_keeps_an_object_written_again() {
    delete_keeps_an_object_written_again(&LocalBucket::new()).await;
}

#[tokio::test]
async fn emulator_delete_keeps_an_object_written_again() {
    let emulator = GcsEmulator::start(EMULATOR_LATENCY);
    delete_keeps_an_object_written_again(&GcsBucket::at(&emulator.endpoint()).await).await;
}

/// A listed object's version is the one a stat reports, and it changes when the object is
/// written again (GCS: the generation; local: inode, modification time and size).
async fn versions_change_when_an_object_is_written_again(bucket: &dyn Bucket) {
    bucket.put("v/link", b"sha256:1").await;
    let store = bucket.store("");
    let listed = store
        .list("v/", &ListOptions::default())
        .await
        .expect("list");
    let before = listed.objects[0].version.clone().expect("a version");
    let stat = store.stat("v/link").await.expect("stat").expect("exists");
    assert_eq!(stat.version.as_deref(), Some(before.as_str()));
    bucket.put("v/link", b"sha256:22").await;
    let listed = store
        .list("v/", &ListOptions::default())
        .await
        .expect("list");
    let after = listed.objects[0].version.clone().expect("a version");
    assert_ne!(before, after);
}

/// 64 metadata GETs at once, each answered 50 ms late, are all in flight together (a serializing
/// server would show one at a time), and every request is counted by its kind. Overlap is read
/// from the emulator's peak in-flight counter, not from the clock (a loaded machine can stretch
/// any wall time).
#[tokio::test]
async fn emulator_overlaps_delayed_requests_and_counts_them_by_kind() {
    const REQUESTS: u64 = 64;
    let emulator = GcsEmulator::start(Duration::from_millis(50));
    let bucket = GcsBucket::at(&emulator.endpoint()).await;
    bucket.put("src/data", b"layer bytes").await;
    let created = emulator.stats();
    assert_eq!(created.count(RequestKind::Bucket), 1, "{created:?}");
    assert_eq!(created.count(RequestKind::Upload), 1, "{created:?}");
    let store = bucket.store("");
    emulator.reset_stats();
    let started = Instant::now();
    let stats = (0..REQUESTS).map(|_| store.stat("src/data"));
    for meta in futures::future::join_all(stats).await {
        assert_eq!(meta.expect("stat").expect("exists").size, 11);
    }
    let elapsed = started.elapsed();
    let after = emulator.stats();
    eprintln!("{REQUESTS} stats at 50 ms each took {elapsed:?}: {after:?}");
    assert_eq!(after.count(RequestKind::Metadata), REQUESTS, "{after:?}");
    assert_eq!((after.total, after.in_flight), (REQUESTS, 0), "{after:?}");
    assert!(
        after.peak_in_flight >= REQUESTS / 4,
        "the delayed requests did not overlap: {after:?}"
    );

    emulator.reset_stats();
    emulator.set_latency(Duration::from_millis(5));
    let listed = store.list("src/", &ListOptions::default()).await;
    assert_eq!(listed.expect("list").objects.len(), 1);
    let (meta, _) = open_all(&*store, "src/data").await.expect("exists");
    assert_eq!(meta.size, 11);
    let port = emulator.address().port();
    let rewrite = format!(
        "/storage/v1/b/{}/o/src%2Fdata/rewriteTo/b/{}/o/dst%2Fdata?ifGenerationMatch=0",
        bucket.name(),
        bucket.name()
    );
    let answer = ferry_tests::http_request(port, "POST", &rewrite, "*/*").await;
    assert_eq!(answer.expect("answers").status, 200);
    assert_eq!(
        bucket.get("dst/data").await.as_deref(),
        Some(&b"layer bytes"[..])
    );
    bucket.remove("dst/data").await;
    let kinds = emulator.stats();
    let expected = [
        (RequestKind::List, 1),
        (RequestKind::Metadata, 0),
        (RequestKind::Media, 2),
        (RequestKind::Rewrite, 1),
        (RequestKind::Upload, 0),
        (RequestKind::Delete, 1),
        (RequestKind::Bucket, 0),
        (RequestKind::Other, 0),
    ];
    for (kind, count) in expected {
        assert_eq!(kinds.count(kind), count, "{kind:?}: {kinds:?}");
    }
    assert_eq!(kinds.total, 5, "{kinds:?}");

    // The same counters as JSON; reading them is not a request of its own.
    let answer = ferry_tests::http_request(port, "GET", "/_emulator/stats", "*/*").await;
    let body: serde_json::Value =
        serde_json::from_str(&answer.expect("answers").body).expect("stats are JSON");
    assert_eq!(body["requests"]["media"], 2, "{body}");
    assert_eq!(body["requests"]["rewrite"], 1, "{body}");
    assert_eq!(body["total"], 5, "{body}");
    assert_eq!(body["latency_ms"], 5.0, "{body}");
}

/// What fake-gcs-server cannot show (it ignores `ifGenerationMatch`): a rewrite onto an
/// existing object is refused with 412, so the driver's copy (one rewrite, no look first) leaves
/// an object published meanwhile alone. And errors come as GCS's JSON.
#[tokio::test]
async fn emulator_refuses_a_rewrite_onto_an_existing_object() {
    let emulator = GcsEmulator::start(EMULATOR_LATENCY);
    let bucket = GcsBucket::at(&emulator.endpoint()).await;
    bucket.put("src/data", b"layer bytes").await;
    bucket.put("dst/data", b"published meanwhile").await;
    let store = bucket.store("");
    emulator.reset_stats();
    let outcome = store.copy("src/data", "dst/data", None).await;
    assert_eq!(outcome.expect("copy"), CopyOutcome::AlreadyPresent);
    assert_eq!(emulator.stats().total, 1, "a copy is one request");
    let kept = bucket.get("dst/data").await;
    assert_eq!(kept.as_deref(), Some(&b"published meanwhile"[..]));
    let copied = store.copy("src/data", "new/data", None).await;
    assert_eq!(copied.expect("copy"), CopyOutcome::Copied(11));
    let meta = store.stat("new/data").await.expect("stat").expect("exists");
    let source = store.stat("src/data").await.expect("stat").expect("exists");
    assert_eq!(meta.crc32c, source.crc32c, "the copy keeps the CRC32C");

    let port = emulator.address().port();
    let name = bucket.name();
    let rewrite = format!(
        "/storage/v1/b/{name}/o/src%2Fdata/rewriteTo/b/{name}/o/dst%2Fdata?ifGenerationMatch=0"
    );
    let refused = ferry_tests::http_request(port, "POST", &rewrite, "*/*").await;
    let refused = refused.expect("answers");
    assert_eq!(refused.status, 412, "{refused:?}");
    let error: serde_json::Value = serde_json::from_str(&refused.body).expect("JSON");
    assert_eq!(error["error"]["code"], 412, "{error}");
    assert_eq!(
        error["error"]["errors"][0]["reason"], "conditionNotMet",
        "{error}"
    );
    let missing = format!("/storage/v1/b/{name}/o/no%2Fsuch");
    let missing = ferry_tests::http_request(port, "GET", &missing, "*/*").await;
    let missing = missing.expect("answers");
    assert_eq!(missing.status, 404, "{missing:?}");
    let error: serde_json::Value = serde_json::from_str(&missing.body).expect("JSON");
    assert_eq!(error["error"]["errors"][0]["reason"], "notFound", "{error}");
}

/// The emulator's CRC32C is GCS's (Castagnoli, base64 of the big-endian value): the driver
/// reports the value GCS documents for "hello world", from a listing, a stat and an open alike.
#[tokio::test]
async fn emulator_reports_gcs_crc32c() {
    let emulator = GcsEmulator::start(Duration::ZERO);
    let bucket = GcsBucket::at(&emulator.endpoint()).await;
    bucket.put("a/hello", b"hello world").await;
    let store = bucket.store("");
    let stat = store.stat("a/hello").await.expect("stat").expect("exists");
    assert_eq!(stat.crc32c.as_deref(), Some("yZRlqg=="));
    let (open, _) = open_all(&*store, "a/hello").await.expect("exists");
    assert_eq!(open.crc32c.as_deref(), Some("yZRlqg=="));
    let page = store
        .list("a/", &ListOptions::default())
        .await
        .expect("list");
    assert_eq!(page.objects[0].crc32c.as_deref(), Some("yZRlqg=="));
}
