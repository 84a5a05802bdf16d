//! Traces across both services, exported with OTLP over gRPC to a real receiver: one trace holds
//! the scheduler's dispatch, the importer's `StartImport` and step (with its storage calls and
//! queries), and the scheduler's `NotifyImportResult`. The importer's JSON log lines carry the
//! trace id as `correlation_id`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

use ferry_proto::scheduler::v1::{GetMigrationSummaryRequest, SetMigrationEnabledRequest};
use ferry_tests::processes::{Process, connect_scheduler, free_port};
use ferry_tests::{LayoutWriter, fresh_database, redis_url, unique_suffix, wait_until};

/// A received span: (service, trace id, span name, attributes as strings).
type Received = (String, String, String, HashMap<String, String>);

#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = self.0.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key.clone(), value)
                        })
                        .collect();
                    received.push((
                        service.clone(),
                        hex::encode(&span.trace_id),
                        span.name,
                        attributes,
                    ));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_step_through_both_services() {
    // The receiver.
    let receiver = Receiver::default();
    let otlp_port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", otlp_port))
        .await
        .expect("bind");
    tokio::spawn({
        let receiver = receiver.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("receiver");
        }
    });

    // One repository, both services as processes exporting to it.
    let bucket = tempfile::tempdir().expect("bucket");
    let logs = tempfile::tempdir().expect("logs");
    LayoutWriter::new(bucket.path()).image("traced/project/app", "v1", "traced image");
    let storage = format!("file://{}", bucket.path().display());
    let otel = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp_port}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let scheduler_port = free_port();
    let mut importer_env = vec![
        (
            "FERRY_METADATA_DATABASE_URL",
            fresh_database("traces_meta").await,
        ),
        ("FERRY_STORAGE_URL", storage.clone()),
        (
            "FERRY_SCHEDULER_URL",
            format!("http://127.0.0.1:{scheduler_port}"),
        ),
    ];
    importer_env.extend(otel.clone());
    let mut importer = Process::start(
        "ferry-importer",
        "importer",
        free_port(),
        &importer_env,
        logs.path(),
    );
    let mut scheduler_env = vec![
        ("FERRY_DATABASE_URL", fresh_database("traces").await),
        ("FERRY_REDIS_URL", redis_url()),
        ("FERRY_STORAGE_URL", storage),
        ("FERRY_IMPORTERS", importer.url.clone()),
        (
            "FERRY_REDIS_PREFIX",
            format!("ferry-traces-{}", unique_suffix()),
        ),
        ("FERRY_ENQUEUE_INTERVAL_MS", "200".to_owned()),
    ];
    scheduler_env.extend(otel);
    let mut scheduler = Process::start(
        "ferry-scheduler",
        "scheduler",
        scheduler_port,
        &scheduler_env,
        logs.path(),
    );
    let mut client = connect_scheduler(&scheduler.url).await;
    ferry_tests::run_inventory(&mut client).await;
    client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(1),
        })
        .await
        .expect("enable");
    wait_until(
        "the repository migrated",
        Duration::from_secs(60),
        async || {
            let summary = client
                .get_migration_summary(GetMigrationSummaryRequest {})
                .await
                .expect("summary")
                .into_inner();
            if summary
                .states
                .iter()
                .any(|s| s.state == "import_done" && s.count == 1)
            {
                Ok(())
            } else {
                Err(summary)
            }
        },
    )
    .await;
    // A graceful stop flushes what the exporters hold.
    scheduler.signal("TERM");
    importer.signal("TERM");
    scheduler.wait_exit(Duration::from_secs(30)).await;
    importer.wait_exit(Duration::from_secs(30)).await;

    let spans = receiver.0.lock().expect("lock").clone();
    let has = |trace: &str, service: &str, name: &str| {
        spans
            .iter()
            .any(|(s, t, n, _)| t == trace && s == service && n == name)
    };
    let traces: HashSet<&String> = spans.iter().map(|(_, t, _, _)| t).collect();
    let whole: Vec<&&String> = traces
        .iter()
        .filter(|trace| {
            has(trace, "ferry-scheduler", "dispatch")
                && has(
                    trace,
                    "ferry-importer",
                    "/ferry.importer.v1.Importer/StartImport",
                )
                && has(trace, "ferry-importer", "import.step")
                && has(trace, "ferry-importer", "read")
                && has(trace, "ferry-importer", "db.commit_step")
                && has(
                    trace,
                    "ferry-scheduler",
                    "/ferry.scheduler.v1.Scheduler/NotifyImportResult",
                )
                && (has(trace, "ferry-scheduler", "db.finish_import")
                    || has(trace, "ferry-scheduler", "db.finish_import_and_claim_next"))
        })
        .collect();
    let names: HashSet<(&String, &String)> = spans.iter().map(|(s, _, n, _)| (s, n)).collect();
    assert_eq!(
        whole.len(),
        1,
        "one trace holds the final import across both services; spans seen: {names:?}"
    );
    let trace = whole[0].as_str();
    eprintln!(
        "{} spans received; the step's trace {trace} holds {}",
        spans.len(),
        spans.iter().filter(|s| s.1 == trace).count()
    );

    // The step's spans and log lines on both sides carry one correlation id, derived from the
    // step's identity (the same with or without traces).
    // The trace may hold the pre-import too (its end hands the slot to the final import).
    let step = spans
        .iter()
        .find(|(_, t, n, a)| {
            t == trace
                && n == "import.step"
                && a.get("import_type").map(String::as_str) == Some("final")
        })
        .expect("the final import's step span");
    let correlation = step
        .3
        .get("correlation_id")
        .expect("correlation id")
        .clone();
    assert_eq!(correlation.len(), 32, "{correlation}");
    let dispatch = spans
        .iter()
        .find(|(s, t, n, a)| {
            t == trace
                && s == "ferry-scheduler"
                && n == "dispatch"
                && a.get("import_type").map(String::as_str) == Some("final")
        })
        .expect("the final import's dispatch span");
    assert_eq!(
        dispatch.3.get("correlation_id"),
        Some(&correlation),
        "the scheduler's dispatch of the step carries the importer's correlation id"
    );
    let log = importer.log_text();
    let ended: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line["message"] == "import step ended")
        .collect();
    assert_eq!(ended.len(), 2, "a pre-import and a final import");
    assert!(
        ended.iter().any(
            |line| line["span"]["correlation_id"] == correlation.as_str()
                && line["span"]["repository"] == "traced/project/app"
                && line["span"]["import_type"] == "final"
        ),
        "no final import line with {correlation}: {ended:?}"
    );
    let scheduler_lines: Vec<serde_json::Value> = scheduler
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let names_the_step = |line: &serde_json::Value| {
        let spans = line["spans"].as_array().into_iter().flatten();
        std::iter::once(&line["span"])
            .chain(spans)
            .any(|span| span["correlation_id"] == correlation.as_str())
    };
    assert!(
        scheduler_lines.iter().any(names_the_step),
        "no scheduler log line carries the step's correlation id {correlation}"
    );
}
