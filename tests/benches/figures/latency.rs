//! Figures h1, h2 and h3: Ferry against a bucket's round trip rather than a local disk.
//!
//! Every figure here talks to the in-process GCS JSON-API emulator
//! (`ferry_tests::gcs_emulator`), which answers each request 25 ms late, lets requests overlap,
//! and counts them by kind. The release binaries run as child processes pointed at it with
//! `STORAGE_EMULATOR_HOST` and `FERRY_STORAGE_URL=gs://…`, set on each child (whatever the
//! bench's own environment says: `make bench` points it at fake-gcs-server for figure g), and
//! with the rest of the bench's `FERRY_*` environment removed, so the binaries run at their
//! defaults unless a figure says otherwise.
//!
//! - h1 ([`inventory`]): the scheduler's inventory of many repositories: repositories/s and
//!   listings per repository.
//! - h2 ([`requests`]): requests per repository of a one-shot `import --all`, by kind.
//! - h3 ([`steps`], [`budget`]): the pre-import step's latency, one importer's rate behind the
//!   scheduler, and the share of a shared request budget that importers use.

mod budget;
mod inventory;
mod requests;
mod steps;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::fresh_database;
use ferry_tests::gcs_emulator::{GcsEmulator, RequestKind, StatsSnapshot};

use super::{Figure, median, release_bin};

/// How late the emulator answers every request.
pub const LATENCY: Duration = Duration::from_millis(25);

/// Figures h1, h2 and h3, as asked.
pub async fn figures(h1: bool, h2: bool, h3: bool) -> Vec<Figure> {
    let mut figures = Vec::new();
    if h1 {
        figures.push(inventory::inventory_rate().await);
    }
    if h2 {
        figures.push(requests::requests_per_repository().await);
    }
    if h3 {
        figures.push(steps::steps_and_throughput().await);
    }
    figures
}

/// The request kinds a figure shows, in this order; the bucket calls and unknown requests are
/// shown only when some were made.
const SHOWN: [RequestKind; 6] = [
    RequestKind::List,
    RequestKind::Metadata,
    RequestKind::Media,
    RequestKind::Rewrite,
    RequestKind::Upload,
    RequestKind::Delete,
];

/// Requests counted by the emulator, by kind (indexed as [`RequestKind::ALL`]), as medians of
/// several runs or as one run's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts([f64; 8]);

impl Counts {
    /// One run's counts.
    pub fn of(snapshot: &StatsSnapshot) -> Self {
        Self(RequestKind::ALL.map(|kind| snapshot.count(kind) as f64))
    }

    /// Each kind's median over `runs`.
    pub fn median(runs: &[Self]) -> Self {
        let mut out = [0.0; 8];
        for (i, value) in out.iter_mut().enumerate() {
            *value = median(runs.iter().map(|run| run.0[i]).collect());
        }
        Self(out)
    }

    /// Requests of `kind`.
    pub fn get(&self, kind: RequestKind) -> f64 {
        let index = RequestKind::ALL.iter().position(|k| *k == kind);
        index.map_or(0.0, |i| self.0[i])
    }

