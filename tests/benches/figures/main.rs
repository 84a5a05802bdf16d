//! `make bench`: Ferry's figures, each measured beside its reference in the same run.
//!
//! Every figure runs `FERRY_BENCH_RUNS` times (default 3) and reports medians, since these
//! machines are noisy. The table (figure, Ferry, reference, ratio, target, met, and the date,
//! machine and runs it was measured on) is printed and written into `docs/benchmarks.md` between
//! its markers. Rows of figures not run this time (`FERRY_BENCH_FIGURES=a1,g` picks some) keep
//! their last values, with the machine they were measured on.
//!
//! Binaries come from `target/release` (`make bench` builds them).

mod budget;
mod copy;
mod dispatch;
mod latency;
mod memory;
mod pull;
mod register;
mod repair;
mod walk;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Figure {
    /// `a1`, `b`, ...
    pub id: &'static str,
    /// What is measured.
    pub name: String,
    /// Ferry's value, with its unit.
    pub ferry: String,
    /// The reference's value, with its unit (or `—`).
    pub reference: String,
    /// Ferry relative to the reference, as the target states it (or the bare value).
    pub ratio: String,
    /// The target.
    pub target: &'static str,
    /// Whether the target is met.
    pub met: bool,
}

/// The median of `values` (which must not be empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Runs `command` to its end and returns its wall time; panics with its output if it fails.
pub fn timed(command: &mut std::process::Command) -> Duration {
    let started = Instant::now();
    let output = command.output().expect("command runs");
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

/// A release binary of the workspace.
pub fn release_bin(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| ferry_tests::workspace_root().join("target"));
    let path = target.join("release").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make bench` (it builds the release binaries)",
        path.display()
    );
    path
}

/// Runs per figure.
pub fn runs() -> usize {
    ferry_tests::env_size("FERRY_BENCH_RUNS", 3).max(1)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kb| format!(", {} GiB", kb / 1024 / 1024));
    format!("{cores} cores ({cpu}){memory}")
}

const BEGIN: &str = "<!-- figures:begin (written by `make bench`) -->";
const END: &str = "<!-- figures:end -->";

/// One row; `measured_on` names the date, machine and runs, since rows of figures not run now
/// are kept and may come from another day or machine.
fn row(figure: &Figure, measured_on: &str) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {measured_on} |",
        figure.id,
        figure.name,
        figure.ferry,
        figure.reference,
        figure.ratio,
        figure.target,
        if figure.met { "yes" } else { "**no**" }
    )
}

/// Writes the table into `doc` between the markers, keeping rows of figures not measured now.
fn write_doc(doc: &Path, figures: &[Figure], machine: &str) -> String {
    let text = std::fs::read_to_string(doc).unwrap_or_default();
    let (before, old, after) = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => (&text[..b], &text[b..e], &text[e + END.len()..]),
        _ => (text.as_str(), "", ""),
    };
    let mut rows: Vec<(String, String)> = old
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| #") && !l.starts_with("|--"))
        .filter_map(|l| {
            let id = l.trim_start_matches("| ").split(' ').next()?.to_owned();
            Some((id, l.to_owned()))
        })
        .collect();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let measured_on = format!("{date}, {machine}, median of {}", runs());
    for figure in figures {
        let line = row(figure, &measured_on);
        match rows.iter_mut().find(|(id, _)| id == figure.id) {
            Some(existing) => existing.1 = line,
            None => rows.push((figure.id.to_owned(), line)),
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let measured: Vec<&str> = figures.iter().map(|f| f.id).collect();
    let table = format!(
        "{BEGIN}\n| # | figure | Ferry | reference | ratio | target | met | measured on |\n\
         |---|---|---|---|---|---|---|---|\n{}\n\n\
         Last run {date}: {} on {machine}, release build, median of {} runs.\n{END}",
        rows.into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .join("\n"),
        measured.join(", "),
        runs(),
    );
    std::fs::write(doc, format!("{before}{table}{after}")).expect("write docs/benchmarks.md");
    table
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let wanted = std::env::var("FERRY_BENCH_FIGURES").unwrap_or_default();
    let wants = |id: &str| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == id);
    let machine = machine();
    eprintln!("figures on {machine}, {} runs each", runs());
    let mut figures = Vec::new();
    if wants("a1") || wants("a2") {
        figures.extend(walk::walks(wants("a1"), wants("a2")).await);
    }
    if wants("c") {
        figures.push(register::registration_against_copy().await);
    }
    if wants("b") {
        figures.push(copy::copy_against_cp().await);
    }
    if wants("d") {
        figures.push(dispatch::utilization_and_dispatch_latency().await);
    }
    if wants("e") {
        figures.push(repair::repair_scan_rate().await);
    }
    if wants("f") {
        figures.push(memory::peak_rss_with_10k_tags().await);
    }
    if wants("g") {
        figures.push(budget::share_of_budget_used().await);
    }
    if wants("h1") || wants("h2") || wants("h3") {
        figures.extend(latency::figures(wants("h1"), wants("h2"), wants("h3")).await);
    }
    if wants("i") {
        figures.push(pull::pull_throughput().await);
    }
    let doc = ferry_tests::workspace_root().join("docs/benchmarks.md");
    let table = write_doc(&doc, &figures, &machine);
    println!("{table}");
}
