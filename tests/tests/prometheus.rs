//! Debian's real Prometheus scraping a scheduler and two importers, each a process of its own,
//! through a whole migration of the registry-made sample driven by `ferryctl` as an operator
//! would: inventory, migration, a repository dropped from the scheduler's database, the repair
//! scan that finds it, the restore that brings it back and a dry run of `ferryctl gc`. At the
//! end, every target is up, every metric the dashboard and the alert rules read has a series
//! from the process that exports it, every panel query is accepted and answers, every rule
//! evaluates, and no alert is active.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use ferry_tests::metric_names::{
    ALERT_RULES, dashboard_queries, exporter_of, registered, used_by_dashboard_and_rules,
};
use ferry_tests::processes::{self, Process, connect_scheduler, free_port};
use ferry_tests::{
    SampleRegistry, fresh_database, http_request, poll_until, redis_url, unique_suffix, wait_until,
    workspace_root,
};

/// The job labels of the two kinds of targets.
const SCHEDULER_JOB: &str = "ferry-scheduler";
const IMPORTER_JOB: &str = "ferry-importer";

/// The Prometheus server: `FERRY_PROMETHEUS`, else the first `prometheus` on `PATH` (Debian's,
/// which `scripts/setup.sh` installs with promtool).
fn prometheus_binary() -> String {
    if let Ok(binary) = std::env::var("FERRY_PROMETHEUS") {
        return binary;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .map_or_else(
            || "/usr/bin/prometheus".to_owned(),
            |found| found.display().to_string(),
        )
}

/// A query string value, percent-encoded.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running Prometheus and its HTTP API.
struct Prometheus {
    _process: Process,
    port: u16,
}

impl Prometheus {
    /// Starts Prometheus scraping the scheduler and the importers every second and evaluating
    /// the repository's rules file every second, its data in `dir`.
    async fn start(dir: &Path, scheduler: u16, importers: &[u16]) -> Self {
        let targets = |ports: &[u16]| -> String {
            let quoted: Vec<String> = ports.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
            quoted.join(", ")
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{rules}'\n\
             scrape_configs:\n\
             \x20 - job_name: {SCHEDULER_JOB}\n    static_configs:\n      - targets: [{scheduler}]\n\
             \x20 - job_name: {IMPORTER_JOB}\n    static_configs:\n      - targets: [{importers}]\n",
            rules = workspace_root().join(ALERT_RULES).display(),
            scheduler = targets(&[scheduler]),
            importers = targets(importers),
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("prometheus.yml");
        let binary = prometheus_binary();
        assert!(
            Path::new(&binary).exists(),
            "{binary} is missing: `make test` installs Debian's prometheus (scripts/setup.sh)"
        );
        let port = free_port();
        let mut command = std::process::Command::new(&binary);
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let process = Process::spawn(
            command,
            "prometheus",
            format!("http://127.0.0.1:{port}"),
            dir,
        );
        let prometheus = Self {
            _process: process,
            port,
        };
        wait_until(
            "Prometheus to be ready",
            Duration::from_secs(30),
            async || match http_request(port, "GET", "/-/ready", "*/*").await {
                Some(response) if response.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
        prometheus
    }

    /// `GET /api/v1/<path>`: the answer's `data` when its status is `success`, else the whole
    /// answer (its error) as text.
    async fn api(&self, path: &str) -> Result<Value, String> {
        let response = http_request(self.port, "GET", &format!("/api/v1/{path}"), "*/*")
            .await
            .ok_or_else(|| "Prometheus does not answer".to_owned())?;
        let answer: Value = serde_json::from_str(&response.body)
            .map_err(|e| format!("{e}: {} {}", response.status, response.body))?;
        if answer["status"] == "success" {
            Ok(answer["data"].clone())
        } else {
            Err(answer.to_string())
        }
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("query?query={}", encode(promql))).await?;
        match data["result"].as_array() {
            Some(result) if data["resultType"] == "vector" => Ok(result.clone()),
            _ => Err(format!("{promql}: not a vector: {data}")),
        }
    }

    /// The value of a query that yields one sample.
    async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await.ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Runs `ferryctl ARGS` against the scheduler at `url`, asserting it succeeds; its stdout.
fn ferryctl(url: &str, args: &[&str]) -> String {
    let output = processes::ferryctl(url, args);
    assert!(
        output.status.success(),
        "ferryctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_dashboard_and_alert_metric_through_a_migration() {
    let sample = SampleRegistry::build(false);
    let dir = tempfile::tempdir().expect("dir");
    let storage = format!("file://{}", sample.root().display());
    let database = fresh_database("prom").await;
    let metadata = fresh_database("prom_meta").await;
    let scheduler_port = free_port();
    let importer_metrics = [free_port(), free_port()];
    let importers: Vec<Process> = (importer_metrics.iter().enumerate())
        .map(|(i, metrics)| {
            Process::start(
                "ferry-importer",
                &format!("importer-{i}"),
                free_port(),
                &[
                    ("FERRY_METADATA_DATABASE_URL", metadata.clone()),
                    ("FERRY_STORAGE_URL", storage.clone()),
                    (
                        "FERRY_SCHEDULER_URL",
                        format!("http://127.0.0.1:{scheduler_port}"),
                    ),
                    ("FERRY_METRICS_ADDR", format!("127.0.0.1:{metrics}")),
                    ("FERRY_MAX_CONCURRENT_IMPORTS", "2".to_owned()),
                ],
                dir.path(),
            )
        })
        .collect();
    let scheduler_metrics = free_port();
    let importer_urls: Vec<&str> = importers.iter().map(|p| p.url.as_str()).collect();
    let scheduler = Process::start(
        "ferry-scheduler",
        "scheduler",
        scheduler_port,
        &[
            ("FERRY_DATABASE_URL", database.clone()),
            ("FERRY_REDIS_URL", redis_url()),
            (
                "FERRY_REDIS_PREFIX",
                format!("ferry-prom-{}", unique_suffix()),
            ),
            ("FERRY_STORAGE_URL", storage),
            ("FERRY_IMPORTERS", importer_urls.join(",")),
            (
                "FERRY_METRICS_ADDR",
                format!("127.0.0.1:{scheduler_metrics}"),
            ),
            ("FERRY_REPAIR_INTERVAL_SECS", "1".to_owned()),
            ("FERRY_BBM_INTERVAL_SECS", "1".to_owned()),
            ("FERRY_GUARD_INTERVAL_SECS", "1".to_owned()),
        ],
        dir.path(),
    );
    let prometheus = Prometheus::start(dir.path(), scheduler_metrics, &importer_metrics).await;
    connect_scheduler(&scheduler.url).await;
    let logs = || {
        let mut text = scheduler.log_text();
        for importer in &importers {
            text.push_str(&importer.log_text());
        }
        text
    };

    // The operator's commands, as the runbook gives them.
    let url = scheduler.url.as_str();
    ferryctl(url, &["inventory"]);
    let summary: Value = serde_json::from_str(&ferryctl(
        url,
        &["migrate", "--capacity", "4", "--wait", "--json"],
    ))
    .expect("summary JSON");
    let done = summary["states"]["import_done"].as_u64().expect("done");
    let repositories = sample.repositories().len() as u64;
    assert_eq!(done, repositories, "{summary}");

    // A create event the scheduler never saw: the scan finds the repository, the restore
    // registers it as already on the new platform.
    let dropped = sample.repositories()[0]["path"]
        .as_str()
        .expect("path")
        .to_owned();
    let db = sqlx::PgPool::connect(&database).await.expect("db");
    sqlx::query("DELETE FROM container_repositories WHERE path = $1")
        .bind(&dropped)
        .execute(&db)
        .await
        .expect("drop a repository");
    ferryctl(url, &["repair", "enable"]);
    ferryctl(url, &["repair", "status", "--wait"]);
    ferryctl(url, &["repair", "restore", "--wait"]);
    let restored: Value =
        serde_json::from_str(&ferryctl(url, &["status", &dropped, "--json"])).expect("JSON");
    assert_eq!(restored["migration_state"], "import_done", "{restored}");
    // Looking for abandoned copies: every copy is registered (and young), none is a candidate.
    let gc: Value =
        serde_json::from_str(&ferryctl(url, &["gc", "--dry-run", "--json"])).expect("JSON");
    assert_eq!(gc["candidate_count"], 0, "{gc}");

    // Prometheus has scraped the end of it: the migration, the scan and the restore, and the
    // steps the importers export (two a repository, more if one was retried).
    let mut steps_exported = 0.0;
    for port in importer_metrics {
        let text = ferry_tests::scrape(port).await;
        for kind in ["pre", "final"] {
            let series = format!("ferry_import_steps_total{{type=\"{kind}\",result=\"complete\"}}");
            steps_exported += ferry_tests::metric(&text, &series).unwrap_or(0.0);
        }
    }
    assert!(steps_exported >= 2.0 * done as f64, "{steps_exported}");
    let caught_up = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        async || {
            let seen = (
                prometheus
                    .value("max(ferry_repositories{state=\"import_done\"})")
                    .await,
                prometheus
                    .value("sum(ferry_repair_missing_repositories_found_total)")
                    .await,
                prometheus
                    .value("max(ferry_bbm_migration_progress_ratio)")
                    .await,
                prometheus
                    .value("sum(ferry_import_steps_total{result=\"complete\"})")
                    .await,
                prometheus
                    .value("sum(ferry_gc_runs_total{mode=\"dry_run\",result=\"complete\"})")
                    .await,
            );
            let expected = (
                Some(done as f64),
                Some(1.0),
                Some(1.0),
                Some(steps_exported),
                Some(1.0),
            );
            if seen == expected { Ok(()) } else { Err(seen) }
        },
    )
    .await;
    caught_up.unwrap_or_else(|seen| {
        panic!(
            "Prometheus never saw the migration end (done, missing found, restore progress, \
             steps, dry runs): {seen:?}\n{}",
            logs()
        )
    });

    // Every target is up.
    let targets = prometheus
        .api("targets?state=active")
        .await
        .expect("targets");
    let targets = targets["activeTargets"].as_array().expect("active targets");
    assert_eq!(targets.len(), 3, "{targets:?}");
    for target in targets {
        assert_eq!(target["health"], "up", "{target}");
    }

    // Every metric the dashboard and the rules read has a series from each job that exports it.
    let exporters = registered();
    let mut missing = Vec::new();
    for name in used_by_dashboard_and_rules() {
        let found = prometheus
            .query(&format!("count by (job) ({{__name__=\"{name}\"}})"))
            .await
            .expect("count query");
        let jobs: BTreeSet<&str> = found
            .iter()
            .filter_map(|sample| sample["metric"]["job"].as_str())
            .collect();
        let exporter = exporter_of(&name, &exporters);
        for (job, exports) in [
            (SCHEDULER_JOB, exporter.on_scheduler()),
            (IMPORTER_JOB, exporter.on_importer()),
        ] {
            if exports && !jobs.contains(job) {
                missing.push(format!("{name} ({job})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no series in Prometheus for {missing:?}"
    );

    // Every panel query is accepted and answers with at least one series.
    let queries = dashboard_queries();
    assert!(queries.len() > 30, "{queries:?}");
    for (panel, expr) in &queries {
        let result = prometheus
            .query(expr)
            .await
            .unwrap_or_else(|e| panic!("panel {panel:?}: {expr} refused: {e}"));
        assert!(!result.is_empty(), "panel {panel:?}: {expr} has no data");
    }

    // Every rule has been evaluated without error, and a healthy migration raises no alert.
    let evaluated = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(500),
        async || {
            let groups = prometheus.api("rules").await?;
            let rules: Vec<Value> = (groups["groups"].as_array().into_iter().flatten())
                .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let unhealthy: Vec<&Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
            if rules.len() >= 10 && unhealthy.is_empty() {
                Ok(rules)
            } else {
                Err(format!("{} rules, unhealthy: {unhealthy:?}", rules.len()))
            }
        },
    )
    .await;
    let rules = evaluated.unwrap_or_else(|e| panic!("rules: {e}"));
    for rule in &rules {
        assert_eq!(rule["type"], "alerting", "{rule}");
        assert_eq!(
            rule["alerts"].as_array().map(Vec::len),
            Some(0),
            "active after a healthy migration: {rule}"
        );
    }
}
