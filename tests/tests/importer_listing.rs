//! `ListSubRepositories` and `ListRepositoriesCreatedSince` through a real importer gRPC server
//! on real PostgreSQL.

use std::time::Duration;

use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;

use ferry_proto::importer::v1::importer_client::ImporterClient;
use ferry_proto::importer::v1::{
    ListRepositoriesCreatedSinceRequest, ListSubRepositoriesBatchRequest,
    ListSubRepositoriesRequest, RepositoryPage, SubRepositoryPosition,
};
use ferry_tests::{fresh_database, wait_until};

struct Server {
    client: ImporterClient<Channel>,
    pool: PgPool,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = fresh_database("listing").await;
    // Migrate before the server starts, so its own migration finds nothing to do: rows inserted
    // while a later migration alters a table can deadlock with it.
    ferry_importer::migrate_database(&url)
        .await
        .expect("migrate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let args = ferry_importer::config::ImporterArgs {
        listen_addr: addr.to_string(),
        metadata_database_url: Some(url.clone()),
        storage_url: Some(format!("file://{}", dir.path().display())),
        scheduler_url: Some("http://127.0.0.1:1".into()),
        max_concurrent_imports: "1".into(),
        pre_import_timeout_secs: "60".into(),
        import_timeout_secs: "60".into(),
        copy_concurrency: "1".into(),
        tag_concurrency: "4".into(),
        cancel_poll_ms: "1000".into(),
        db_max_connections: "auto".into(),
        shutdown_grace_secs: "5".into(),
        metrics_addr: "off".into(),
        registry_addr: "off".into(),
        security: Default::default(),
        redis_url: None,
        redis_prefix: "ferry".into(),
        governor: Default::default(),
        command: None,
    };
    let config = args.validate().expect("config");
    let task = tokio::spawn(async move {
        ferry_importer::run(config, listener, std::future::pending())
            .await
            .expect("importer runs");
    });
    let client = wait_until(
        "the importer to come up",
        Duration::from_secs(20),
        async || {
            ImporterClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let pool = PgPool::connect(&url).await.expect("pool");
    Server {
        client,
        pool,
        _dir: dir,
        _task: task,
    }
}

/// Inserts a repository created at `created` (epoch seconds), with one tag when `tagged`.
async fn repository(pool: &PgPool, path: &str, created: i64, tagged: bool) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO repositories (path, name, migration_status, created_at, updated_at) \
         VALUES ($1, $2, 'import_complete', to_timestamp($3), to_timestamp($3)) RETURNING id",
    )
    .bind(path)
    .bind(path.rsplit('/').next().unwrap_or(path))
    .bind(created as f64)
    .fetch_one(pool)
    .await
    .expect("repository");
    if tagged {
        let manifest: i64 = sqlx::query_scalar(
            "INSERT INTO manifests (repository_id, digest, media_type, schema_version, payload) \
             VALUES ($1, $2, 'application/vnd.oci.image.manifest.v1+json', 2, '\\x7b7d') RETURNING id",
        )
        .bind(id)
        .bind(format!("sha256:{}", "0".repeat(64)))
        .fetch_one(pool)
        .await
        .expect("manifest");
        sqlx::query(
            "INSERT INTO tags (repository_id, name, manifest_id) VALUES ($1, 'latest', $2)",
        )
        .bind(id)
        .bind(manifest)
        .execute(pool)
        .await
        .expect("tag");
    }
}

fn paths(page: &RepositoryPage) -> Vec<&str> {
    page.repositories.iter().map(|r| r.path.as_str()).collect()
}

