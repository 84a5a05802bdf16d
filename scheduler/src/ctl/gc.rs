//! `ferryctl gc`: removes the copies under `gitlab/` that no registered blob refers to and that
//! are older than a window (docs/operations.md, "Removing abandoned copies").

use std::time::{Duration, Instant};

use ferry_proto::common::v1::GarbageCounts;
use ferry_proto::scheduler::v1::CollectGarbageRequest;
use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::progress::ProgressLine;
use super::view::{GarbageCandidateView, GarbageProgressView, GarbageSummaryView, emit};

/// What `ferryctl gc` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct GcArgs {
    /// List the copies that would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only copies written longer ago than this are removed: `90m`, `3h`, `2d` or seconds.
    /// Must be longer than the importers' step time limits; default: the longer of 3 h and the
    /// longest step time limit plus 1 h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A duration as `ferryctl` takes it: a number with `s`, `m`, `h` or `d`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90m, 3h or 2d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    value
        .checked_mul(scale)
        .filter(|&secs| secs > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a positive duration of at most a year"))
}

/// Runs `ferryctl gc`: progress on stderr, each candidate on stdout as it comes (text), then the
/// summary. Fails (exit 1) when the collection stopped early or a removal failed.
pub async fn run(client: &mut SchedulerClient<Connection>, args: GcArgs) -> Result<(), CtlError> {
    let started = Instant::now();
    let mut stream = client
        .collect_garbage(CollectGarbageRequest {
            older_than_secs: args.older_than.map_or(0, |d| d.as_secs()),
            dry_run: args.dry_run,
        })
        .await?
        .into_inner();
    let mut progress_line = ProgressLine::new(Some(Duration::from_secs(2)));
    let mut summary = GarbageSummaryView {
        dry_run: args.dry_run,
        ..GarbageSummaryView::default()
    };
    let mut counts_now = GarbageCounts::default();
    while let Some(progress) = stream.message().await? {
        summary.importer = progress.importer.clone();
        if let Some(counts) = progress.counts {
            counts_now = counts;
        }
        if let Some(candidate) = progress.candidate {
            let view = GarbageCandidateView::from(candidate);
            if !args.json {
                progress_line.clear();
                emit(&view, false)?;
            }
            summary.candidates.push(view);
        }
        if progress.finished {
            summary.error = (!progress.error.is_empty()).then_some(progress.error);
            summary.older_than_secs = progress.older_than_secs;
            summary.dry_run = progress.dry_run;
            break;
        }
        progress_line.show(&GarbageProgressView {
            counts: counts_now,
            dry_run: args.dry_run,
            elapsed_ms: progress.elapsed_ms,
        });
    }
    progress_line.clear();
    summary.counts = counts_now.into();
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if args.json {
        emit(&summary, true)?;
    } else {
        // The candidates were printed as they came.
        let candidates = std::mem::take(&mut summary.candidates);
        emit(&summary, false)?;
        summary.candidates = candidates;
    }
    match (&summary.error, summary.counts.errors) {
        (Some(error), _) => Err(CtlError::Incomplete(format!(
            "the collection stopped early: {error}"
        ))),
        (None, 0) => Ok(()),
        (None, errors) => Err(CtlError::Incomplete(format!(
            "{errors} removal(s) failed; those copies stay"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(10_800)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("7200"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        for bad in ["", "h", "3w", "-1h", "0", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
