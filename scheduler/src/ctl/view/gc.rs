//! `ferryctl gc`: each candidate, the progress line and the summary.

use std::fmt;

use serde::Serialize;

use ferry_proto::common::v1::{GarbageCandidate, GarbageCounts};

use super::{eta, human_bytes};

/// One abandoned copy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GarbageCandidateView {
    /// Its key under `gitlab/`.
    pub key: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Seconds since it was written.
    pub age_secs: u64,
    /// Whether it was removed.
    pub removed: bool,
    /// Why it was kept after all, or why its removal failed.
    pub detail: Option<String>,
}

impl From<GarbageCandidate> for GarbageCandidateView {
    fn from(candidate: GarbageCandidate) -> Self {
        Self {
            key: candidate.key,
            digest: candidate.digest,
            size: candidate.size,
            age_secs: candidate.age_secs,
            removed: candidate.removed,
            detail: (!candidate.detail.is_empty()).then_some(candidate.detail),
        }
    }
}

impl fmt::Display for GarbageCandidateView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.removed {
            "removed"
        } else if self.detail.is_some() {
            "kept"
        } else {
            "would remove"
        };
        write!(
            f,
            "{what:<12} {}  {}  written {} ago",
            self.key,
            human_bytes(self.size),
            eta(self.age_secs.max(1))
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "  ({detail})")?;
        }
        writeln!(f)
    }
}

/// The progress line.
#[derive(Debug, Clone, PartialEq)]
pub struct GarbageProgressView {
    /// The counts so far.
    pub counts: GarbageCounts,
    /// Whether nothing is removed.
    pub dry_run: bool,
    /// Since the start, milliseconds.
    pub elapsed_ms: u64,
}

impl fmt::Display for GarbageProgressView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "gc: {} listed · {} candidate(s) ({})",
            c.listed,
            c.candidates,
            human_bytes(c.candidate_bytes)
        )?;
        if !self.dry_run {
            write!(
                f,
                " · {} removed ({})",
                c.removed,
                human_bytes(c.bytes_removed)
            )?;
        }
        if c.errors > 0 {
            write!(f, " · {} error(s)", c.errors)?;
        }
        write!(f, " · {:.1} s", self.elapsed_ms as f64 / 1000.0)
    }
}

/// The counts of a collection, as `--json` prints them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GarbageCountsView {
    /// Objects listed under the new layout's blobs.
    pub listed: u64,
    /// Keys that are not a blob's data (left alone).
    pub other_keys: u64,
    /// Kept: younger than the window.
    pub young: u64,
    /// Kept: registered.
    pub registered: u64,
    /// Kept: claimed by a step.
    pub claimed: u64,
    /// Unregistered, unclaimed copies older than the window.
    pub candidate_count: u64,
    /// Their bytes.
    pub candidate_bytes: u64,
    /// Removed.
    pub removed: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// Kept: written again since listed, or gone already.
    pub changed: u64,
    /// Removals that failed.
    pub errors: u64,
    /// Their bytes.
    pub bytes_failed: u64,
    /// Stale claims dropped.
    pub claims_dropped: u64,
}

impl From<GarbageCounts> for GarbageCountsView {
    fn from(c: GarbageCounts) -> Self {
        Self {
            listed: c.listed,
            other_keys: c.other_keys,
            young: c.young,
            registered: c.registered,
            claimed: c.claimed,
            candidate_count: c.candidates,
            candidate_bytes: c.candidate_bytes,
            removed: c.removed,
            bytes_removed: c.bytes_removed,
            changed: c.changed,
            errors: c.errors,
            bytes_failed: c.bytes_failed,
            claims_dropped: c.claims_dropped,
        }
    }
}

/// What `ferryctl gc` found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GarbageSummaryView {
    /// The importer that ran it.
    pub importer: String,
    /// Whether nothing was removed.
    pub dry_run: bool,
    /// The window applied, seconds.
    pub older_than_secs: u64,
    /// What was found and done.
    #[serde(flatten)]
    pub counts: GarbageCountsView,
    /// The candidates (at most 1000 are listed).
    pub candidates: Vec<GarbageCandidateView>,
    /// Why it stopped early.
    pub error: Option<String>,
    /// How long it took, milliseconds.
    pub elapsed_ms: u64,
}

impl fmt::Display for GarbageSummaryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let title = if self.dry_run {
            "Abandoned copies (dry run: nothing removed)"
        } else {
            "Abandoned copies"
        };
        writeln!(f, "{title}")?;
        writeln!(f, "  importer        {}", self.importer)?;
        writeln!(
            f,
            "  window          older than {}",
            eta(self.older_than_secs)
        )?;
        writeln!(
            f,
            "  listed          {} under gitlab/ ({} not a blob's data, left alone)",
            c.listed, c.other_keys
        )?;
        writeln!(
            f,
            "  kept            {} younger than the window, {} registered, {} claimed by a step, {} changed or gone",
            c.young, c.registered, c.claimed, c.changed
        )?;
        writeln!(
            f,
            "  candidates      {} ({})",
            c.candidate_count,
            human_bytes(c.candidate_bytes)
        )?;
        if !self.dry_run {
            writeln!(
                f,
                "  removed         {} ({}), {} error(s); {} stale claim(s) dropped",
                c.removed,
                human_bytes(c.bytes_removed),
                c.errors,
                c.claims_dropped
            )?;
        }
        if let Some(error) = &self.error {
            writeln!(f, "  stopped early   {error}")?;
        }
        writeln!(
            f,
            "  elapsed         {:.1} s",
            self.elapsed_ms as f64 / 1000.0
        )
    }
}
