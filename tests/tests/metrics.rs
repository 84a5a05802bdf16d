//! The `/metrics` endpoints of both services after migrating the sample registry: the
//! migration's figures, steps by type, slots, storage, database queries, gRPC requests, the
//! lease. Scraped over HTTP like Prometheus does.

use std::time::Duration;

use ferry_tests::{Cluster, SampleRegistry, metric, poll_until};

/// Sums `series` over both importers.
async fn importers_sum(cluster: &Cluster, series: &str) -> f64 {
    let mut sum = 0.0;
    for i in 0..cluster.importer_urls.len() {
        sum += metric(&cluster.importer_metrics(i).await, series).unwrap_or(0.0);
    }
    sum
}

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
        importers_sum(
            &cluster,
            "ferry_import_steps_total{type=\"pre\",result=\"complete\"}"
        )
        .await,
        done
    );
    assert_eq!(
        importers_sum(
            &cluster,
            "ferry_import_steps_total{type=\"final\",result=\"complete\"}"
        )
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
    assert!(importers_sum(&cluster, "ferry_import_bytes_copied_total{type=\"pre\"}").await > 0.0);
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

/// The names the services register (`registry.register("name", ...)`), prefixed `ferry_`.
fn registered_names() -> Vec<String> {
    let root = ferry_tests::workspace_root();
    let mut names = Vec::new();
    for file in [
        "shared/src/metrics.rs",
        "scheduler/src/metrics.rs",
        "importer/src/metrics.rs",
    ] {
        let source = std::fs::read_to_string(root.join(file)).expect("source");
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".register(") {
            rest = &rest[at + ".register(".len()..];
            let quoted = rest.trim_start();
            if let Some(name) = quoted.strip_prefix('"').and_then(|q| q.split('"').next()) {
                names.push(format!("ferry_{name}"));
            }
        }
    }
    names
}

#[test]
fn the_dashboard_only_uses_metrics_the_services_register() {
    let registered = registered_names();
    assert!(registered.len() > 40, "{registered:?}");
    let dashboard = std::fs::read_to_string(
        ferry_tests::workspace_root().join("helm/ferry/dashboards/ferry-migration.json"),
    )
    .expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() > 20));
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("ferry_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 20, "{names:?}");
    for name in names {
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            registered.iter().any(|r| r == family),
            "the dashboard uses {name}, which no service registers"
        );
    }
}