async fn sub(
    client: &mut ImporterClient<Channel>,
    path: &str,
    n: u32,
    last: &str,
) -> Result<RepositoryPage, tonic::Status> {
    let request = ListSubRepositoriesRequest {
        path: path.into(),
        n,
        last: last.into(),
    };
    client
        .list_sub_repositories(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn sub_repositories_are_the_tagged_paths_at_or_under_a_path_in_pages() {
    let mut s = server().await;
    for (path, tagged) in [
        ("a/b", true),
        ("a/b/c", true),
        ("a/b/c/d", true),
        ("a/b/untagged", false),
        ("a/bc", true),  // shares the prefix "a/b" but is not under it
        ("a/b_x", true), // "_" is a LIKE wildcard: must not match either
        ("a/b-x", true), // sorts between "a/b" and "a/b/": inside the index range, filtered out
        ("a-b/c", true),
        ("z/other", true),
    ] {
        repository(&s.pool, path, 1_700_000_000, tagged).await;
    }
    let first = sub(&mut s.client, "a/b", 2, "").await.expect("page 1");
    assert_eq!(paths(&first), ["a/b", "a/b/c"]);
    assert_eq!(first.next_last, "a/b/c", "a full page carries the marker");
    let second = sub(&mut s.client, "a/b", 2, &first.next_last)
        .await
        .expect("page 2");
    assert_eq!(paths(&second), ["a/b/c/d"]);
    assert_eq!(second.next_last, "", "a short page is the last");
    assert_eq!(
        paths(&sub(&mut s.client, "a/b/c", 0, "").await.expect("list")),
        ["a/b/c", "a/b/c/d"]
    );
    let under_a = sub(&mut s.client, "a", 100, "").await.expect("list");
    assert_eq!(
        paths(&under_a),
        ["a/b", "a/b-x", "a/b/c", "a/b/c/d", "a/b_x", "a/bc"]
    );
    assert_eq!(under_a.repositories[2].name, "c");
    assert!(
        under_a.repositories[0]
            .created_at
            .starts_with("2023-11-14T22:13:20.000")
    );
    // A known namespace without such repositories is an empty page; an unknown one is NOT_FOUND.
    assert!(
        sub(&mut s.client, "a/zzz", 10, "")
            .await
            .expect("list")
            .repositories
            .is_empty()
    );
    assert_eq!(
        sub(&mut s.client, "nope/x", 10, "")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    for (path, n, last) in [
        ("a/b", 1001, ""),
        ("a/b", 10, "../x"),
        ("A/b", 10, ""),
        ("a//b", 10, ""),
    ] {
        let code = sub(&mut s.client, path, n, last).await.unwrap_err().code();
        assert_eq!(code, Code::InvalidArgument, "{path} {n} {last}");
    }
}

#[tokio::test]
async fn repositories_created_since_page_by_creation_time() {
    let mut s = server().await;
    let base = 1_700_000_000;
    repository(&s.pool, "g/old", base - 3600, true).await;
    // Three created in the same second: ties are broken by id, so paging neither repeats nor skips.
    for path in ["g/one", "g/two", "g/three"] {
        repository(&s.pool, path, base, true).await;
    }
    repository(&s.pool, "g/later", base + 60, true).await;
    repository(&s.pool, "g/untagged", base + 60, false).await;
    let since = "2023-11-14T22:13:20Z"; // == base
    let mut seen = Vec::new();
    let mut last = String::new();
    loop {
        let request = ListRepositoriesCreatedSinceRequest {
            since: since.into(),
            n: 2,
            last: last.clone(),
        };
        let page = s
            .client
            .list_repositories_created_since(request)
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.repositories.iter().map(|r| r.path.clone()));
        if page.next_last.is_empty() {
            break;
        }
        last = page.next_last;
    }
    assert_eq!(seen, ["g/one", "g/two", "g/three", "g/later"]);
    for (since, last) in [("yesterday", ""), (since, "garbage")] {
        let request = ListRepositoriesCreatedSinceRequest {
            since: since.into(),
            n: 2,
            last: last.into(),
        };
        let code = s
            .client
            .list_repositories_created_since(request)
            .await
            .unwrap_err()
            .code();
        assert_eq!(code, Code::InvalidArgument);
    }
}

#[tokio::test]
async fn the_batch_lists_every_path_in_index_order_page_by_page() {
    let mut s = server().await;
    for (path, tagged) in [
        ("a/b", true),
        ("a/b/c", true),
        ("a/b/c/d", true),
        ("a/b/untagged", false),
        ("a/b-x", true),
        ("a/b.x", true),
        ("a/bc", true),
        ("z/other", true),
    ] {
        repository(&s.pool, path, 1_700_000_000, tagged).await;
    }
    let paths: Vec<String> = ["a/b", "BAD//", "z", "a/b/c", "nope"]
        .map(str::to_owned)
        .to_vec();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .client
            .list_sub_repositories_batch(ListSubRepositoriesBatchRequest {
                paths: paths.clone(),
                n: 2,
                after: after.take(),
            })
            .await
            .expect("page")
            .into_inner();
        assert_eq!(page.invalid, [1], "the bad path is reported on every page");
        let entries: Vec<(u32, String)> = page
            .repositories
            .iter()
            .map(|r| (r.index, r.path.clone()))
            .collect();
        pages.push(entries);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    let owned = |v: &[(u32, &str)]| -> Vec<(u32, String)> {
        v.iter().map(|(i, p)| (*i, (*p).to_owned())).collect()
    };
    assert_eq!(
        pages,
        [
            owned(&[(0, "a/b"), (0, "a/b/c")]),
            owned(&[(0, "a/b/c/d"), (2, "z/other")]),
            owned(&[(3, "a/b/c"), (3, "a/b/c/d")]),
            owned(&[]),
        ]
    );
    for request in [
        ListSubRepositoriesBatchRequest::default(),
        ListSubRepositoriesBatchRequest {
            paths: vec!["a".into()],
            n: 10_001,
            after: None,
        },
        ListSubRepositoriesBatchRequest {
            paths: vec!["a".into()],
            n: 10,
            after: Some(SubRepositoryPosition {
                index: 1,
                path: String::new(),
            }),
        },
        ListSubRepositoriesBatchRequest {
            paths: vec!["a".into(); 1001],
            n: 10,
            after: None,
        },
    ] {
        let code = s
            .client
            .list_sub_repositories_batch(request.clone())
            .await
            .unwrap_err()
            .code();
        assert_eq!(code, Code::InvalidArgument, "{request:?}");
    }
}
