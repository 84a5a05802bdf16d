//! Request counters: by kind, in flight now, the most in flight at once, and the total.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a request asked for, as the emulator counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `GET .../b/{bucket}/o`: a page of a listing.
    List,
    /// `GET .../o/{object}`: an object's metadata.
    Metadata,
    /// `GET .../o/{object}?alt=media` (or a `mediaLink`): an object's bytes.
    Media,
    /// `POST .../rewriteTo/...` or `.../copyTo/...`: a server-side copy.
    Rewrite,
    /// `POST /upload/storage/v1/b/{bucket}/o`: an upload.
    Upload,
    /// `DELETE .../o/{object}`.
    Delete,
    /// Bucket insert, get, list or delete.
    Bucket,
    /// Anything else (answered 400, 404 or 501).
    Other,
}

impl RequestKind {
    /// Every kind, in the order the counters list them.
    pub const ALL: [Self; 8] = [
        Self::List,
        Self::Metadata,
        Self::Media,
        Self::Rewrite,
        Self::Upload,
        Self::Delete,
        Self::Bucket,
        Self::Other,
    ];

    /// The kind's name in the stats JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Metadata => "metadata",
            Self::Media => "media",
            Self::Rewrite => "rewrite",
            Self::Upload => "upload",
            Self::Delete => "delete",
            Self::Bucket => "bucket",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests received, by kind (indexed as [`RequestKind::ALL`]; see [`Self::count`]).
    pub by_kind: [u64; 8],
    /// Requests received in all.
    pub total: u64,
    /// Requests received and not yet answered.
    pub in_flight: u64,
    /// The most requests in flight at once since the start (or the last reset).
    pub peak_in_flight: u64,
}

impl StatsSnapshot {
    /// Requests of `kind` received.
    pub fn count(&self, kind: RequestKind) -> u64 {
        self.by_kind[kind.index()]
    }

    /// What the emulator serves at `GET /_emulator/stats`: `{"requests": {"list": n, ...},
    /// "total": n, "in_flight": n, "peak_in_flight": n}`.
    pub fn to_json(&self) -> serde_json::Value {
        let requests: serde_json::Map<String, serde_json::Value> = (RequestKind::ALL.iter())
            .map(|kind| (kind.name().to_owned(), self.count(*kind).into()))
            .collect();
        serde_json::json!({
            "requests": requests,
            "total": self.total,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        })
    }
}

/// The live counters, shared by every connection.
#[derive(Debug, Default)]
pub(super) struct Stats {
    by_kind: [AtomicU64; 8],
    total: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

/// A request in flight: counted out when dropped (answered, or abandoned by its client).
pub(super) struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    /// Counts a request of `kind` in, until the guard is dropped.
    pub(super) fn begin(&self, kind: RequestKind) -> InFlight<'_> {
        self.by_kind[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    /// The counters now.
    pub(super) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            by_kind: self.by_kind.each_ref().map(|n| n.load(Ordering::Relaxed)),
            total: self.total.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Zeroes the counts; the peak starts again from the requests in flight now.
    pub(super) fn reset(&self) {
        for count in &self.by_kind {
            count.store(0, Ordering::Relaxed);
        }
        self.total.store(0, Ordering::Relaxed);
        (self.peak_in_flight).store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}
