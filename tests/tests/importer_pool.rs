//! The scheduler's importer pool against real importer gRPC servers on real PostgreSQL: DNS
//! names resolve to every address, starts go to the importer with the most free slots, and a
//! start that found every importer busy is woken by a step's end.

use std::sync::Arc;
use std::time::Duration;

use ferry_importer::notifier::Notifier;
use ferry_importer::service::{Importer, StepLimits};
use ferry_importer::store::MetadataStore;
use ferry_proto::common::v1::ImportType;
use ferry_scheduler::importers::{ImporterPool, StartResult};
use ferry_shared::storage::BlobStore;
use ferry_tests::{GatedStore, LayoutWriter, fresh_database};

/// An importer with `slots` slots whose steps block on a closed gate, served on 127.0.0.1.
async fn serve_importer(
    storage: Arc<dyn BlobStore>,
    db: MetadataStore,
    slots: usize,
) -> (Importer, u16, tokio::sync::watch::Sender<bool>) {
    let (gated, gate) = GatedStore::new(storage);
    let limits = StepLimits {
        max_concurrent_imports: slots,
        pre_import_timeout: Duration::from_secs(60),
        import_timeout: Duration::from_secs(60),
        copy_concurrency: 2,
        tag_concurrency: 2,
        cancel_poll: Duration::from_secs(60),
    };
    let notifier = Notifier::new("http://127.0.0.1:1", Duration::ZERO).expect("notifier");
    let importer = Importer::new(Arc::new(gated), db, Some(notifier), limits);
    let port = ferry_tests::serve_importer(importer.clone()).await;
    (importer, port, gate)
}

async fn setup() -> (tempfile::TempDir, Arc<dyn BlobStore>, MetadataStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutWriter::new(dir.path());
    for i in 0..6 {
        layout.image(&format!("pool/p{i}/app"), "v1", &format!("pool {i}"));
    }
    let storage =
        ferry_shared::storage::open(&format!("file://{}", dir.path().display())).expect("storage");
    let db = MetadataStore::connect(&fresh_database("pool").await, 8)
        .await
        .expect("db");
    db.migrate().await.expect("migrate");
    (dir, storage, db)
}

#[tokio::test]
async fn a_dns_name_stands_for_every_address_it_resolves_to() {
    let (_dir, storage, db) = setup().await;
    let (_importer, port, _gate) = serve_importer(storage, db, 2).await;
    let pool = ImporterPool::new(&[format!("dns://localhost:{port}")]).expect("pool");
    let members = pool.refresh().await;
    assert!(
        members.contains(&format!("http://127.0.0.1:{port}")),
        "{members:?}"
    );
    let asked = chrono::Utc::now();
    let started = pool.start("pool/p0/app", ImportType::Pre, 0, 0).await;
    let answered = chrono::Utc::now();
    let StartResult::Accepted {
        importer,
        accepted_at,
    } = started
    else {
        panic!("not accepted: {started:?}");
    };
    assert_eq!(importer, format!("http://127.0.0.1:{port}"));
    // The importer says when it claimed the step: between the request and its answer.
    let accepted_at = accepted_at.expect("the importer's acceptance time");
    assert!(
        asked <= accepted_at && accepted_at <= answered,
        "{asked} <= {accepted_at} <= {answered}"
    );
    // An unresolvable name keeps the pool as it was instead of emptying it.
    let missing = ImporterPool::new(&["dns://no-such-host.invalid:1".to_owned()]).expect("pool");
    assert!(missing.refresh().await.is_empty());
    assert!(matches!(
        missing.start("pool/p1/app", ImportType::Pre, 0, 0).await,
        StartResult::AllBusy(_)
    ));
}

#[tokio::test]
async fn starts_go_to_the_importer_with_the_most_free_slots() {
    let (_dir, storage, db) = setup().await;
    let (small, small_port, _small_gate) =
        serve_importer(Arc::clone(&storage), db.clone(), 1).await;
    let (large, large_port, _large_gate) = serve_importer(storage, db, 3).await;
    let urls = vec![
        format!("http://127.0.0.1:{small_port}"),
        format!("http://127.0.0.1:{large_port}"),
    ];
    let pool = ImporterPool::new(&urls).expect("pool");
    pool.refresh().await;
    for i in 0..4 {
        let started = pool
            .start(&format!("pool/p{i}/app"), ImportType::Pre, 0, 0)
            .await;
        assert!(
            matches!(started, StartResult::Accepted { .. }),
            "start {i}: {started:?}"
        );
    }
    // Four slots in all, four starts, none refused for lack of room: 1 + 3.
    assert_eq!((small.in_flight(), large.in_flight()), (1, 3));
    let full = pool.start("pool/p4/app", ImportType::Pre, 0, 0).await;
    assert!(matches!(full, StartResult::AllBusy(_)), "{full:?}");
}

#[tokio::test]
async fn each_step_end_wakes_one_start_that_found_every_importer_busy() {
    let pool = Arc::new(ImporterPool::new(&[]).expect("pool"));
    let far = tokio::time::Instant::now() + Duration::from_secs(3600);
    let wait = |pool: &Arc<ImporterPool>| {
        let pool = Arc::clone(pool);
        tokio::spawn(async move { pool.slot_freed_before(far).await })
    };
    let (first, second) = (wait(&pool), wait(&pool));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!first.is_finished() && !second.is_finished());
    // A step ends (on an importer the pool does not know): one waiting start is woken.
    pool.step_ended(None);
    let woken = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if first.is_finished() || second.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(woken.is_ok(), "a step's end woke no waiting start");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !(first.is_finished() && second.is_finished()),
        "one end woke two starts"
    );
    // The next end wakes the other; both saw a slot freed, not their backoff's end.
    pool.step_ended(None);
    for waiter in [first, second] {
        let freed = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert!(freed);
    }
    // With no step ending, the backoff runs out.
    let soon = tokio::time::Instant::now() + Duration::from_millis(20);
    assert!(!pool.slot_freed_before(soon).await);
}

#[tokio::test]
async fn a_frozen_importer_holds_a_refresh_up_for_its_deadline_only() {
    // A frozen importer: the kernel accepts the connection, nothing ever answers.
    let frozen = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = frozen.local_addr().expect("addr").port();
    let pool = ImporterPool::new(&[format!("http://127.0.0.1:{port}")]).expect("pool");
    let started = std::time::Instant::now();
    pool.refresh().await;
    let took = started.elapsed();
    // A scheduler refreshes its pool at start-up, with its port already bound: before the
    // deadline, a frozen importer held its calls and notifications for 30 s.
    assert!(
        took < ferry_scheduler::importers::QUICK_DEADLINE * 2,
        "the refresh took {took:?}"
    );
    let status = pool.status(None, "pool/p0/app").await;
    assert!(
        matches!(&status, Err(s) if ferry_scheduler::importers::is_unreachable(s)),
        "{status:?}"
    );
    drop(frozen);
}
