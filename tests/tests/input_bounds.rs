//! Every input is bounded: property tests drive every scheduler and importer RPC that takes
//! arguments, and every setting, with arbitrary values (real PostgreSQL and Redis behind them),
//! and the parsers of link files and manifests with arbitrary bytes. Nothing panics, no answer is
//! an internal error, and a refusal (`INVALID_ARGUMENT`) changes nothing.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Request;

use ferry_importer::service::{ImportService, Importer, StepLimits};
use ferry_importer::store::MetadataStore;
use ferry_proto::common::v1::{ImportStats, ImportType};
use ferry_proto::importer::v1::{ListSubRepositoriesBatchRequest, SubRepositoryPosition};
use ferry_proto::scheduler::v1 as pb;
use ferry_proto::scheduler::v1::scheduler_server::Scheduler as SchedulerRpc;
use ferry_scheduler::grpc::SchedulerGrpc;
use ferry_scheduler::importers::ImporterPool;
use ferry_scheduler::service::Scheduler;
use ferry_scheduler::store::SchedulerStore;
use ferry_shared::ids::RepositoryPath;
use ferry_tests::{LayoutWriter, fresh_database};

/// Cases per property: enough to hit every branch of the checks, quick on two cores.
const CASES: u32 = 96;

/// Codes a well-formed refusal may carry; never `INTERNAL`, `UNKNOWN` or a dropped call.
fn acceptable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument
            | NotFound
            | FailedPrecondition
            | AlreadyExists
            | Unavailable
            | ResourceExhausted
    )
}

/// Strings of every kind: empty, long, unicode, control characters, path-like.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        "[a-z0-9/._-]{0,300}",
        Just("group/project/app".to_owned()),
        Just("a".repeat(70_000)),
    ]
}

/// Durations in seconds around the bounds of `ferryctl gc`'s window.
fn seconds() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(31_536_000),
        Just(31_536_001),
        Just(u64::MAX),
        any::<u64>()
    ]
}

fn number() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u32::MAX),
        Just(i32::MAX as u32),
        any::<u32>()
    ]
}

async fn scheduler() -> (SchedulerGrpc<Scheduler>, SchedulerStore) {
    let importers = ImporterPool::new(&[]).expect("no importers");
    let (scheduler, store) = ferry_tests::scheduler_with(&["group/project/app"], importers).await;
    (SchedulerGrpc(scheduler), store)
}

/// Everything an RPC could change: the settings and every repository's row.
async fn snapshot(store: &SchedulerStore) -> String {
    let settings = store.settings().await.expect("settings");
    let repositories = store
        .list_repositories(None, "", 1000)
        .await
        .expect("repositories");
    format!("{settings:?} {repositories:?}")
}

/// One arbitrary call of a scheduler RPC that takes arguments.
#[derive(Debug, Clone)]
enum Call {
    Settings(pb::UpdateSettingsRequest),
    Enable(bool, Option<u32>),
    DoubleCheck(u32),
    List(String, u32, String),
    Get(String),
    Register(String, bool),
    StartNow(String),
    Cancel(String, bool),
    Writable(String),
    Notify(String, i32, u64, u64),
    Restore(u32),
    ClearLease(String),
    Background(String),
    Verify(Vec<String>, bool, u32),
    Gc(u64, bool),
    /// A rebuild with a batch size beyond its range (one in range would start a rebuild, which
    /// inventories the harness's bucket in the background).
    Rebuild(u32, bool),
}

