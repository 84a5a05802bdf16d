//! The tonic adapter: the only scheduler code that touches `tonic::Request` and `Status`.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use ferry_proto::scheduler::v1 as pb;
use ferry_proto::scheduler::v1::scheduler_server::Scheduler as SchedulerRpc;
use ferry_proto::scheduler::v1::{
    CancelMigrationRequest, CheckWritableRequest, DoubleCheckReport, DoubleCheckRequest,
    ListRepositoriesRequest, PreviewQueueRequest, QueuePreview, RegisterRepositoryRequest,
    RepositoryList, StartMigrationNowRequest, WritableAnswer,
};
use ferry_proto::scheduler::v1::{
    GetLeaseRequest, GetMigrationSummaryRequest, GetRepositoryRequest, GetSettingsRequest,
    InventoryProgress, LeaseStatus, MigrationSummary, NotifyImportResultRequest,
    NotifyImportResultResponse, Repository, RunInventoryRequest, SetMigrationEnabledRequest,
    SetMigrationEnabledResponse, Settings, UpdateSettingsRequest,
};

use crate::service::SchedulerService;

/// Methods an internal client may call with the read scope; every other method (the ones that
/// change state, and the importers' completion callback) needs admin.
pub const READ_METHODS: &[&str] = &[
    "/ferry.scheduler.v1.Scheduler/GetMigrationSummary",
    "/ferry.scheduler.v1.Scheduler/GetRepository",
    "/ferry.scheduler.v1.Scheduler/GetLease",
    "/ferry.scheduler.v1.Scheduler/ListRepositories",
    "/ferry.scheduler.v1.Scheduler/PreviewQueue",
    "/ferry.scheduler.v1.Scheduler/CheckWritable",
    "/ferry.scheduler.v1.Scheduler/GetSettings",
    "/ferry.scheduler.v1.Scheduler/ListBackgroundMigrations",
    "/ferry.scheduler.v1.Scheduler/GetRepairStatus",
    "/ferry.scheduler.v1.Scheduler/GetDedup",
    "/ferry.scheduler.v1.Scheduler/ListNamespacePlans",
];

/// Serves any [`SchedulerService`] as `ferry.scheduler.v1.Scheduler`.
#[derive(Debug)]
pub struct SchedulerGrpc<S>(pub S);

type ProgressStream = Pin<Box<dyn Stream<Item = Result<InventoryProgress, Status>> + Send>>;
type VerifyStream = Pin<Box<dyn Stream<Item = Result<pb::VerifyProgress, Status>> + Send>>;
type GarbageStream = Pin<Box<dyn Stream<Item = Result<pb::GarbageProgress, Status>> + Send>>;
type RebuildStream = Pin<Box<dyn Stream<Item = Result<pb::RebuildProgress, Status>> + Send>>;

#[tonic::async_trait]
impl<S: SchedulerService> SchedulerRpc for SchedulerGrpc<S> {
    async fn notify_import_result(
        &self,
        request: Request<NotifyImportResultRequest>,
    ) -> Result<Response<NotifyImportResultResponse>, Status> {
        Ok(Response::new(
            self.0.notify_import_result(request.into_inner()).await?,
        ))
    }

    type RunInventoryStream = ProgressStream;

    type VerifyRepositoriesStream = VerifyStream;

