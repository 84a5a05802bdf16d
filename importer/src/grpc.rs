//! The tonic adapter: the only importer code that touches `tonic::Request` and `Status`.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use ferry_proto::common::v1::ImportType;
use ferry_proto::importer::v1::importer_server::Importer as ImporterRpc;
use ferry_proto::importer::v1::{
    CancelImportRequest, CancelImportResponse, Capacity, CheckWritableRequest,
    CheckWritableResponse, GetCapacityRequest, GetImportStatusRequest, GetImportStatusResponse,
    ListMigrationStatusesRequest, ListRepositoriesCreatedSinceRequest,
    ListSubRepositoriesBatchRequest, ListSubRepositoriesRequest, MigrationStatusList,
    RepositoryPage, StartImportRequest, StartImportResponse, SubRepositoriesBatchPage,
    VerifyRepositoryEvent, VerifyRepositoryRequest,
};

use ferry_proto::importer::v1::{CollectGarbageEvent, CollectGarbageRequest};

use crate::service::ImportService;

/// Methods a caller may use with the read scope; starting and cancelling imports need admin.
pub const READ_METHODS: &[&str] = &[
    "/ferry.importer.v1.Importer/GetImportStatus",
    "/ferry.importer.v1.Importer/GetCapacity",
    "/ferry.importer.v1.Importer/CheckWritable",
    "/ferry.importer.v1.Importer/ListSubRepositories",
    "/ferry.importer.v1.Importer/ListRepositoriesCreatedSince",
    "/ferry.importer.v1.Importer/ListSubRepositoriesBatch",
    "/ferry.importer.v1.Importer/ListMigrationStatuses",
];

/// Serves any [`ImportService`] as `ferry.importer.v1.Importer`.
#[derive(Debug)]
pub struct ImporterGrpc<S>(pub S);

type VerifyStream = Pin<Box<dyn Stream<Item = Result<VerifyRepositoryEvent, Status>> + Send>>;
type GarbageStream = Pin<Box<dyn Stream<Item = Result<CollectGarbageEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<S: ImportService> ImporterRpc for ImporterGrpc<S> {
    type VerifyRepositoryStream = VerifyStream;

    type CollectGarbageStream = GarbageStream;

    async fn collect_garbage(
        &self,
        request: Request<CollectGarbageRequest>,
    ) -> Result<Response<Self::CollectGarbageStream>, Status> {
        let request = request.into_inner();
        let events = self
            .0
            .collect_garbage(request.older_than_secs, request.dry_run)
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(events).map(Ok))))
    }

    async fn verify_repository(
        &self,
        request: Request<VerifyRepositoryRequest>,
    ) -> Result<Response<Self::VerifyRepositoryStream>, Status> {
        let request = request.into_inner();
        let events = self
            .0
            .verify_repository(&request.path, request.deep)
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(events).map(Ok))))
    }

    async fn start_import(
        &self,
        request: Request<StartImportRequest>,
    ) -> Result<Response<StartImportResponse>, Status> {
        let request = request.into_inner();
        let import_type =
            ImportType::try_from(request.import_type).unwrap_or(ImportType::Unspecified);
        let response = self
            .0
            .start_import(
                &request.path,
                import_type,
                request.fencing_token,
                request.step,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn get_import_status(
        &self,
        request: Request<GetImportStatusRequest>,
    ) -> Result<Response<GetImportStatusResponse>, Status> {
        Ok(Response::new(
            self.0.import_status(&request.into_inner().path).await?,
        ))
    }

    async fn cancel_import(
        &self,
        request: Request<CancelImportRequest>,
    ) -> Result<Response<CancelImportResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            self.0
                .cancel_import(&request.path, request.step, request.force)
                .await?,
        ))
    }

    async fn get_capacity(
        &self,
        _request: Request<GetCapacityRequest>,
    ) -> Result<Response<Capacity>, Status> {
        Ok(Response::new(self.0.capacity()))
    }

    async fn check_writable(
        &self,
        request: Request<CheckWritableRequest>,
    ) -> Result<Response<CheckWritableResponse>, Status> {
        Ok(Response::new(
            self.0.check_writable(&request.into_inner().path).await?,
        ))
    }

    async fn list_sub_repositories(
        &self,
        request: Request<ListSubRepositoriesRequest>,
    ) -> Result<Response<RepositoryPage>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.0.list_sub_repositories(&r.path, r.n, &r.last).await?,
        ))
    }

    async fn list_sub_repositories_batch(
        &self,
        request: Request<ListSubRepositoriesBatchRequest>,
    ) -> Result<Response<SubRepositoriesBatchPage>, Status> {
        Ok(Response::new(
            self.0
                .list_sub_repositories_batch(&request.into_inner())
                .await?,
        ))
    }

    async fn list_migration_statuses(
        &self,
        request: Request<ListMigrationStatusesRequest>,
    ) -> Result<Response<MigrationStatusList>, Status> {
        Ok(Response::new(
            self.0
                .migration_statuses(&request.into_inner().paths)
                .await?,
        ))
    }

    async fn list_repositories_created_since(
        &self,
        request: Request<ListRepositoriesCreatedSinceRequest>,
    ) -> Result<Response<RepositoryPage>, Status> {
        let r = request.into_inner();
        let page = self
            .0
            .list_repositories_created_since(&r.since, r.n, &r.last)
            .await?;
        Ok(Response::new(page))
    }
}
