//! The store's semantics, without HTTP: hashes, listings, preconditions, generations.

use bytes::Bytes;

use super::resource::{Hashes, base64};
use super::store::{ApiError, Conditions, ListQuery, Store, successor};

fn store_with(keys: &[&str]) -> Store {
    let store = Store::new("http://127.0.0.1:1".to_owned());
    store.create_bucket("bkt").expect("bucket");
    for key in keys {
        put(&store, key, key.as_bytes());
    }
    store
}

fn put(store: &Store, key: &str, data: &[u8]) -> i64 {
    let data = Bytes::copy_from_slice(data);
    let object = store.put(
        "bkt",
        key,
        data,
        "text/plain".to_owned(),
        &Conditions::default(),
    );
    object.expect("put").generation
}

/// Every entry of a listing, page by page: (objects, prefixes) of each page.
fn pages(store: &Store, query: &ListQuery) -> Vec<(Vec<String>, Vec<String>)> {
    let mut query = query.clone();
    let mut pages = Vec::new();
    loop {
        let page = store.list("bkt", &query).expect("list");
        let names = page.items.iter().map(|o| name_of(&o.resource)).collect();
        pages.push((names, page.prefixes));
        match page.next_page_token {
            Some(token) => query.page_token = Some(token),
            None => return pages,
        }
        assert!(pages.len() < 100, "the listing does not end");
    }
}

fn name_of(resource: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(resource).expect("json");
    value["name"].as_str().expect("name").to_owned()
}

#[test]
fn hashes_are_the_ones_gcs_reports() {
    // As fake-gcs-server and GCS report "hello world" (CRC32C 0xc99465aa).
    let hashes = Hashes::of(b"hello world");
    assert_eq!(hashes.crc32c, "yZRlqg==");
    assert_eq!(hashes.md5, "XrY7u+Ae7tCTyyK7j1rNww==");
    // The CRC32C check value, and the empty object's hashes.
    assert_eq!(
        Hashes::of(b"123456789").crc32c,
        base64(&0xE306_9283_u32.to_be_bytes())
    );
    assert_eq!(Hashes::of(b"").crc32c, "AAAAAA==");
    assert_eq!(Hashes::of(b"").md5, "1B2M2Y8AsgTpgAmY7PhCfg==");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"abc"), "YWJj");
}

#[test]
fn flat_listings_page_in_name_order() {
    let keys = ["a/1", "a/2", "a/3/x", "a0", "b"];
    let store = store_with(&keys);
    let query = ListQuery {
        prefix: "a".to_owned(),
        max_results: 2,
        ..Default::default()
    };
    let listed = pages(&store, &query);
    let names: Vec<_> = listed.iter().flat_map(|(names, _)| names.clone()).collect();
    assert_eq!(names, ["a/1", "a/2", "a/3/x", "a0"]);
    assert_eq!(listed.len(), 2, "no token when nothing follows: {listed:?}");
    let offsets = ListQuery {
        start_offset: Some("a/2".to_owned()),
        end_offset: Some("a0".to_owned()),
        ..Default::default()
    };
    assert_eq!(
        pages(&store, &offsets),
        [(vec!["a/2".into(), "a/3/x".into()], vec![])]
    );
}

#[test]
fn delimited_listings_roll_up_prefixes_and_count_them_as_entries() {
    let keys = ["t/a/1", "t/a/2", "t/b", "t/c/x/y", "t/c.txt", "t/d", "u/x"];
    let store = store_with(&keys);
    let query = ListQuery {
        prefix: "t/".to_owned(),
        delimiter: "/".to_owned(),
        max_results: 2,
        ..Default::default()
    };
    let listed = pages(&store, &query);
    let strings = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        listed,
        [
            (strings(&["t/b"]), strings(&["t/a/"])),
            (strings(&["t/c.txt"]), strings(&["t/c/"])),
            (strings(&["t/d"]), strings(&[])),
        ]
    );
    let top = ListQuery {
        delimiter: "/".to_owned(),
        ..Default::default()
    };
    assert_eq!(pages(&store, &top), [(vec![], strings(&["t/", "u/"]))]);
    // A start offset inside a rolled-up prefix still yields the prefix, as GCS does.
    let from = ListQuery {
        start_offset: Some("t/c/x".to_owned()),
        ..query
    };
    assert_eq!(
        pages(&store, &from),
        [(strings(&["t/d"]), strings(&["t/c/"]))]
    );
}

#[test]
fn a_bad_page_token_or_bucket_is_refused() {
    let store = store_with(&["a"]);
    let query = ListQuery {
        page_token: Some("nonsense".to_owned()),
        ..Default::default()
    };
    assert!(matches!(
        store.list("bkt", &query),
        Err(ApiError::BadRequest(_))
    ));
    let missing = store.list("nope", &ListQuery::default());
    assert!(matches!(missing, Err(ApiError::NotFound(_))));
}

#[test]
fn successors_bound_every_name_under_a_prefix() {
    assert_eq!(successor("a/").as_deref(), Some("a0"));
    assert_eq!(successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
    assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(successor(""), None);
}

#[test]
fn preconditions_hold_or_fail_as_on_gcs() {
    let store = store_with(&[]);
    let absent = Conditions {
        if_generation_match: Some(0),
        ..Default::default()
    };
    let data = || Bytes::from_static(b"x");
    let first = store
        .put("bkt", "k", data(), String::new(), &absent)
        .expect("absent");
    let again = store.put("bkt", "k", data(), String::new(), &absent);
    assert_eq!(again.err(), Some(ApiError::PreconditionFailed));
    let second = put(&store, "k", b"y");
    assert!(second > first.generation, "generations increase");
    let stale = Conditions {
        if_generation_match: Some(first.generation),
        ..Default::default()
    };
    assert_eq!(
        store.delete("bkt", "k", &stale),
        Err(ApiError::PreconditionFailed)
    );
    let pinned_old = Conditions {
        generation: Some(first.generation),
        ..Default::default()
    };
    assert!(matches!(
        store.get("bkt", "k", &pinned_old),
        Err(ApiError::NotFound(_))
    ));
    let not_current = Conditions {
        if_generation_not_match: Some(second),
        ..Default::default()
    };
    assert_eq!(
        store.get("bkt", "k", &not_current).err(),
        Some(ApiError::NotModified)
    );
    // The rewrite's destination precondition, checked with the write.
    let (src, dst) = (("bkt", "k"), ("bkt", "copy"));
    let copied = store.rewrite(src, &Conditions::default(), dst, &absent);
    assert_eq!(copied.expect("copy").data, Bytes::from_static(b"y"));
    let again = store.rewrite(src, &Conditions::default(), dst, &absent);
    assert_eq!(again.err(), Some(ApiError::PreconditionFailed));
    let missing = store.rewrite(("bkt", "nope"), &Conditions::default(), dst, &absent);
    assert!(matches!(missing, Err(ApiError::NotFound(_))));
    let current = Conditions {
        if_generation_match: Some(second),
        ..Default::default()
    };
    assert_eq!(store.delete("bkt", "k", &current), Ok(()));
    assert!(matches!(
        store.delete("bkt", "k", &current),
        Err(ApiError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_bucket("bkt"),
        Err(ApiError::Conflict(_))
    ));
}