fn settings() -> impl Strategy<Value = pb::UpdateSettingsRequest> {
    let opt = || proptest::option::of(number());
    (
        (opt(), opt(), opt(), opt(), opt(), opt(), opt()),
        (
            proptest::option::of(prop_oneof![any::<f64>(), Just(f64::NAN), Just(-1.0)]),
            opt(),
            proptest::option::of(text()),
            proptest::option::of(proptest::collection::vec(text(), 0..4)),
            opt(),
            opt(),
        ),
    )
        .prop_map(
            |(
                (capacity, retries, step, pre, imp, tags, starts),
                (rate, wait, created, plans, repair, stale),
            )| {
                pb::UpdateSettingsRequest {
                    enabled: None,
                    capacity,
                    max_retries: retries,
                    max_step_duration_secs: step,
                    pre_import_timeout_secs: pre,
                    import_timeout_secs: imp,
                    max_tags_count: tags,
                    start_max_retries: starts,
                    pre_import_tags_rate: rate,
                    enqueue_waiting_time_secs: wait,
                    created_before: created,
                    target_plans: plans.clone().map(|values| pb::StringList { values }),
                    deny_root_namespaces: plans.map(|values| pb::StringList { values }),
                    repair_enabled: Some(false),
                    repair_max_concurrency: repair,
                    repair_stale_after_secs: stale,
                }
            },
        )
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        settings().prop_map(Call::Settings),
        (any::<bool>(), proptest::option::of(number())).prop_map(|(e, c)| Call::Enable(e, c)),
        number().prop_map(Call::DoubleCheck),
        (text(), number(), text()).prop_map(|(s, n, a)| Call::List(s, n, a)),
        text().prop_map(Call::Get),
        (text(), any::<bool>()).prop_map(|(p, n)| Call::Register(p, n)),
        text().prop_map(Call::StartNow),
        (text(), any::<bool>()).prop_map(|(p, f)| Call::Cancel(p, f)),
        text().prop_map(Call::Writable),
        (text(), any::<i32>(), any::<u64>(), any::<u64>())
            .prop_map(|(p, s, n, m)| Call::Notify(p, s, n, m)),
        number().prop_map(Call::Restore),
        text().prop_map(Call::ClearLease),
        text().prop_map(Call::Background),
        (
            proptest::collection::vec(text(), 0..3),
            any::<bool>(),
            number()
        )
            .prop_map(|(paths, all, concurrency)| Call::Verify(paths, all, concurrency)),
        (seconds(), any::<bool>()).prop_map(|(secs, dry_run)| Call::Gc(secs, dry_run)),
        (1001u32.., any::<bool>()).prop_map(|(batch, pause)| Call::Rebuild(batch, pause)),
    ]
}

/// The call's answer: `Ok(())` or its status.
async fn perform(api: &SchedulerGrpc<Scheduler>, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::Settings(r) => api.update_settings(Request::new(r)).await.map(drop),
        Call::Enable(enabled, capacity) => api
            .set_migration_enabled(Request::new(pb::SetMigrationEnabledRequest {
                enabled,
                capacity,
            }))
            .await
            .map(drop),
        Call::DoubleCheck(since_hours) => api
            .double_check(Request::new(pb::DoubleCheckRequest {
                since_hours,
                dry_run: true,
            }))
            .await
            .map(drop),
        Call::List(state, limit, after) => api
            .list_repositories(Request::new(pb::ListRepositoriesRequest {
                state,
                limit,
                after,
            }))
            .await
            .map(drop),
        Call::Get(path) => api
            .get_repository(Request::new(pb::GetRepositoryRequest { path }))
            .await
            .map(drop),
        Call::Register(path, on_new_platform) => api
            .register_repository(Request::new(pb::RegisterRepositoryRequest {
                path,
                on_new_platform,
            }))
            .await
            .map(drop),
        Call::StartNow(path) => api
            .start_migration_now(Request::new(pb::StartMigrationNowRequest { path }))
            .await
            .map(drop),
        Call::Cancel(path, force) => api
            .cancel_migration(Request::new(pb::CancelMigrationRequest { path, force }))
            .await
            .map(drop),
        Call::Writable(path) => api
            .check_writable(Request::new(pb::CheckWritableRequest { path }))
            .await
            .map(drop),
        Call::Notify(path, status, step, manifests) => api
            .notify_import_result(Request::new(pb::NotifyImportResultRequest {
                path,
                name: String::new(),
                status,
                detail: "arbitrary".into(),
                import_type: ImportType::Final.into(),
                stats: Some(ImportStats {
                    manifests,
                    bytes_copied: manifests,
                    duration_ms: u64::MAX,
                    ..ImportStats::default()
                }),
                step,
                handed_back: false,
            }))
            .await
            .map(drop),
        Call::Restore(batch_size) => api
            .start_repair_restore(Request::new(pb::StartRepairRestoreRequest {
                batch_size,
                force: false,
            }))
            .await
            .map(drop),
        Call::ClearLease(holder) => api
            .clear_lease(Request::new(pb::ClearLeaseRequest { holder }))
            .await
            .map(drop),
        Call::Background(name) => api
            .pause_background_migrations(Request::new(pb::BackgroundMigrationSelector { name }))
            .await
            .map(drop),
        // No importer here: a window in range is answered UNAVAILABLE.
        Call::Gc(older_than_secs, dry_run) => api
            .collect_garbage(Request::new(pb::CollectGarbageRequest {
                older_than_secs,
                dry_run,
            }))
            .await
            .map(drop),
        // An accepted verification runs until its caller goes away: here, at once.
        Call::Verify(paths, all, concurrency) => api
            .verify_repositories(Request::new(pb::VerifyRepositoriesRequest {
                paths,
                all,
                deep: false,
                concurrency,
            }))
            .await
            .map(drop),
        Call::Rebuild(batch_size, pause_migration) => api
            .rebuild_state(Request::new(pb::RebuildStateRequest {
                pause_migration,
                batch_size,
            }))
            .await
            .map(drop),
    }
}

