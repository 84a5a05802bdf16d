//! `ferryctl lease show|clear` and `ferryctl dedup show|clear`: the runbook's stuck exclusive
//! lease and stuck deduplication.

use clap::Subcommand;
use serde_json::json;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    ClearDedupRequest, ClearLeaseRequest, DedupStatus, GetDedupRequest, GetLeaseRequest,
    LeaseStatus,
};
use ferry_shared::grpc::client::Connection;

use super::CtlError;

/// `ferryctl lease` actions (`show` when none is given).
#[derive(Debug, Subcommand)]
pub enum LeaseAction {
    /// Who holds the enqueue lease: holder, fencing token, age, time left.
    Show,
    /// Delete the lease if HOLDER still holds it (one left by a killed replica); another replica
    /// takes it within FERRY_ENQUEUE_INTERVAL_MS, with a higher fencing token.
    Clear {
        /// The holder `ferryctl lease show` printed.
        #[arg(long)]
        holder: String,
    },
}

/// `ferryctl dedup` actions (`show` when none is given).
#[derive(Debug, Subcommand)]
pub enum DedupAction {
    /// Whether an enqueue trigger is pending (the deduplication key), who set it, its time left.
    Show,
    /// Delete the pending trigger and wake the lease holder.
    Clear,
}

/// Runs `ferryctl lease`.
pub async fn lease(
    client: &mut SchedulerClient<Connection>,
    action: Option<LeaseAction>,
    json: bool,
) -> Result<(), CtlError> {
    let lease = match action {
        None | Some(LeaseAction::Show) => client.get_lease(GetLeaseRequest {}).await?,
        Some(LeaseAction::Clear { holder }) => {
            let after = client.clear_lease(ClearLeaseRequest { holder }).await?;
            eprintln!("lease cleared: the next replica to try takes it");
            after
        }
    }
    .into_inner();
    print_lease(&lease, json);
    Ok(())
}

/// Runs `ferryctl dedup`.
pub async fn dedup(
    client: &mut SchedulerClient<Connection>,
    action: Option<DedupAction>,
    json: bool,
) -> Result<(), CtlError> {
    let status = match action {
        None | Some(DedupAction::Show) => client.get_dedup(GetDedupRequest {}).await?,
        Some(DedupAction::Clear) => {
            let after = client.clear_dedup(ClearDedupRequest {}).await?;
            eprintln!("pending trigger cleared; the lease holder was woken");
            after
        }
    }
    .into_inner();
    print_dedup(&status, json);
    Ok(())
}

fn print_dedup(status: &DedupStatus, json: bool) {
    if json {
        let value = json!({
            "pending": status.pending, "owner": status.owner,
            "ttl_left_ms": status.ttl_left_ms,
            "deduplicated_triggers": status.deduplicated_triggers,
        });
        println!("{value}");
    } else if status.pending {
        println!("an enqueue trigger is pending, set by {}", status.owner);
        println!(
            "  expires in      {:.1} s unless a pass consumes it first",
            status.ttl_left_ms as f64 / 1000.0
        );
        println!(
            "  collapsed here  {} triggers",
            status.deduplicated_triggers
        );
    } else {
        println!(
            "no enqueue trigger pending ({} collapsed here since start)",
            status.deduplicated_triggers
        );
    }
}

/// Prints the lease, as text or JSON.
pub fn print_lease(lease: &LeaseStatus, json: bool) {
    if json {
        let value = json!({
            "held": lease.held, "holder": lease.holder, "fence": lease.fence,
            "age_ms": lease.age_ms, "ttl_left_ms": lease.ttl_left_ms,
            "deduplicated_triggers": lease.deduplicated_triggers,
        });
        println!("{value}");
    } else if lease.held {
        println!("enqueue lease held by {}", lease.holder);
        println!("  fencing token   {}", lease.fence);
        println!("  held for        {:.1} s", lease.age_ms as f64 / 1000.0);
        println!(
            "  expires in      {:.1} s unless renewed",
            lease.ttl_left_ms as f64 / 1000.0
        );
    } else {
        println!("nobody holds the enqueue lease: nothing dispatches until a scheduler takes it");
    }
}
