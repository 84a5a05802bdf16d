use super::*;

fn store_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (key, data) in files {
        let path = dir.path().join(key);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, data).expect("write");
    }
    let store = LocalStore::new(dir.path().to_path_buf()).expect("store");
    (dir, store)
}

async fn list_all(store: &LocalStore, prefix: &str, delimited: bool, page: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut options = ListOptions {
        delimited,
        page_token: None,
        max_results: page,
    };
    loop {
        let result = store.list(prefix, &options).await.expect("list");
        keys.extend(result.objects.into_iter().map(|o| o.key));
        keys.extend(result.prefixes);
        match result.next_page_token {
            Some(token) => options.page_token = Some(token),
            None => return keys,
        }
    }
}

#[tokio::test]
async fn flat_listing_pages_through_every_key_in_order() {
    let files: Vec<(String, &[u8])> = (0..25)
        .flat_map(|i| {
            [
                (format!("r/d{i:02}/x"), b"x" as &[u8]),
                (format!("r/d{i:02}.txt"), b"yy" as &[u8]),
            ]
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let (_dir, store) = store_with(&refs);
    let mut expected: Vec<String> = files.iter().map(|(k, _)| k.clone()).collect();
    expected.sort();
    for page in [1, 3, 7, 1000] {
        assert_eq!(
            list_all(&store, "r/", false, page).await,
            expected,
            "page size {page}"
        );
    }
    assert_eq!(list_all(&store, "r/d0", false, 4).await.len(), 20);
}

#[tokio::test]
async fn delimited_listing_returns_directories_as_prefixes() {
    let (_dir, store) = store_with(&[
        ("t/a/current/link", b"1"),
        ("t/b/current/link", b"2"),
        ("t/c", b"3"),
        ("t/d/x/y", b"4"),
    ]);
    let all = list_all(&store, "t/", true, 1).await;
    assert_eq!(
        all,
        vec!["t/a/", "t/b/", "t/c", "t/d/"],
        "one entry a page keeps key order"
    );
    let page = store
        .list(
            "t/",
            &ListOptions {
                delimited: true,
                page_token: None,
                max_results: 2,
            },
        )
        .await
        .expect("list");
    assert_eq!(page.prefixes, vec!["t/a/", "t/b/"]);
    assert_eq!(page.next_page_token.as_deref(), Some("t/b/"));
    assert!(list_all(&store, "missing/", true, 10).await.is_empty());
}

#[tokio::test]
async fn copy_is_atomic_verified_and_skips_existing_destinations() {
    let data = b"layer bytes";
    let digest = Digest::of(data);
    let (dir, store) = store_with(&[("src/data", data), ("bad/data", b"tampered")]);
    let outcome = store
        .copy("src/data", "dst/x/data", Some(&digest))
        .await
        .expect("copy");
    assert_eq!(outcome, CopyOutcome::Copied(data.len() as u64));
    assert_eq!(fs::read(dir.path().join("dst/x/data")).expect("read"), data);
    let again = store
        .copy("src/data", "dst/x/data", Some(&digest))
        .await
        .expect("copy");
    assert_eq!(again, CopyOutcome::AlreadyPresent);

    let err = store
        .copy("bad/data", "dst/y/data", Some(&digest))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
    assert!(
        !dir.path().join("dst/y/data").exists(),
        "a refused copy leaves nothing"
    );
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("dst/y"))
        .map(Iterator::collect)
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "no temp file left behind");

    let err = store
        .copy("nope/data", "dst/z/data", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn copies_link_when_they_can_and_move_bytes_when_asked() {
    use std::os::unix::fs::MetadataExt as _;
    let data = b"layer bytes";
    let digest = Digest::of(data);
    let (dir, store) = store_with(&[("src/data", data)]);
    let inode = |key: &str| fs::metadata(dir.path().join(key)).expect("meta").ino();
    store
        .copy("src/data", "linked/data", Some(&digest))
        .await
        .expect("link");
    assert_eq!(inode("linked/data"), inode("src/data"), "shares the bytes");
    let bytes = store.clone().with_byte_copies();
    let outcome = bytes
        .copy("src/data", "moved/data", Some(&digest))
        .await
        .expect("copy");
    assert_eq!(outcome, CopyOutcome::Copied(data.len() as u64));
    assert_ne!(inode("moved/data"), inode("src/data"), "a copy of its own");
    assert_eq!(fs::read(dir.path().join("moved/data")).expect("read"), data);
    // A symbolic link is never linked: its target's bytes are copied (and verified).
    std::os::unix::fs::symlink(dir.path().join("src/data"), dir.path().join("src/alias"))
        .expect("symlink");
    store
        .copy("src/alias", "from-alias/data", Some(&digest))
        .await
        .expect("copy");
    let meta = fs::symlink_metadata(dir.path().join("from-alias/data")).expect("meta");
    assert!(meta.is_file() && meta.ino() != inode("src/data"));
}

#[tokio::test]
async fn hostile_keys_are_refused() {
    let (_dir, store) = store_with(&[("a/b", b"1")]);
    for key in ["../etc/passwd", "/etc/passwd", "a/../../x", "a//b", ""] {
        let err = store.read(key, 10).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey(_)), "{key}: {err}");
    }
}

