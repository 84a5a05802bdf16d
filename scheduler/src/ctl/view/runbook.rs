//! Views of the enqueue lease (`lease`) and of the enqueue trigger's deduplication key
//! (`dedup`).

use std::fmt;

use serde::Serialize;

use ferry_proto::scheduler::v1::{DedupStatus, LeaseStatus};

/// The enqueue lease: `lease show`, `lease clear`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeaseView {
    /// False when no replica holds it.
    pub held: bool,
    /// The holder's identity (host, process, address).
    pub holder: String,
    /// The latest fencing token handed out: the holder's.
    pub fence: u64,
    /// How long the holder has held it, milliseconds.
    pub age_ms: u64,
    /// How long before it expires unless renewed, milliseconds.
    pub ttl_left_ms: u64,
    /// Enqueue triggers the answering replica collapsed into a pending one.
    pub deduplicated_triggers: u64,
}

impl From<LeaseStatus> for LeaseView {
    fn from(lease: LeaseStatus) -> Self {
        Self {
            held: lease.held,
            holder: lease.holder,
            fence: lease.fence,
            age_ms: lease.age_ms,
            ttl_left_ms: lease.ttl_left_ms,
            deduplicated_triggers: lease.deduplicated_triggers,
        }
    }
}

impl fmt::Display for LeaseView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.held {
            return writeln!(
                f,
                "nobody holds the enqueue lease: nothing dispatches until a scheduler takes it"
            );
        }
        writeln!(f, "enqueue lease held by {}", self.holder)?;
        writeln!(f, "  fencing token   {}", self.fence)?;
        writeln!(f, "  held for        {:.1} s", self.age_ms as f64 / 1000.0)?;
        writeln!(
            f,
            "  expires in      {:.1} s unless renewed",
            self.ttl_left_ms as f64 / 1000.0
        )
    }
}

/// The enqueue trigger's deduplication key: `dedup show`, `dedup clear`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DedupView {
    /// Whether a trigger is pending.
    pub pending: bool,
    /// The replica that set it.
    pub owner: String,
    /// Milliseconds before it expires by itself.
    pub ttl_left_ms: u64,
    /// Triggers the answering replica collapsed into a pending one since it started.
    pub deduplicated_triggers: u64,
}

impl From<DedupStatus> for DedupView {
    fn from(status: DedupStatus) -> Self {
        Self {
            pending: status.pending,
            owner: status.owner,
            ttl_left_ms: status.ttl_left_ms,
            deduplicated_triggers: status.deduplicated_triggers,
        }
    }
}

impl fmt::Display for DedupView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.pending {
            return writeln!(
                f,
                "no enqueue trigger pending ({} collapsed here since start)",
                self.deduplicated_triggers
            );
        }
        writeln!(f, "an enqueue trigger is pending, set by {}", self.owner)?;
        writeln!(
            f,
            "  expires in      {:.1} s unless a pass consumes it first",
            self.ttl_left_ms as f64 / 1000.0
        )?;
        writeln!(
            f,
            "  collapsed here  {} triggers",
            self.deduplicated_triggers
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_as_text_and_json() {
        let lease = LeaseView::from(LeaseStatus {
            held: true,
            holder: "host-a/123/10.0.0.1:50051".into(),
            fence: 42,
            age_ms: 12_345,
            ttl_left_ms: 9_900,
            deduplicated_triggers: 3,
        });
        assert_eq!(
            lease.to_string(),
            "enqueue lease held by host-a/123/10.0.0.1:50051\n\
             \x20 fencing token   42\n\
             \x20 held for        12.3 s\n\
             \x20 expires in      9.9 s unless renewed\n"
        );
        assert_eq!(
            serde_json::to_string(&lease).expect("JSON"),
            r#"{"held":true,"holder":"host-a/123/10.0.0.1:50051","fence":42,"age_ms":12345,"ttl_left_ms":9900,"deduplicated_triggers":3}"#
        );
        assert!(LeaseView::default().to_string().starts_with("nobody holds"));
    }

    #[test]
    fn the_dedup_key_as_text_and_json() {
        let dedup = DedupView::from(DedupStatus {
            pending: true,
            owner: "dead-replica".into(),
            ttl_left_ms: 1_500,
            deduplicated_triggers: 7,
        });
        assert_eq!(
            dedup.to_string(),
            "an enqueue trigger is pending, set by dead-replica\n\
             \x20 expires in      1.5 s unless a pass consumes it first\n\
             \x20 collapsed here  7 triggers\n"
        );
        assert_eq!(
            serde_json::to_string(&dedup).expect("JSON"),
            r#"{"pending":true,"owner":"dead-replica","ttl_left_ms":1500,"deduplicated_triggers":7}"#
        );
        assert_eq!(
            DedupView::default().to_string(),
            "no enqueue trigger pending (0 collapsed here since start)\n"
        );
    }
}