    type CollectGarbageStream = GarbageStream;

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<Self::CollectGarbageStream>, Status> {
        let receiver = self.0.collect_garbage(request.into_inner()).await?;
        let stream = ReceiverStream::new(receiver).map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_repositories(
        &self,
        request: Request<pb::VerifyRepositoriesRequest>,
    ) -> Result<Response<Self::VerifyRepositoriesStream>, Status> {
        let receiver = self.0.verify_repositories(request.into_inner()).await?;
        let stream = ReceiverStream::new(receiver).map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    type RebuildStateStream = RebuildStream;

    async fn rebuild_state(
        &self,
        request: Request<pb::RebuildStateRequest>,
    ) -> Result<Response<Self::RebuildStateStream>, Status> {
        let receiver = self.0.rebuild_state(request.into_inner()).await?;
        let stream = ReceiverStream::new(receiver).map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn run_inventory(
        &self,
        _request: Request<RunInventoryRequest>,
    ) -> Result<Response<Self::RunInventoryStream>, Status> {
        let receiver = self.0.run_inventory().await?;
        let stream = ReceiverStream::new(receiver).map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn set_migration_enabled(
        &self,
        request: Request<SetMigrationEnabledRequest>,
    ) -> Result<Response<SetMigrationEnabledResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            self.0
                .set_migration_enabled(request.enabled, request.capacity)
                .await?,
        ))
    }

    async fn get_migration_summary(
        &self,
        _request: Request<GetMigrationSummaryRequest>,
    ) -> Result<Response<MigrationSummary>, Status> {
        Ok(Response::new(self.0.migration_summary().await?))
    }

    async fn get_lease(
        &self,
        _request: Request<GetLeaseRequest>,
    ) -> Result<Response<LeaseStatus>, Status> {
        Ok(Response::new(self.0.lease().await?))
    }

    async fn register_repository(
        &self,
        request: Request<RegisterRepositoryRequest>,
    ) -> Result<Response<Repository>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.0
                .register_repository(&r.path, r.on_new_platform)
                .await?,
        ))
    }

    async fn start_migration_now(
        &self,
        request: Request<StartMigrationNowRequest>,
    ) -> Result<Response<Repository>, Status> {
        Ok(Response::new(
            self.0
                .start_migration_now(&request.into_inner().path)
                .await?,
        ))
    }

    async fn cancel_migration(
        &self,
        request: Request<CancelMigrationRequest>,
    ) -> Result<Response<Repository>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.0.cancel_migration(&r.path, r.force).await?,
        ))
    }

    async fn list_repositories(
        &self,
        request: Request<ListRepositoriesRequest>,
    ) -> Result<Response<RepositoryList>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.0
                .list_repositories(&r.state, r.limit, &r.after)
                .await?,
        ))
    }

    async fn preview_queue(
        &self,
        _request: Request<PreviewQueueRequest>,
    ) -> Result<Response<QueuePreview>, Status> {
        Ok(Response::new(self.0.preview_queue().await?))
    }

    async fn double_check(
        &self,
        request: Request<DoubleCheckRequest>,
    ) -> Result<Response<DoubleCheckReport>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.0.double_check(r.since_hours, r.dry_run).await?,
        ))
    }

    async fn check_writable(
        &self,
        request: Request<CheckWritableRequest>,
    ) -> Result<Response<WritableAnswer>, Status> {
        Ok(Response::new(
            self.0.check_writable(&request.into_inner().path).await?,
        ))
    }

    async fn get_settings(
        &self,
        _request: Request<GetSettingsRequest>,
    ) -> Result<Response<Settings>, Status> {
        Ok(Response::new(self.0.settings().await?))
    }

    async fn update_settings(
        &self,
        request: Request<UpdateSettingsRequest>,
    ) -> Result<Response<Settings>, Status> {
        Ok(Response::new(
            self.0.update_settings(request.into_inner()).await?,
        ))
    }

    async fn list_background_migrations(
        &self,
        request: Request<pb::BackgroundMigrationSelector>,
    ) -> Result<Response<pb::BackgroundMigrationList>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(
            self.0.list_background_migrations(&name).await?,
        ))
    }

    async fn pause_background_migrations(
        &self,
        request: Request<pb::BackgroundMigrationSelector>,
    ) -> Result<Response<pb::BackgroundMigrationNames>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(
            self.0.pause_background_migrations(&name, false).await?,
        ))
    }

    async fn resume_background_migrations(
        &self,
        request: Request<pb::BackgroundMigrationSelector>,
    ) -> Result<Response<pb::BackgroundMigrationNames>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(
            self.0.pause_background_migrations(&name, true).await?,
        ))
    }

    async fn get_repair_status(
        &self,
        _request: Request<pb::GetRepairStatusRequest>,
    ) -> Result<Response<pb::RepairStatus>, Status> {
        Ok(Response::new(self.0.repair_status().await?))
    }

    async fn retry_failed_repairs(
        &self,
        _request: Request<pb::RetryFailedRepairsRequest>,
    ) -> Result<Response<pb::RetryFailedRepairsResponse>, Status> {
        Ok(Response::new(self.0.retry_failed_repairs().await?))
    }

    async fn start_repair_restore(
        &self,
        request: Request<pb::StartRepairRestoreRequest>,
    ) -> Result<Response<pb::BackgroundMigration>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.0.start_repair_restore(r.batch_size, r.force).await?,
        ))
    }

    async fn clear_lease(
        &self,
        request: Request<pb::ClearLeaseRequest>,
    ) -> Result<Response<LeaseStatus>, Status> {
        let holder = request.into_inner().holder;
        Ok(Response::new(self.0.clear_lease(&holder).await?))
    }

    async fn get_dedup(
        &self,
        _request: Request<pb::GetDedupRequest>,
    ) -> Result<Response<pb::DedupStatus>, Status> {
        Ok(Response::new(self.0.dedup().await?))
    }

    async fn clear_dedup(
        &self,
        _request: Request<pb::ClearDedupRequest>,
    ) -> Result<Response<pb::DedupStatus>, Status> {
        Ok(Response::new(self.0.clear_dedup().await?))
    }

    async fn set_namespace_plans(
        &self,
        request: Request<pb::SetNamespacePlansRequest>,
    ) -> Result<Response<pb::NamespacePlans>, Status> {
        Ok(Response::new(
            self.0.set_namespace_plans(request.into_inner()).await?,
        ))
    }

    async fn list_namespace_plans(
        &self,
        _request: Request<pb::ListNamespacePlansRequest>,
    ) -> Result<Response<pb::NamespacePlans>, Status> {
        Ok(Response::new(self.0.namespace_plans().await?))
    }

    async fn get_repository(
        &self,
        request: Request<GetRepositoryRequest>,
    ) -> Result<Response<Repository>, Status> {
        Ok(Response::new(
            self.0.repository(&request.into_inner().path).await?,
        ))
    }
}