#[test]
fn every_scheduler_rpc_refuses_bad_arguments_without_changing_anything() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (api, store) = runtime.block_on(scheduler());
    let mut runner = TestRunner::new(Config {
        cases: CASES * 4,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&call(), |call| {
            runtime.block_on(async {
                let before = snapshot(&store).await;
                let answer = perform(&api, call.clone()).await;
                if let Err(status) = &answer {
                    prop_assert!(acceptable(status.code()), "{call:?} answered {status:?}");
                    if status.code() == tonic::Code::InvalidArgument {
                        prop_assert_eq!(
                            &before,
                            &snapshot(&store).await,
                            "{:?} was refused but changed something",
                            call
                        );
                    }
                }
                Ok(())
            })
        })
        .expect("property");
    // The stored settings are still ones a restarted scheduler can run with.
    let settings = runtime.block_on(store.settings()).expect("settings");
    assert!(settings.repair_max_concurrency <= 64, "{settings:?}");
    assert!(settings.capacity <= 10_000, "{settings:?}");
}

#[test]
fn the_admin_inputs_that_took_a_scheduler_down_are_refused_naming_their_range() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (api, store) = runtime.block_on(scheduler());
    let before = runtime.block_on(snapshot(&store));
    let since = runtime
        .block_on(perform(&api, Call::DoubleCheck(u32::MAX)))
        .expect_err("refused");
    assert_eq!(since.code(), tonic::Code::InvalidArgument);
    assert!(
        since
            .message()
            .contains("since_hours must be between 1 and 87600"),
        "{since:?}"
    );
    let request = pb::UpdateSettingsRequest {
        repair_enabled: Some(true),
        repair_max_concurrency: Some(i32::MAX as u32),
        ..Default::default()
    };
    let concurrency = runtime
        .block_on(perform(&api, Call::Settings(request)))
        .expect_err("refused");
    assert_eq!(concurrency.code(), tonic::Code::InvalidArgument);
    assert!(
        concurrency
            .message()
            .contains("repair_max_concurrency must be between 0 and 64"),
        "{concurrency:?}"
    );
    let rebuild = runtime
        .block_on(perform(&api, Call::Rebuild(u32::MAX, true)))
        .expect_err("refused");
    assert_eq!(rebuild.code(), tonic::Code::InvalidArgument);
    assert!(
        rebuild
            .message()
            .contains("batch_size must be between 0 and 1000"),
        "{rebuild:?}"
    );
    let window = runtime
        .block_on(perform(&api, Call::Gc(u64::MAX, true)))
        .expect_err("refused");
    assert_eq!(window.code(), tonic::Code::InvalidArgument);
    assert!(
        window
            .message()
            .contains("older_than_secs must be between 0 and 31536000"),
        "{window:?}"
    );
    assert_eq!(before, runtime.block_on(snapshot(&store)), "nothing stored");
}

