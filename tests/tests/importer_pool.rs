//! The scheduler's importer pool against real importer gRPC servers on real PostgreSQL: DNS
//! names resolve to every address, starts go to the importer with the most free slots, and a
//! start that found every importer busy is woken by a step's end.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
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
    let started = pool.start("pool/p0/app", ImportType::Pre, 0, None).await;
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
        missing.start("pool/p1/app", ImportType::Pre, 0, None).await,
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
            .start(&format!("pool/p{i}/app"), ImportType::Pre, 0, None)
            .await;
        assert!(
            matches!(started, StartResult::Accepted { .. }),
            "start {i}: {started:?}"
        );
    }
    // Four slots in all, four starts, none refused for lack of room: 1 + 3.
    assert_eq!((small.in_flight(), large.in_flight()), (1, 3));
    let full = pool.start("pool/p4/app", ImportType::Pre, 0, None).await;
    assert!(matches!(full, StartResult::AllBusy(_)), "{full:?}");
}

/// Counts the wake-ups of the task it is the waker of.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waiting start, polled by hand so that each check sees exactly what a step's end did.
struct Waiter<'a> {
    waiting: Pin<Box<dyn Future<Output = bool> + 'a>>,
    wakes: Arc<Wakes>,
}

impl<'a> Waiter<'a> {
    fn new(waiting: impl Future<Output = bool> + 'a) -> Self {
        let wakes = Arc::default();
        Self {
            waiting: Box::pin(waiting),
            wakes,
        }
    }

    fn poll(&mut self) -> Poll<bool> {
        let waker = Waker::from(Arc::clone(&self.wakes));
        self.waiting.as_mut().poll(&mut Context::from_waker(&waker))
    }

    fn woken(&self) -> bool {
        self.wakes.0.load(Ordering::SeqCst) > 0
    }
}

#[tokio::test]
async fn each_step_end_wakes_one_start_that_found_every_importer_busy() {
    let pool = ImporterPool::new(&[]).expect("pool");
    let far = tokio::time::Instant::now() + Duration::from_secs(3600);
    // Two starts back off. Once polled, each waits in line (it takes its place at its first
    // poll), so what a step's end wakes is woken when the end returns: no check below has to
    // give anything time.
    let mut first = Waiter::new(pool.slot_freed_before(far));
    let mut second = Waiter::new(pool.slot_freed_before(far));
    assert!(first.poll().is_pending() && second.poll().is_pending());
    // A step ends (on an importer the pool does not know): one waiting start is woken.
    pool.step_ended(None);
    assert!(
        first.woken() || second.woken(),
        "a step's end woke no waiting start"
    );
    assert!(
        !(first.woken() && second.woken()),
        "one end woke two starts"
    );
    let (mut woken, mut other) = if first.woken() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(woken.poll(), Poll::Ready(true), "woken by the end");
    assert!(other.poll().is_pending(), "one end woke two starts");
    // The next end wakes the other; both saw a slot freed, not their backoff's end.
    pool.step_ended(None);
    assert!(other.woken(), "the second end woke the other start");
    assert_eq!(other.poll(), Poll::Ready(true));
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
        matches!(&status, Err(error) if error.is_unreachable()),
        "{status:?}"
    );
    drop(frozen);
}
