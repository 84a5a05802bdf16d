//! Figure h3 (c): the share of a shared storage request budget that importers use, on the
//! emulator at 25 ms a request (which never refuses: the budget is all that paces them).
//!
//! `FERRY_BENCH_H3_IMPORTERS` (4) release one-shot importers (`ferry-importer import --path …`,
//! each a share of `FERRY_BENCH_H3_BUDGET_REPOSITORIES` = 1,000 repositories × 5 tags × 3
//! layers, at their defaults otherwise; `FERRY_BENCH_H3_SLOTS` sets their
//! `FERRY_MAX_CONCURRENT_IMPORTS`) draw from one budget in Redis of
//! `FERRY_BENCH_H3_READ_RATE` (5,000) reads/s and `FERRY_BENCH_H3_WRITE_RATE` (1,000) writes/s,
//! each rate also its ceiling (`FERRY_STORAGE_MAX_*_RATE`), so the ramp cannot raise it. Every
//! second the emulator's counters are read: reads are listings, metadata GETs and downloads,
//! writes are rewrites, uploads and deletes. Used: the requests per second over the busy
//! seconds (the first and the last left out, as figure g does) against each rate. The binding
//! budget is the one used more. The machine's CPU use over the same seconds (`/proc/stat`, all
//! cores) is shown beside it: a budget left unused while the cores are busy is the machine's
//! limit, not the importers'.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_tests::dataset::{DatasetSpec, generate};
use ferry_tests::processes::governed_one_shot;
use ferry_tests::{env_size, unique_suffix};

use super::{Counts, isolate, loaded_emulator, migrated_database};
use crate::{median, release_bin};

const BUCKET: &str = "ferry-bench-h3c";

/// The budget's dataset, written once for every run.
pub struct BudgetData {
    dir: tempfile::TempDir,
    paths: Vec<String>,
}

/// Writes the dataset of (c).
pub fn dataset() -> BudgetData {
    let repositories: usize = env_size("FERRY_BENCH_H3_BUDGET_REPOSITORIES", 1_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = DatasetSpec {
        repositories,
        ..DatasetSpec::default()
    };
    generate(dir.path(), &spec);
    let paths = (0..repositories)
        .map(|r| format!("bench/g{:02}/p{r:05}/app", r % 50))
        .collect();
    BudgetData { dir, paths }
}

/// What one run of (c) measured (or the medians of several).
#[derive(Debug, Clone, Copy)]
pub struct BudgetRun {
    importers: usize,
    repositories: usize,
    read_rate: f64,
    write_rate: f64,
    /// Reads and writes per second over the busy seconds.
    reads: f64,
    writes: f64,
    /// How long the busy seconds lasted, and the whole run.
    busy: f64,
    seconds: f64,
    /// The share of every core's time spent busy over the busy seconds.
    cpu: f64,
}

impl BudgetRun {
    fn read_share(&self) -> f64 {
        self.reads / self.read_rate
    }

    fn write_share(&self) -> f64 {
        self.writes / self.write_rate
    }

    /// The share of the budget used more: the one that binds.
    pub fn binding_share(&self) -> f64 {
        self.read_share().max(self.write_share())
    }

    fn binding(&self) -> &'static str {
        if self.write_share() >= self.read_share() {
            "writes"
        } else {
            "reads"
        }
    }

    /// Each field's median over `runs`.
    pub fn median(runs: &[Self]) -> Self {
        let of = |field: fn(&Self) -> f64| median(runs.iter().map(field).collect());
        Self {
            importers: runs[0].importers,
            repositories: runs[0].repositories,
            read_rate: runs[0].read_rate,
            write_rate: runs[0].write_rate,
            reads: of(|r| r.reads),
            writes: of(|r| r.writes),
            busy: of(|r| r.busy),
            seconds: of(|r| r.seconds),
            cpu: of(|r| r.cpu),
        }
    }

    /// The setting, for the figure's name.
    pub fn shape(&self) -> String {
        format!(
            "{} one-shot importers{}, {} repositories, {:.0} reads/s + {:.0} writes/s",
            self.importers,
            std::env::var("FERRY_BENCH_H3_SLOTS").map_or_else(
                |_| " at defaults".to_owned(),
                |slots| format!(" × {slots} slots")
            ),
            self.repositories,
            self.read_rate,
            self.write_rate
        )
    }

    /// The outcome, for the figure's value.
    pub fn summary(&self) -> String {
        format!(
            "budget used: writes {:.1} % ({:.0}/s), reads {:.1} % ({:.0}/s), {} bind; {:.1} repositories/s, CPU {:.0} % busy",
            self.write_share() * 100.0,
            self.writes,
            self.read_share() * 100.0,
            self.reads,
            self.binding(),
            self.repositories as f64 / self.seconds,
            self.cpu * 100.0,
        )
    }

    /// The outcome, for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} over {:.0} busy seconds ({:.1} s in all)",
            self.summary(),
            self.busy,
            self.seconds
        )
    }
}