#[tokio::test]
async fn reads_are_bounded_and_stat_reports_size() {
    let (_dir, store) = store_with(&[("a/b", b"12345")]);
    assert_eq!(store.read("a/b", 5).await.expect("read"), &b"12345"[..]);
    assert!(matches!(
        store.read("a/b", 4).await,
        Err(StorageError::TooLarge { .. })
    ));
    assert!(matches!(
        store.read("a/c", 4).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(
        store.stat("a/b").await.expect("stat").map(|m| m.size),
        Some(5)
    );
    assert_eq!(store.stat("a").await.expect("stat"), None);
    assert_eq!(store.stat("zz").await.expect("stat"), None);
}

/// Every chunk of `key`'s stream, and its metadata; `None` when the store says it is absent.
async fn stream_chunks(store: &LocalStore, key: &str) -> Option<(ObjectMeta, Vec<Bytes>)> {
    use futures::TryStreamExt as _;
    let reader = store.open_read(key).await.expect("open")?;
    let chunks = reader.body.try_collect().await.expect("stream");
    Some((reader.meta, chunks))
}

#[tokio::test]
async fn open_read_streams_small_and_empty_files() {
    let (_dir, store) = store_with(&[("a/b", b"12345"), ("a/empty", b"")]);
    let (meta, chunks) = stream_chunks(&store, "a/b").await.expect("exists");
    assert_eq!((meta.key.as_str(), meta.size), ("a/b", 5));
    assert_eq!(chunks, [&b"12345"[..]]);
    let (meta, chunks) = stream_chunks(&store, "a/empty").await.expect("exists");
    assert_eq!(meta.size, 0);
    assert!(chunks.is_empty(), "{chunks:?}");
}

#[tokio::test]
async fn open_read_streams_a_large_file_in_bounded_chunks() {
    let data: Vec<u8> = (0..5 * STREAM_CHUNK + 123)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let (_dir, store) = store_with(&[("blobs/big", &data)]);
    let (meta, chunks) = stream_chunks(&store, "blobs/big").await.expect("exists");
    assert_eq!(meta.size, data.len() as u64);
    assert!(chunks.len() >= 6, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.len() <= STREAM_CHUNK));
    assert!(chunks.iter().all(|c| !c.is_empty()));
    assert_eq!(chunks.concat(), data, "the same bytes, in order");
}

#[tokio::test]
async fn open_read_of_what_is_not_an_object_is_none() {
    let (dir, store) = store_with(&[("a/b", b"1")]);
    for key in ["a/c", "zz", "a", "a/b/c"] {
        assert!(store.open_read(key).await.expect(key).is_none(), "{key}");
    }
    // A FIFO is not an object, and the open does not wait for a writer.
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        dir.path().join("a/fifo"),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    let opened = tokio::time::timeout(std::time::Duration::from_secs(5), store.open_read("a/fifo"));
    assert!(opened.await.expect("no wait").expect("open").is_none());
}

#[tokio::test]
async fn open_read_refuses_hostile_keys() {
    let (_dir, store) = store_with(&[("a/b", b"1")]);
    for key in [
        "../etc/passwd",
        "/etc/passwd",
        "a/../../x",
        "a/../b",
        "a//b",
        "",
    ] {
        let err = store.open_read(key).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey(_)), "{key}: {err}");
    }
}

#[tokio::test]
async fn a_file_cut_short_while_streamed_ends_the_stream_with_an_error() {
    use futures::StreamExt as _;
    let data = vec![7u8; 3 * STREAM_CHUNK];
    let (dir, store) = store_with(&[("a/b", &data)]);
    let mut reader = store.open_read("a/b").await.expect("open").expect("exists");
    let first = reader.body.next().await.expect("a chunk").expect("bytes");
    assert_eq!(first.len(), STREAM_CHUNK);
    fs::File::options()
        .write(true)
        .open(dir.path().join("a/b"))
        .expect("open")
        .set_len(STREAM_CHUNK as u64 + 10)
        .expect("truncate");
    let rest: Vec<_> = reader.body.collect().await;
    let (last, bytes) = rest.split_last().expect("an item");
    assert!(bytes.iter().all(Result::is_ok));
    assert!(
        matches!(last, Err(StorageError::Io { source, .. })
            if source.kind() == io::ErrorKind::UnexpectedEof),
        "{last:?}"
    );
}
