//! `ferryctl lease show|clear` and `ferryctl dedup show|clear`: the runbook's stuck exclusive
//! lease and stuck deduplication.

use clap::Subcommand;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    ClearDedupRequest, ClearLeaseRequest, GetDedupRequest, GetLeaseRequest,
};
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::view::{DedupView, LeaseView, emit};

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
    emit(&LeaseView::from(lease), json)
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
    emit(&DedupView::from(status), json)
}
