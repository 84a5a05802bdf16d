//! What `ferryctl` prints: one view type per kind of output, built from the scheduler's
//! responses.
//!
//! A view is a plain value. Its `Display` is the text an operator reads, and its `Serialize` is
//! what `--json` prints, so the two always show the same figures. Views [`emit`] prints render
//! as whole lines, each ending in a newline. Line views (progress lines, one background
//! migration) render as one line without its newline; they go to stderr or into a bigger view.

use std::fmt::Display;
use std::io::Write;

use serde::{Serialize, Serializer};

use super::CtlError;

mod gc;
mod rebuild;
mod repair;
mod repository;
mod runbook;
mod settings;
mod summary;
mod verify;

pub use gc::{GarbageCandidateView, GarbageCountsView, GarbageProgressView, GarbageSummaryView};
pub use rebuild::{RebuildProgressView, RebuildSummaryView};
pub use repair::{
    BackgroundMigrationListView, BackgroundMigrationView, RepairPassView, RepairProgressView,
    RepairStatusView,
};
pub use repository::{
    DoubleCheckView, QueueHeadView, QueueView, RepositoryPageView, RepositoryView, StatsView,
    WritableView,
};
pub use runbook::{DedupView, LeaseView};
pub use settings::{PlansView, SettingsView};
pub use summary::{InventoryProgressView, MigrateProgressView, RunFigures, SummaryView};
pub use verify::{
    DifferenceView, RepositoryVerificationView, VerifyProgressView, VerifySummaryView,
    outcome_label,
};

/// Prints `view` on stdout: as one line of JSON with `json`, else as its text.
pub fn emit<V: Serialize + Display>(view: &V, json: bool) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, view)?;
        writeln!(out)?;
    } else {
        write!(out, "{view}")?;
    }
    out.flush()?;
    Ok(())
}

/// Serializes `(key, value)` pairs as a JSON object, in their order.
fn as_map<S, K, V>(pairs: &[(K, V)], serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    K: Serialize,
    V: Serialize,
{
    serializer.collect_map(pairs.iter().map(|(key, value)| (key, value)))
}

/// `value`, or `None` when it is empty (JSON `null`).
fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// `seconds` in the unit an operator reads best; `-` for 0 (unknown).
fn eta(seconds: u64) -> String {
    match seconds {
        0 => "-".to_owned(),
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// `bytes` with a binary unit (KiB, MiB, ...), one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `"on"` or `"off"`.
fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_an_operator_expects() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(54_886), "53.6 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(eta(0), "-");
        assert_eq!(eta(90), "90 s");
        assert_eq!(eta(600), "10 min");
        assert_eq!(eta(9000), "2.5 h");
    }
}
