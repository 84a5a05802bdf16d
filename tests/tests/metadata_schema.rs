//! The metadata database's own guards, against real PostgreSQL: whatever reaches it, a blob or
//! manifest row carries a well-formed sha256 digest (`sha256:` and 64 lowercase hex digits).

use ferry_importer::store::MetadataStore;
use ferry_tests::fresh_database;
use sqlx::PgPool;

const GOOD: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Digests the checks must refuse, with why.
fn bad_digests() -> Vec<(String, &'static str)> {
    let hex = &GOOD["sha256:".len()..];
    vec![
        (GOOD.to_uppercase(), "upper case"),
        (format!("sha256:{}", hex.to_uppercase()), "upper-case hex"),
        (format!("sha512:{hex}"), "another algorithm"),
        (format!("sha256:{}", &hex[1..]), "63 digits"),
        (format!("{GOOD}0"), "65 digits"),
        (format!("sha256:{}g", &hex[1..]), "not hex"),
        (
            format!("sha256:{}é", &hex[2..]),
            "a two-byte character in 71 bytes",
        ),
        (format!("sha256:{}\n", &hex[1..]), "a trailing newline"),
        (format!(" {}", &GOOD[1..]), "no prefix"),
        (String::new(), "empty"),
    ]
}

/// Checks that `insert` takes [`GOOD`] and that `constraint` refuses every one of
/// [`bad_digests`].
async fn takes_only_good_digests<F, Fut>(insert: F, constraint: &str)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<sqlx::postgres::PgQueryResult, sqlx::Error>>,
{
    insert(GOOD.to_owned()).await.expect("a good digest");
    for (digest, why) in bad_digests() {
        let error = insert(digest.clone())
            .await
            .expect_err(&format!("{why}: {digest:?} must be refused"));
        assert!(error.to_string().contains(constraint), "{why}: {error}");
    }
}

async fn schema() -> PgPool {
    let url = fresh_database("schema").await;
    MetadataStore::connect(&url, 2)
        .await
        .expect("connect")
        .migrate()
        .await
        .expect("migrate");
    PgPool::connect(&url).await.expect("pool")
}

#[tokio::test]
async fn blob_rows_take_only_well_formed_digests() {
    let db = schema().await;
    let insert = |digest: String| {
        let db = db.clone();
        async move {
            sqlx::query("INSERT INTO blobs (digest, size, media_type) VALUES ($1, 1, 'x')")
                .bind(digest)
                .execute(&db)
                .await
        }
    };
    takes_only_good_digests(insert, "blobs_digest_check").await;
}

#[tokio::test]
async fn manifest_rows_take_only_well_formed_digests() {
    let db = schema().await;
    let repository: i64 = sqlx::query_scalar(
        "INSERT INTO repositories (path, name) VALUES ('g/p', 'p') RETURNING id",
    )
    .fetch_one(&db)
    .await
    .expect("repository");
    let insert = |digest: String| {
        let db = db.clone();
        async move {
            sqlx::query(
                "INSERT INTO manifests (repository_id, digest, media_type, schema_version, payload) \
                 VALUES ($1, $2, 'x', 2, '\\x7b7d')",
            )
            .bind(repository)
            .bind(digest)
            .execute(&db)
            .await
        }
    };
    takes_only_good_digests(insert, "manifests_digest_check").await;
}
