//! The `/metrics` endpoints of both services after migrating the sample registry: the
//! migration's figures, steps by type, slots, storage, database queries, gRPC requests, the
//! lease. Scraped over HTTP like Prometheus does. And on freshly started processes: every
//! metric the dashboard and the alerts read has a series before anything happened.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_tests::metric_names::{
    ALERT_RULES, DASHBOARD, Exporter, exporter_of, family, metric_names_in, registered,
    used_by_dashboard_and_rules,
};
use ferry_tests::processes::{Process, connect_scheduler, free_port};
use ferry_tests::{
    Cluster, SampleRegistry, fresh_database, http_request, metric, poll_until, redis_url,
    unique_suffix,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_report_the_migration_on_metrics() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 2).await;
    cluster.inventory().await;
    let summary = cluster.migrate(Duration::from_secs(120)).await;
    let done = ferry_tests::state_count(&summary, "import_done") as f64;
    assert!(done > 0.0, "{summary:?}");

    // Scheduler: the gauges refresh every 15 s, so a gentle poll is enough.
    let caught_up = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        async || {
            let text = cluster.metrics().await;
            if metric(&text, "ferry_repositories{state=\"import_done\"}") == Some(done) {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    let text = caught_up.unwrap_or_else(|text| panic!("state gauge never caught up:\n{text}"));
    assert_eq!(
        metric(&text, "ferry_migration_pending_repositories"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "ferry_imports_in_flight{type=\"final\"}"),
        Some(0.0)
    );
    assert!(metric(&text, "ferry_migration_done_per_minute").unwrap_or(0.0) > 0.0);
    assert_eq!(
        metric(
            &text,
            "ferry_import_results_total{type=\"final\",status=\"import_complete\"}"
        ),
        Some(done)
    );
    assert_eq!(
        metric(
            &text,
            "ferry_import_results_total{type=\"pre\",status=\"pre_import_complete\"}"
        ),
        Some(done)
    );
    assert_eq!(metric(&text, "ferry_lease_held"), Some(1.0));
    assert_eq!(metric(&text, "ferry_lease_acquisitions_total"), Some(1.0));
    let notified = metric(
        &text,
        "ferry_grpc_server_requests_total{method=\"/ferry.scheduler.v1.Scheduler/NotifyImportResult\",code=\"OK\"}",
    );
    assert_eq!(notified, Some(2.0 * done), "one notification per step");
    assert!(
        metric(
            &text,
            "ferry_db_query_duration_seconds_count{db=\"scheduler\",query=\"claim_ready\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "named query timings:\n{text}"
    );
    assert_eq!(
        metric(&text, "ferry_db_pool_max_connections{db=\"scheduler\"}"),
        Some(10.0)
    );

    // Importers: their steps, slots and copies.
    assert_eq!(
        cluster
            .importers_metric_sum("ferry_import_steps_total{type=\"pre\",result=\"complete\"}")
            .await,
        done
    );
    assert_eq!(
        cluster
            .importers_metric_sum("ferry_import_steps_total{type=\"final\",result=\"complete\"}")
            .await,
        done
    );
    let importer = cluster.importer_metrics(0).await;
    assert_eq!(
        metric(&importer, "ferry_importer_slots{state=\"total\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&importer, "ferry_importer_slots{state=\"busy\"}"),
        Some(0.0)
    );
    assert!(
        cluster
            .importers_metric_sum("ferry_import_bytes_copied_total{type=\"pre\"}")
            .await
            > 0.0
    );
    assert!(
        metric(
            &importer,
            "ferry_storage_requests_total{operation=\"copy\",outcome=\"ok\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{importer}"
    );
    assert!(
        metric(
            &importer,
            "ferry_db_query_duration_seconds_count{db=\"metadata\",query=\"commit_step\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{importer}"
    );
}

/// Whether a `/metrics` text has a sample of `name` (with or without labels).
fn has_series(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// The `/metrics` text on `port`, once it answers.
async fn scrape_when_up(port: u16) -> Option<String> {
    let response = http_request(port, "GET", "/metrics", "*/*").await?;
    (response.status == 200).then_some(response.body)
}

/// Which used names lack a series on the process that exports them.
fn missing(
    used: &BTreeSet<String>,
    exporters: &[(String, Exporter)],
    scheduler: &str,
    importer: &str,
) -> Vec<String> {
    let mut missing = Vec::new();
    for name in used {
        let exporter = exporter_of(name, exporters);
        if exporter.on_scheduler() && !has_series(scheduler, name) {
            missing.push(format!("{name} (scheduler)"));
        }
        if exporter.on_importer() && !has_series(importer, name) {
            missing.push(format!("{name} (importer)"));
        }
    }
    missing
}

/// A scheduler and an importer just started, as processes of their own (the storage, database
/// and gRPC metrics are process-wide): before any inventory, step or request, every metric the
/// dashboard and the alerts read has a series on the process that exports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_read_exists_from_start_up() {
    let used = used_by_dashboard_and_rules();
    assert!(metric_names_in(ALERT_RULES).len() >= 10);
    let exporters = registered();

    let bucket = tempfile::tempdir().expect("bucket");
    let logs = tempfile::tempdir().expect("logs");
    let storage = format!("file://{}", bucket.path().display());
    let prefix = format!("ferry-fresh-{}", unique_suffix());
    let (scheduler_port, scheduler_metrics) = (free_port(), free_port());
    let importer_metrics = free_port();
    let importer = Process::start(
        "ferry-importer",
        "importer",
        free_port(),
        &[
            (
                "FERRY_METADATA_DATABASE_URL",
                fresh_database("fresh_meta").await,
            ),
            ("FERRY_STORAGE_URL", storage.clone()),
            (
                "FERRY_SCHEDULER_URL",
                format!("http://127.0.0.1:{scheduler_port}"),
            ),
            (
                "FERRY_METRICS_ADDR",
                format!("127.0.0.1:{importer_metrics}"),
            ),
            // A governed read budget: its floor is a sixteenth of the rate.
            ("FERRY_STORAGE_READ_RATE", "800".to_owned()),
            ("FERRY_REDIS_URL", redis_url()),
            ("FERRY_REDIS_PREFIX", prefix.clone()),
        ],
        logs.path(),
    );
    let scheduler = Process::start(
        "ferry-scheduler",
        "scheduler",
        scheduler_port,
        &[
            ("FERRY_DATABASE_URL", fresh_database("fresh").await),
            ("FERRY_REDIS_URL", redis_url()),
            ("FERRY_STORAGE_URL", storage),
            ("FERRY_IMPORTERS", importer.url.clone()),
            ("FERRY_REDIS_PREFIX", prefix),
            (
                "FERRY_METRICS_ADDR",
                format!("127.0.0.1:{scheduler_metrics}"),
            ),
        ],
        logs.path(),
    );
    connect_scheduler(&scheduler.url).await;

    // Both serve as soon as they answer; the first gauge refresh runs at start-up too.
    let scraped = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let texts = (
                scrape_when_up(scheduler_metrics).await,
                scrape_when_up(importer_metrics).await,
            );
            let (Some(scheduler), Some(importer)) = texts else {
                return Err((Vec::new(), texts));
            };
            let missing = missing(&used, &exporters, &scheduler, &importer);
            if missing.is_empty() {
                Ok((scheduler, importer))
            } else {
                Err((missing, (Some(scheduler), Some(importer))))
            }
        },
    )
    .await;
    let (scheduler_text, importer_text) = scraped.unwrap_or_else(|(missing, _)| {
        panic!(
            "no series for {missing:?}\nlogs:\n{}\n{}",
            scheduler.log_text(),
            importer.log_text()
        )
    });

    // The known label values, at 0 before anything happened.
    for (text, series, value) in [
        (
            &scheduler_text,
            "ferry_guard_actions_total{action=\"orphaned\"}",
            0.0,
        ),
        (
            &scheduler_text,
            "ferry_bbm_jobs_total{migration=\"restore_missing_repositories\",result=\"failed\"}",
            0.0,
        ),
        (
            &scheduler_text,
            "ferry_bbm_migration_progress_ratio{migration=\"restore_missing_repositories\"}",
            0.0,
        ),
        (
            &scheduler_text,
            "ferry_import_results_total{type=\"final\",status=\"import_failed\"}",
            0.0,
        ),
        (
            &scheduler_text,
            "ferry_steps_past_time_limit{type=\"pre\"}",
            0.0,
        ),
        (&scheduler_text, "ferry_migration_enabled", 0.0),
        (&scheduler_text, "ferry_enqueue_triggers_total", 0.0),
        (
            &scheduler_text,
            "ferry_storage_budget_floor{budget=\"read\"}",
            0.0,
        ),
        (
            &importer_text,
            "ferry_storage_throttled_total{operation=\"copy\"}",
            0.0,
        ),
        (
            &importer_text,
            "ferry_storage_budget_cuts_total{budget=\"write\"}",
            0.0,
        ),
        (
            &importer_text,
            "ferry_storage_budget_floor{budget=\"read\"}",
            50.0,
        ),
        (
            &importer_text,
            "ferry_storage_budget_floor{budget=\"write\"}",
            0.0,
        ),
        (
            &importer_text,
            "ferry_import_steps_total{type=\"pre\",result=\"failed\"}",
            0.0,
        ),
        (&importer_text, "ferry_registered_repositories", 0.0),
        (
            &importer_text,
            "ferry_grpc_server_requests_total{method=\"/ferry.importer.v1.Importer/StartImport\",code=\"OK\"}",
            0.0,
        ),
    ] {
        assert_eq!(metric(text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        (importer_text.lines())
            .any(|line| line.starts_with("ferry_db_query_errors_total{db=\"metadata\"")),
        "a query's errors series from its first run:\n{importer_text}"
    );
}

/// The registered counts against a full count, over paths whose namespaces interleave in byte
/// order (`a`, `a-x/...`, `a.b/...`, `a/...`), exactly and, above the threshold, estimated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_namespaces_and_repositories_are_counted() {
    use ferry_importer::store::{EXACT_REPOSITORY_COUNT_UP_TO, MetadataStore};
    let url = fresh_database("counts").await;
    let store = MetadataStore::connect(&url, 2).await.expect("connect");
    store.migrate().await.expect("migrate");
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let full_count = async || -> (i64, i64) {
        sqlx::query_as(
            "SELECT count(DISTINCT split_part(path, '/', 1)), count(*) FROM repositories",
        )
        .fetch_one(&pool)
        .await
        .expect("full count")
    };
    let insert = async |paths: &[&str]| {
        sqlx::query("INSERT INTO repositories (path, name) SELECT p, p FROM unnest($1::text[]) p")
            .bind(paths)
            .execute(&pool)
            .await
            .expect("insert");
    };
    let empty = store.registered_counts().await.expect("counts");
    assert_eq!((empty.namespaces, empty.repositories), (0, 0));

    insert(&[
        "a", "a/b", "a/c/d", "a-x/y", "a.b/z", "a0/q", "a_/k", "ab/c", "b", "b/c", "z/z/z",
    ])
    .await;
    let counts = store.registered_counts().await.expect("counts");
    assert_eq!((counts.namespaces, counts.repositories), full_count().await);

    // Many more rows: the repositories become an estimate, once the table is analyzed.
    let rows = EXACT_REPOSITORY_COUNT_UP_TO + 20_000;
    sqlx::query(
        "INSERT INTO repositories (path, name) \
         SELECT 'group-' || (i % 700) || '/project-' || i, 'p' FROM generate_series(1, $1) i",
    )
    .bind(rows)
    .execute(&pool)
    .await
    .expect("insert many");
    sqlx::query("ANALYZE repositories")
        .execute(&pool)
        .await
        .expect("analyze");
    let (namespaces, repositories) = full_count().await;
    let counts = store.registered_counts().await.expect("counts");
    assert_eq!(counts.namespaces, namespaces);
    let error = (counts.repositories - repositories).abs() as f64 / repositories as f64;
    assert!(
        counts.repositories > EXACT_REPOSITORY_COUNT_UP_TO && error < 0.1,
        "estimated {} for {repositories}",
        counts.repositories
    );
}

#[test]
fn the_dashboard_and_the_alerts_only_use_metrics_the_services_register() {
    let registered: Vec<String> = registered().into_iter().map(|(name, _)| name).collect();
    assert!(registered.len() > 40, "{registered:?}");
    let dashboard =
        std::fs::read_to_string(ferry_tests::workspace_root().join(DASHBOARD)).expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() > 20);
    let mut ids: Vec<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "every panel has an id of its own");
    for (file, least) in [(DASHBOARD, 20), (ALERT_RULES, 10)] {
        let names = metric_names_in(file);
        assert!(names.len() > least, "{file}: {names:?}");
        for name in names {
            assert!(
                registered.iter().any(|r| r == family(&name)),
                "{file} uses {name}, which no service registers"
            );
        }
    }
}
