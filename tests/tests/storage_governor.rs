//! The shared storage request budget, against real Redis: processes share one rate, the rate
//! ramps (at most doubling per ramp period, up to its ceiling), a 429 cuts it, and it grows back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_shared::storage::governor::{Budget, BudgetConfig, Governor, GovernorConfig};
use ferry_tests::{redis_url, unique_suffix};

/// A governor of the budgets under `prefix` with only `read` governed.
async fn governor(prefix: &str, read: BudgetConfig, ramp: Duration) -> Governor {
    let config = GovernorConfig {
        read: Some(read),
        write: None,
        ramp,
    };
    governor_with(prefix, config).await
}

/// A governor of the budgets under `prefix`, on its own Redis connection.
async fn governor_with(prefix: &str, config: GovernorConfig) -> Governor {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let redis = redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis (run `make test`)");
    Governor::new(redis, prefix, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_drawing_from_one_budget_together_stay_within_its_rate() {
    const RATE: f64 = 100.0;
    let prefix = format!("ferry-test-{}", unique_suffix());
    let budget = BudgetConfig {
        rate: RATE,
        max_rate: RATE,
    };
    // Two "importers", each with its own connection and eight callers.
    let importers = [
        governor(&prefix, budget, Duration::from_secs(1200)).await,
        governor(&prefix, budget, Duration::from_secs(1200)).await,
    ];
    let admitted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let window = Duration::from_millis(1500);
    let mut callers = Vec::new();
    for governor in &importers {
        for _ in 0..8 {
            let governor = governor.clone();
            let admitted = Arc::clone(&admitted);
            callers.push(tokio::spawn(async move {
                loop {
                    governor.acquire(Budget::Read).await;
                    if started.elapsed() > window {
                        return;
                    }
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for caller in callers {
        caller.await.expect("caller");
    }
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    // The rate over the window plus the burst (5 % of a second's worth): never more.
    let most = RATE * window.as_secs_f64() + RATE * 0.05 + 1.0;
    assert!(admitted <= most, "{admitted} admitted, at most {most}");
    assert!(admitted >= most * 0.5, "{admitted} admitted of {most}");
    // An ungoverned budget does not wait or touch Redis.
    let quick = Instant::now();
    for _ in 0..1000 {
        importers[0].acquire(Budget::Write).await;
    }
    assert!(quick.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn the_rate_ramps_is_cut_by_a_429_and_grows_back() {
    let prefix = format!("ferry-test-{}", unique_suffix());
    let ramp = Duration::from_secs(2);
    let open = governor(
        &prefix,
        BudgetConfig {
            rate: 10.0,
            max_rate: 0.0,
        },
        ramp,
    )
    .await;
    // The most the ceiling can be `elapsed` after the budget's first request: the bounds below
    // follow the time this test measured, however slow the machine (1 % for the two clocks).
    let at_most =
        |elapsed: Duration| 10.0 * 2f64.powf(elapsed.as_secs_f64() / ramp.as_secs_f64()) * 1.01;
    let begun = Instant::now();
    open.acquire(Budget::Read).await;
    let first = open
        .peek(Budget::Read)
        .await
        .expect("peek")
        .expect("governed");
    assert!(
        (10.0..at_most(begun.elapsed())).contains(&first.ceiling),
        "{first:?}"
    );
    // Traffic goes on through the ramp period (an idle budget would ramp again from the start).
    let ramping = Instant::now();
    while ramping.elapsed() < ramp {
        open.acquire(Budget::Read).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = open
        .peek(Budget::Read)
        .await
        .expect("peek")
        .expect("governed");
    // One ramp period later: doubled (a little more for the time the calls took), not more.
    assert!(
        (19.9..at_most(begun.elapsed())).contains(&later.ceiling),
        "ceiling {} after one ramp period, {:?} after the first request",
        later.ceiling,
        begun.elapsed()
    );
    assert_eq!(later.rate, later.ceiling);

    // A 429 cuts the rate by 30 %; a second one within the cooldown changes nothing.
    let cutting = Instant::now();
    open.throttled(Budget::Read).await;
    let cut = open
        .peek(Budget::Read)
        .await
        .expect("peek")
        .expect("governed");
    // At most 70 % of the ceiling at the cut, plus what grew back (10 % of it a second) until
    // the look.
    let ceiling = at_most(begun.elapsed());
    let grown_back = 0.1 * ceiling * cutting.elapsed().as_secs_f64();
    assert!(
        (later.rate * 0.69..ceiling * 0.71 + grown_back).contains(&cut.rate),
        "{cut:?} after {later:?}"
    );
    open.throttled(Budget::Read).await;
    let again = open
        .peek(Budget::Read)
        .await
        .expect("peek")
        .expect("governed");
    assert!(again.rate <= cut.rate * 1.1, "{again:?} after {cut:?}");
    assert!(again.rate >= cut.rate, "{again:?} after {cut:?}");
    // Without 429s it grows back (10 % of the ceiling per second).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = open
        .peek(Budget::Read)
        .await
        .expect("peek")
        .expect("governed");
    assert!(grown.rate > again.rate, "{grown:?} after {again:?}");

    // A ceiling caps the ramp.
    let capped = governor(
        &format!("{prefix}-capped"),
        BudgetConfig {
            rate: 10.0,
            max_rate: 12.0,
        },
        ramp,
    )
    .await;
    let ramping = Instant::now();
    while ramping.elapsed() < ramp {
        capped.acquire(Budget::Read).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slot = capped
        .peek(Budget::Read)
        .await
        .expect("peek")
        .expect("governed");
    assert_eq!(slot.ceiling, 12.0, "{slot:?}");
}

/// Two one-shot importers, each with half the sample, behind a bucket that refuses requests
/// beyond its rate: configured at three times that rate, the budget is cut by the 429s it meets
/// and every repository still imports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importers_that_meet_429s_cut_their_shared_budget_and_finish() {
    use ferry_tests::SampleRegistry;
    use ferry_tests::buckets::GcsBucket;
    use ferry_tests::throttle::ThrottleProxy;

    const BUCKET_RATE: f64 = 100.0;
    let sample = SampleRegistry::build(false);
    let bucket = GcsBucket::new().await;
    bucket.upload_dir(&sample.root()).await;
    let proxy = ThrottleProxy::start(bucket.endpoint(), BUCKET_RATE, 5.0).await;
    let prefix = format!("ferry-test-{}", unique_suffix());
    let database = ferry_tests::fresh_database("governor").await;
    let paths: Vec<String> = sample
        .repositories()
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_owned))
        .collect();
    assert!(paths.len() >= 4, "{paths:?}");
    let (first, second) = paths.split_at(paths.len() / 2);
    let run = |paths: &[String]| {
        ferry_tests::processes::governed_one_shot(
            &ferry_tests::processes::bin_dir().join("ferry-importer"),
            paths,
            &proxy.address.to_string(),
            bucket.name(),
            &database,
            &prefix,
            BUCKET_RATE * 3.0,
        )
        .env("FERRY_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ferry-importer runs (make test builds it)")
    };
    // Migrate the schema once first, so that the two importers do not race to create it.
    let migrated =
        std::process::Command::new(ferry_tests::processes::bin_dir().join("ferry-importer"))
            .arg("migrate")
            .env("FERRY_METADATA_DATABASE_URL", &database)
            .status()
            .expect("migrate");
    assert!(migrated.success());
    let importers = [run(first), run(second)];
    for importer in importers {
        let output = importer.wait_with_output().expect("importer ends");
        assert!(
            output.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(proxy.refused() > 0, "the bucket never refused a request");
    // The shared read budget was cut below what was configured.
    let mut redis = redis::Client::open(redis_url())
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let cut: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}:storage:budget:read"))
        .arg("cut_rate")
        .query_async(&mut redis)
        .await
        .expect("hget");
    let cut: f64 = cut.expect("a cut was recorded").parse().expect("number");
    assert!(cut < BUCKET_RATE * 3.0, "{cut}");
    eprintln!(
        "forwarded {}, refused {}, read rate cut to {cut:.1}/s",
        proxy.forwarded(),
        proxy.refused()
    );
}

#[tokio::test]
async fn a_call_that_makes_several_requests_books_its_slots_at_once() {
    let prefix = format!("ferry-test-{}", unique_suffix());
    // 20 requests/s (one every 50 ms) and a burst of one: five slots end 200 ms from now.
    let governor = governor(
        &prefix,
        BudgetConfig {
            rate: 20.0,
            max_rate: 20.0,
        },
        Duration::from_secs(1200),
    )
    .await;
    let started = Instant::now();
    governor.acquire_slots(Budget::Read, 5).await;
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
    // The next single slot comes after those five.
    governor.acquire(Budget::Read).await;
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "{:?}",
        started.elapsed()
    );
}

/// A copy books one write whether or not its destination is there already: the store makes
/// the request either way (on GCS, the rewrite its precondition refuses). At one write per
/// thousand seconds, the first copy passes and takes the slot, and the next one waits.
/// (Importers skip copies of blobs the metadata database has registered, so shared layers cost
/// no write at all.)
#[tokio::test]
async fn every_copy_books_a_write() {
    use ferry_shared::storage::{BlobStore, CopyOutcome, Governed, LocalStore};

    let dir = tempfile::tempdir().expect("bucket");
    for name in ["src", "present"] {
        std::fs::create_dir_all(dir.path().join(name)).expect("mkdir");
    }
    std::fs::write(dir.path().join("src/data"), b"layer").expect("source");
    std::fs::write(dir.path().join("present/data"), b"layer").expect("destination");
    let slow_writes = GovernorConfig {
        read: None,
        write: Some(BudgetConfig {
            rate: 0.001,
            max_rate: 0.001,
        }),
        ramp: Duration::from_secs(1200),
    };
    let governor = governor_with(&format!("ferry-test-{}", unique_suffix()), slow_writes).await;
    let local = LocalStore::new(dir.path().to_path_buf()).expect("local store");
    let store = Governed::new(Arc::new(local), governor.clone());
    let before = governor
        .peek(Budget::Write)
        .await
        .expect("peek")
        .expect("governed");
    assert_eq!(before.wait, Duration::ZERO, "{before:?}");
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        store.copy("src/data", "present/data", None),
    )
    .await
    .expect("the first write passes at once");
    assert_eq!(outcome.expect("copy"), CopyOutcome::AlreadyPresent);
    // The copy took the slot: the next write waits its interval (1,000 s, read as the longest
    // wait the governor reports).
    let after = governor
        .peek(Budget::Write)
        .await
        .expect("peek")
        .expect("governed");
    assert!(
        after.wait >= Duration::from_secs(59),
        "a copy of a present destination took no slot: {after:?}"
    );
}