/// One run of (c) over `data`.
pub async fn share_used(data: &BudgetData) -> BudgetRun {
    let importers: usize = env_size("FERRY_BENCH_H3_IMPORTERS", 4).max(1);
    let read_rate: f64 = env_size("FERRY_BENCH_H3_READ_RATE", 5_000.0);
    let write_rate: f64 = env_size("FERRY_BENCH_H3_WRITE_RATE", 1_000.0);
    let emulator = loaded_emulator(BUCKET, data.dir.path());
    let database = migrated_database("bench_h3c").await;
    let prefix = format!("ferry-bench-{}", unique_suffix());
    let logs = tempfile::tempdir().expect("tempdir");
    emulator.reset_stats();
    let started = Instant::now();
    let mut children = Vec::new();
    for (i, part) in (data.paths.chunks(data.paths.len().div_ceil(importers))).enumerate() {
        let mut command = governed_one_shot(
            &release_bin("ferry-importer"),
            part,
            &emulator.address().to_string(),
            BUCKET,
            &database,
            &prefix,
            read_rate,
        );
        let log =
            std::fs::File::create(logs.path().join(format!("importer-{i}.log"))).expect("log file");
        command
            .env("FERRY_STORAGE_WRITE_RATE", write_rate.to_string())
            .env("FERRY_STORAGE_MAX_READ_RATE", read_rate.to_string())
            .env("FERRY_STORAGE_MAX_WRITE_RATE", write_rate.to_string())
            .env("FERRY_LOG", "warn")
            .env("FERRY_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Ok(slots) = std::env::var("FERRY_BENCH_H3_SLOTS") {
            command.env("FERRY_MAX_CONCURRENT_IMPORTS", slots);
        }
        isolate(&mut command);
        let child = tokio::process::Command::from(command)
            .spawn()
            .expect("ferry-importer runs");
        children.push(child);
    }
    let mut samples = vec![(Instant::now(), Counts::default(), cpu_times())];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        samples.push((Instant::now(), Counts::of(&emulator.stats()), cpu_times()));
        let mut running = false;
        for child in &mut children {
            running |= child.try_wait().expect("importer status").is_none();
        }
        if !running {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for (i, mut child) in children.into_iter().enumerate() {
        let status = child.wait().await.expect("importer status");
        let log = std::fs::read_to_string(logs.path().join(format!("importer-{i}.log")));
        assert!(
            status.success(),
            "importer {i} failed: {}",
            super::tail(&log.unwrap_or_default())
        );
    }
    let (reads, writes, busy, cpu) = busy_rates(&samples);
    BudgetRun {
        importers,
        repositories: data.paths.len(),
        read_rate,
        write_rate,
        reads,
        writes,
        busy,
        seconds,
        cpu,
    }
}

/// Every core's (busy, all) time so far, in ticks, from `/proc/stat` ((0, 0) where there is
/// none).
fn cpu_times() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = (stat.lines().next().unwrap_or_default())
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let all: f64 = ticks.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (all - idle, all)
}

/// One second's sample: when, the emulator's counters, and the CPU's (busy, all) ticks.
type Sample = (Instant, Counts, (f64, f64));

/// An interval between samples: seconds, reads, writes, busy CPU ticks, all CPU ticks.
type Interval = (f64, f64, f64, f64, f64);

/// Reads and writes per second between the first and the last interval with any request, both
/// left out (the importers starting and the last steps ending), how long that lasted, and the
/// share of CPU time busy meanwhile.
fn busy_rates(samples: &[Sample]) -> (f64, f64, f64, f64) {
    let intervals: Vec<Interval> = samples
        .windows(2)
        .map(|pair| {
            let ((t0, c0, p0), (t1, c1, p1)) = (&pair[0], &pair[1]);
            let seconds = t1.duration_since(*t0).as_secs_f64();
            let (reads, writes) = (c1.reads() - c0.reads(), c1.writes() - c0.writes());
            (seconds, reads, writes, p1.0 - p0.0, p1.1 - p0.1)
        })
        .collect();
    let active = |i: &&Interval| i.1 + i.2 > 0.0;
    let first = intervals.iter().position(|i| active(&i));
    let last = intervals.iter().rposition(|i| active(&i));
    let busy = match (first, last) {
        (Some(first), Some(last)) if last > first + 1 => &intervals[first + 1..last],
        (Some(first), Some(last)) => &intervals[first..=last],
        _ => &[][..],
    };
    let sum = |field: fn(&Interval) -> f64| busy.iter().map(field).sum::<f64>();
    let seconds = sum(|i| i.0).max(f64::EPSILON);
    let cpu = sum(|i| i.3) / sum(|i| i.4).max(1.0);
    (sum(|i| i.1) / seconds, sum(|i| i.2) / seconds, seconds, cpu)
}
