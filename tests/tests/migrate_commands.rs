//! `ferry-scheduler migrate` and `ferry-importer migrate`, the Helm chart's pre-install and
//! pre-upgrade Job: each applies its schema to an empty database, again as a no-op, and refuses
//! to run without its database URL.

use std::process::{Command, Output};

use ferry_tests::fresh_database;
use ferry_tests::processes::bin_dir;

fn run(binary: &str, variable: &str, url: Option<&str>) -> Output {
    let mut command = Command::new(bin_dir().join(binary));
    command
        .arg("migrate")
        .env_remove("FERRY_DATABASE_URL")
        .env_remove("FERRY_METADATA_DATABASE_URL");
    if let Some(url) = url {
        command.env(variable, url);
    }
    command
        .output()
        .expect("the binary runs (make test builds it)")
}

async fn tables(url: &str) -> Vec<String> {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("tables")
}

#[tokio::test]
async fn each_binary_migrates_its_database_and_exits() {
    for (binary, variable, table) in [
        (
            "ferry-scheduler",
            "FERRY_DATABASE_URL",
            "container_repositories",
        ),
        (
            "ferry-importer",
            "FERRY_METADATA_DATABASE_URL",
            "repositories",
        ),
    ] {
        let url = fresh_database("migrate").await;
        for attempt in ["first", "again"] {
            let output = run(binary, variable, Some(&url));
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{binary} migrate ({attempt}): {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(stdout.contains("schema at version 2026"), "{stdout}");
        }
        let tables = tables(&url).await;
        assert!(tables.iter().any(|t| t == table), "{binary}: {tables:?}");
        assert!(tables.iter().any(|t| t == "_sqlx_migrations"), "{tables:?}");

        let output = run(binary, variable, None);
        assert_eq!(output.status.code(), Some(2), "{binary} without a URL");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{stderr}");
    }
}