    /// Every request.
    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }

    /// What the read budget pays for: listings, metadata and downloads.
    pub fn reads(&self) -> f64 {
        [RequestKind::List, RequestKind::Metadata, RequestKind::Media]
            .map(|kind| self.get(kind))
            .iter()
            .sum()
    }

    /// What the write budget pays for: rewrites, uploads and deletes.
    pub fn writes(&self) -> f64 {
        [
            RequestKind::Rewrite,
            RequestKind::Upload,
            RequestKind::Delete,
        ]
        .map(|kind| self.get(kind))
        .iter()
        .sum()
    }

    /// `list 2.00, metadata 7.10, …` per `per` (a repository count, or 1).
    pub fn breakdown(&self, per: f64) -> String {
        let extra = [RequestKind::Bucket, RequestKind::Other]
            .into_iter()
            .filter(|kind| self.get(*kind) > 0.0);
        SHOWN
            .into_iter()
            .chain(extra)
            .map(|kind| format!("{} {}", kind.name(), number(self.get(kind) / per)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A count per repository: whole numbers bare, others with two decimals.
fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// An emulator at [`LATENCY`] holding `dir` (the directory that holds `docker/`) in `bucket`.
pub fn loaded_emulator(bucket: &str, dir: &Path) -> GcsEmulator {
    let emulator = GcsEmulator::start(LATENCY);
    emulator.create_bucket(bucket).expect("create the bucket");
    emulator.put_dir(bucket, dir);
    emulator
}

/// Removes from `command` every `FERRY_*` variable and `STORAGE_EMULATOR_HOST` inherited from
/// this process that it does not set itself: the binary runs at its own defaults.
pub fn isolate(command: &mut Command) {
    let set: Vec<String> = (command.get_envs())
        .filter(|(_, value)| value.is_some())
        .map(|(key, _)| key.to_string_lossy().into_owned())
        .collect();
    for (key, _) in std::env::vars() {
        let inherited = key.starts_with("FERRY_") || key == "STORAGE_EMULATOR_HOST";
        if inherited && !set.contains(&key) {
            command.env_remove(key);
        }
    }
}

/// The release `binary` on `bucket` in `emulator`, logging warnings only (a figure may ask for
/// more), isolated from this process's settings.
pub fn ferry_command(binary: &str, emulator: &GcsEmulator, bucket: &str) -> Command {
    let mut command = Command::new(release_bin(binary));
    command
        .env("STORAGE_EMULATOR_HOST", emulator.address().to_string())
        .env("FERRY_STORAGE_URL", format!("gs://{bucket}"))
        .env("FERRY_LOG", "warn")
        .env("FERRY_LOG_FORMAT", "json")
        .stdin(Stdio::null());
    isolate(&mut command);
    command
}

/// A fresh metadata database with the importer's schema (`ferry-importer migrate`).
pub async fn migrated_database(label: &str) -> String {
    let database = fresh_database(label).await;
    let mut command = Command::new(release_bin("ferry-importer"));
    command
        .arg("migrate")
        .env("FERRY_METADATA_DATABASE_URL", &database)
        .stdout(Stdio::null());
    isolate(&mut command);
    let status = command.status().expect("ferry-importer migrate runs");
    assert!(status.success(), "ferry-importer migrate failed");
    database
}

/// Runs `command` to its end; its wall time, stdout and stderr. Panics with them if it fails.
pub async fn run(command: Command) -> (Duration, String, String) {
    let mut command = tokio::process::Command::from(command);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let output = command.output().await.expect("the command runs");
    let elapsed = started.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "{command:?} failed:\n{stdout}\n{}",
        tail(&stderr)
    );
    (elapsed, stdout, stderr)
}

/// The last lines of a log, for a panic message.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The repositories a one-shot import's summary says it imported.
pub fn imported(stdout: &str) -> Option<usize> {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("repositories"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The importer's own durations of its steps, in ms, from its JSON log lines
/// (`"import step ended"`, with `import_type` and `duration_ms`): (pre-imports, final imports).
/// Panics on a step that did not complete.
pub fn step_durations(log: &str) -> (Vec<f64>, Vec<f64>) {
    let (mut pre, mut last) = (Vec::new(), Vec::new());
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["message"] != "import step ended" {
            continue;
        }
        let status = event["status"].as_str().unwrap_or_default();
        assert!(
            status.ends_with("complete"),
            "a step ended {status}: {line}"
        );
        let Some(ms) = event["duration_ms"].as_f64() else {
            continue;
        };
        match event["import_type"].as_str() {
            Some("Final") => last.push(ms),
            _ => pre.push(ms),
        }
    }
    (pre, last)
}

/// The value below which a share `p` of `values` lies (nearest rank); 0 for none.
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// A release service (`ferry-scheduler` or `ferry-importer` serving gRPC) as a child process;
/// killed when dropped.
pub struct Service {
    child: std::process::Child,
    /// Its gRPC URL.
    pub url: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Service {
    /// Starts `command` serving on `port`, its logs into `log`.
    pub fn start(mut command: Command, port: u16, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        command
            .env("FERRY_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "FERRY_METRICS_ADDR",
                format!("127.0.0.1:{}", ferry_tests::processes::free_port()),
            )
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = command.spawn().expect("the service starts");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A release `ferry-scheduler` on `bucket` in `emulator`, with a fresh database, its own Redis
/// prefix and `importers`, serving on `port`, logging into `log_dir`.
pub async fn scheduler(
    emulator: &GcsEmulator,
    bucket: &str,
    importers: &str,
    port: u16,
    log_dir: &Path,
) -> (Service, String) {
    let database = fresh_database("bench_h_sched").await;
    let mut command = ferry_command("ferry-scheduler", emulator, bucket);
    command
        .env("FERRY_DATABASE_URL", &database)
        .env("FERRY_REDIS_URL", ferry_tests::redis_url())
        .env(
            "FERRY_REDIS_PREFIX",
            format!("ferry-bench-{}", ferry_tests::unique_suffix()),
        )
        .env("FERRY_IMPORTERS", importers);
    let service = Service::start(command, port, log_dir.join("scheduler.log"));
    (service, database)
}