#[test]
fn every_importer_rpc_refuses_bad_arguments_without_a_panic() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    LayoutWriter::new(dir.path()).image("group/project/app", "v1", "bounds");
    let importer = runtime.block_on(async {
        let db = MetadataStore::connect(&fresh_database("bounds_meta").await, 4)
            .await
            .expect("connect");
        db.migrate().await.expect("migrate");
        let storage = ferry_shared::storage::open(&format!("file://{}", dir.path().display()))
            .expect("storage");
        let limits = StepLimits {
            max_concurrent_imports: 2,
            pre_import_timeout: Duration::from_secs(30),
            import_timeout: Duration::from_secs(30),
            copy_concurrency: 2,
            tag_concurrency: 2,
            cancel_poll: Duration::from_millis(200),
        };
        Importer::new(storage, db, None, limits)
    });
    let strategy = (
        text(),
        any::<i32>(),
        any::<u64>(),
        any::<u64>(),
        number(),
        text(),
        proptest::collection::vec(text(), 0..3),
    );
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(strategy, seconds()),
            |((path, kind, fence, step, n, last, paths), secs)| {
                runtime.block_on(async {
                    let import_type = ImportType::try_from(kind).unwrap_or(ImportType::Unspecified);
                    let answers = [
                        importer
                            .start_import(&path, import_type, fence, step)
                            .await
                            .map(drop),
                        importer
                            .cancel_import(&path, step, kind % 2 == 0)
                            .await
                            .map(drop),
                        importer.import_status(&path).await.map(drop),
                        importer.migration_statuses(&paths).await.map(drop),
                        importer
                            .verify_repository(&path, kind % 2 == 0)
                            .await
                            .map(drop),
                        importer.check_writable(&path).await.map(drop),
                        // A window this importer accepts (longer than its 30 s steps) collects in
                        // the background until the receiver goes away, here at once.
                        importer
                            .collect_garbage(secs, kind % 2 == 0)
                            .await
                            .map(drop),
                        importer
                            .list_sub_repositories(&path, n, &last)
                            .await
                            .map(drop),
                        importer
                            .list_repositories_created_since(&last, n, &path)
                            .await
                            .map(drop),
                        importer
                            .list_sub_repositories_batch(&ListSubRepositoriesBatchRequest {
                                paths: paths.clone(),
                                n,
                                after: Some(SubRepositoryPosition {
                                    index: n,
                                    path: last.clone(),
                                }),
                            })
                            .await
                            .map(drop),
                    ];
                    for answer in answers {
                        if let Err(error) = answer {
                            let status = tonic::Status::from(error);
                            prop_assert!(acceptable(status.code()), "{path:?}: {status:?}");
                        }
                    }
                    Ok(())
                })
            },
        )
        .expect("property");
    // The batch of statuses is bounded, and a refusal names the field.
    let many = vec!["group/project/app".to_owned(); 1001];
    for (paths, expected) in [
        (many, "paths must hold 1 to 1000 paths, not 1001"),
        (Vec::new(), "paths must hold 1 to 1000 paths, not 0"),
        (
            vec!["group/project/app".to_owned(), "Bad Path".to_owned()],
            "paths[1]",
        ),
    ] {
        let status = tonic::Status::from(
            runtime
                .block_on(importer.migration_statuses(&paths))
                .expect_err("refused"),
        );
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    // A path no call above touched (they may have created group/project/app's row).
    let untouched = "bounds/never/imported".to_owned();
    let answer = runtime
        .block_on(importer.migration_statuses(std::slice::from_ref(&untouched)))
        .expect("one path");
    assert_eq!(answer.statuses.len(), 1);
    assert_eq!(answer.statuses[0].path, untouched);
    assert!(!answer.statuses[0].found, "never imported: {answer:?}");
}

proptest! {
    #![proptest_config(Config { cases: 2_000, failure_persistence: None, ..Config::default() })]

    /// A manifest of any bytes parses or fails with a reason; it never panics.
    #[test]
    fn manifests_of_any_bytes_parse_or_give_a_reason(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(error) = ferry_importer::manifest::parse(&payload) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    /// JSON that looks like a manifest, with fields of any type, never panics either.
    #[test]
    fn manifest_shaped_json_parses_or_gives_a_reason(
        schema in any::<i64>(),
        media in text(),
        digest in text(),
        size in any::<i64>(),
        layers in 0usize..3,
    ) {
        let layer = serde_json::json!({"mediaType": media, "digest": digest, "size": size});
        let manifest = serde_json::json!({
            "schemaVersion": schema,
            "mediaType": media,
            "config": layer,
            "layers": vec![layer.clone(); layers],
            "manifests": vec![layer; layers],
        });
        let payload = serde_json::to_vec(&manifest).expect("json");
        if let Err(error) = ferry_importer::manifest::parse(&payload) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    /// A link file of any content is a digest or a reason.
    #[test]
    fn link_files_of_any_content_are_a_digest_or_a_reason(content in any::<String>()) {
        match ferry_shared::ids::Digest::parse(&content) {
            Ok(digest) => prop_assert_eq!(digest.as_str().len(), 71),
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    /// A repository path or tag of any content is valid or refused; never a panic.
    #[test]
    fn paths_and_tags_of_any_content_are_checked(value in any::<String>()) {
        if let Ok(path) = RepositoryPath::parse(&value) {
            prop_assert!(path.as_str().len() <= 255);
        }
        let _ = ferry_shared::layout::is_valid_tag(&value);
    }
}
