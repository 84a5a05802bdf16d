//! A seeded schedule of faults, played against a [`Deployment`]: the same seed draws the same
//! faults, targets and delays, so a failing schedule can be replayed (the machine's timing still
//! varies, as it would in production).

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use ferry_proto::scheduler::v1::{CancelMigrationRequest, SetMigrationEnabledRequest};

use super::deployment::{Deployment, IMPORTERS, LEASE_TTL, SCHEDULERS};

/// The kinds of fault a schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 of a scheduler replica, started again a moment later.
    KillScheduler,
    /// SIGSTOP of a scheduler replica past the lease TTL, then SIGCONT.
    FreezeScheduler,
    /// kill -9 of an importer, started again a moment later.
    KillImporter,
    /// SIGSTOP of an importer for a few seconds (past the guard's step age), then SIGCONT.
    FreezeImporter,
    /// SIGTERM of an importer (a scale-down or rollout), started again later (a scale-up).
    ScaleImporter,
    /// Redis killed and started again empty.
    RestartRedis,
    /// Every PostgreSQL backend of the deployment terminated.
    TerminateBackends,
    /// An operator's cancel of a random repository.
    Cancel,
    /// An operator's forced cancel of a random repository.
    ForceCancel,
    /// The migration paused, then resumed.
    PauseResume,
}

impl Fault {
    const ALL: [Fault; 10] = [
        Fault::KillScheduler,
        Fault::FreezeScheduler,
        Fault::KillImporter,
        Fault::FreezeImporter,
        Fault::ScaleImporter,
        Fault::RestartRedis,
        Fault::TerminateBackends,
        Fault::Cancel,
        Fault::ForceCancel,
        Fault::PauseResume,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillScheduler => "kill -9 scheduler",
            Fault::FreezeScheduler => "SIGSTOP scheduler past the lease TTL",
            Fault::KillImporter => "kill -9 importer",
            Fault::FreezeImporter => "SIGSTOP importer",
            Fault::ScaleImporter => "importer scaled down (SIGTERM) and up",
            Fault::RestartRedis => "Redis killed, restarted empty",
            Fault::TerminateBackends => "PostgreSQL backends terminated",
            Fault::Cancel => "cancel",
            Fault::ForceCancel => "forced cancel",
            Fault::PauseResume => "pause and resume",
        }
    }
}

/// What undoes a fault later: a process to start or continue, Redis to start, the switch.
#[derive(Debug, Clone, Copy)]
enum Undo {
    StartScheduler(usize),
    ThawScheduler(usize),
    StartImporter(usize),
    ThawImporter(usize),
    StartRedis,
    Resume,
}

/// Plays a schedule: one fault every 0.2–1 s for `window`, or until the migration has no work
/// left, each undone after its own delay, then everything undone. Returns the faults by kind.
pub async fn play(
    deployment: &mut Deployment,
    seed: u64,
    window: Duration,
    paths: &[String],
) -> BTreeMap<Fault, u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = BTreeMap::new();
    let mut undos: Vec<(Instant, Undo)> = Vec::new();
    let end = Instant::now() + window;
    let mut next = Instant::now() + between(&mut rng, 200, 1000);
    let scheduler = sqlx::PgPool::connect(&deployment.database)
        .await
        .expect("scheduler database");
    let mut checked = Instant::now();
    while Instant::now() < end {
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            if !work_left(&scheduler).await {
                break;
            }
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = undos.into_iter().partition(|(at, _)| *at <= now);
        undos = later;
        for (_, undo) in due {
            apply_undo(deployment, undo).await;
        }
        if now >= next {
            let fault = Fault::ALL[rng.random_range(0..Fault::ALL.len())];
            if let Some(undo) = inject(deployment, fault, &mut rng, paths).await {
                undos.extend(undo);
                *tally.entry(fault).or_insert(0) += 1;
            }
            next = now + between(&mut rng, 200, 1000);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    undos.sort_by_key(|(at, _)| *at);
    for (_, undo) in undos {
        apply_undo(deployment, undo).await;
    }
    tally
}

/// After the faults: every process running (one that exited by itself is started again, and
/// named in the returned list), Redis up, and the switch on, retried until a scheduler takes it.
pub async fn restore(deployment: &mut Deployment) -> Vec<String> {
    let mut exited = Vec::new();
    if !deployment.redis.is_running() {
        deployment.redis.restart();
    }
    for i in 0..IMPORTERS {
        let service = &mut deployment.importers[i];
        thaw(service);
        if !service.process.as_mut().is_some_and(|p| p.is_running()) {
            if service.process.is_some() {
                exited.push(service.name.clone());
            }
            deployment.start_importer(i);
        }
    }
    for i in 0..SCHEDULERS {
        let service = &mut deployment.schedulers[i];
        thaw(service);
        if !service.process.as_mut().is_some_and(|p| p.is_running()) {
            if service.process.is_some() {
                exited.push(service.name.clone());
            }
            deployment.start_scheduler(i);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut client = deployment.client().await;
        let resume = SetMigrationEnabledRequest {
            enabled: true,
            capacity: None,
        };
        match client.set_migration_enabled(resume).await {
            Ok(_) => break,
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "the migration could not be switched back on: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    exited
}

/// The repositories with a step in process now, by path.
async fn in_process(deployment: &Deployment) -> Vec<String> {
    let Ok(scheduler) = sqlx::PgPool::connect(&deployment.database).await else {
        return Vec::new();
    };
    let paths = sqlx::query_scalar(
        "SELECT path FROM container_repositories WHERE migration_state = ANY($1) ORDER BY path",
    )
    .bind(&ferry_scheduler::state::MigrationState::IN_PROCESS[..])
    .fetch_all(&scheduler)
    .await
    .unwrap_or_default();
    scheduler.close().await;
    paths
}

/// Whether any repository has migration work ahead (true when the database cannot say).
async fn work_left(scheduler: &sqlx::PgPool) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM container_repositories WHERE migration_state = ANY($1))",
    )
    .bind(&ferry_scheduler::state::MigrationState::PENDING[..])
    .fetch_one(scheduler)
    .await
    .unwrap_or(true)
}

fn between(rng: &mut StdRng, low_ms: u64, high_ms: u64) -> Duration {
    Duration::from_millis(rng.random_range(low_ms..=high_ms))
}

/// Injects `fault` if its target is in a state to take it (`None` otherwise); returns when and
/// how to undo it, if it needs undoing.
async fn inject(
    deployment: &mut Deployment,
    fault: Fault,
    rng: &mut StdRng,
    paths: &[String],
) -> Option<Option<(Instant, Undo)>> {
    let now = Instant::now();
    let scheduler = rng.random_range(0..SCHEDULERS);
    let importer = rng.random_range(0..IMPORTERS);
    match fault {
        Fault::KillScheduler | Fault::FreezeScheduler => {
            // One replica always stays: the other may be down already.
            let other = &deployment.schedulers[1 - scheduler];
            if other.process.is_none() || other.frozen {
                return None;
            }
            let service = &mut deployment.schedulers[scheduler];
            let process = service.process.as_ref().filter(|_| !service.frozen)?;
            if fault == Fault::KillScheduler {
                process.signal("KILL");
                service.process = None;
                Some(Some((
                    now + between(rng, 500, 3000),
                    Undo::StartScheduler(scheduler),
                )))
            } else {
                process.signal("STOP");
                service.frozen = true;
                let past_ttl = LEASE_TTL + between(rng, 200, 2000);
                Some(Some((now + past_ttl, Undo::ThawScheduler(scheduler))))
            }
        }
        Fault::KillImporter | Fault::FreezeImporter | Fault::ScaleImporter => {
            let service = &mut deployment.importers[importer];
            let process = service.process.as_mut().filter(|_| !service.frozen)?;
            match fault {
                Fault::KillImporter => {
                    process.signal("KILL");
                    service.process = None;
                    Some(Some((
                        now + between(rng, 500, 3000),
                        Undo::StartImporter(importer),
                    )))
                }
                Fault::FreezeImporter => {
                    process.signal("STOP");
                    service.frozen = true;
                    Some(Some((
                        now + between(rng, 1000, 5000),
                        Undo::ThawImporter(importer),
                    )))
                }
                _ => {
                    // It drains (up to its 5 s grace) while faults go on; started again later,
                    // killed first if it is still draining then.
                    process.signal("TERM");
                    Some(Some((
                        now + between(rng, 3000, 8000),
                        Undo::StartImporter(importer),
                    )))
                }
            }
        }
        Fault::RestartRedis => {
            if !deployment.redis.is_running() {
                return None;
            }
            deployment.redis.kill();
            Some(Some((now + between(rng, 200, 2000), Undo::StartRedis)))
        }
        Fault::TerminateBackends => {
            terminate_backends(deployment).await;
            Some(None)
        }
        Fault::Cancel | Fault::ForceCancel => {
            // Half of the cancels aim at a step in flight, where they race its end.
            let in_flight = if rng.random_bool(0.5) {
                in_process(deployment).await
            } else {
                Vec::new()
            };
            let path = if in_flight.is_empty() {
                paths[rng.random_range(0..paths.len())].clone()
            } else {
                in_flight[rng.random_range(0..in_flight.len())].clone()
            };
            let mut client = deployment.client().await;
            let request = CancelMigrationRequest {
                path,
                force: fault == Fault::ForceCancel,
            };
            // Refusals (done already, nothing to cancel, an importer out of reach) are answers.
            let _ = client.cancel_migration(request).await;
            Some(None)
        }
        Fault::PauseResume => {
            let mut client = deployment.client().await;
            let pause = SetMigrationEnabledRequest {
                enabled: false,
                capacity: None,
            };
            client.set_migration_enabled(pause).await.ok()?;
            Some(Some((now + between(rng, 500, 3000), Undo::Resume)))
        }
    }
}

async fn apply_undo(deployment: &mut Deployment, undo: Undo) {
    match undo {
        Undo::StartScheduler(i) => deployment.start_scheduler(i),
        Undo::StartImporter(i) => deployment.start_importer(i),
        Undo::ThawScheduler(i) => thaw(&mut deployment.schedulers[i]),
        Undo::ThawImporter(i) => thaw(&mut deployment.importers[i]),
        Undo::StartRedis => deployment.redis.restart(),
        Undo::Resume => {
            let mut client = deployment.client().await;
            let resume = SetMigrationEnabledRequest {
                enabled: true,
                capacity: None,
            };
            let _ = client.set_migration_enabled(resume).await;
        }
    }
}

fn thaw(service: &mut super::deployment::Service) {
    if let Some(process) = service.process.as_ref().filter(|_| service.frozen) {
        process.signal("CONT");
    }
    service.frozen = false;
}

async fn terminate_backends(deployment: &Deployment) {
    let Ok(admin) = sqlx::PgPool::connect(&deployment.database).await else {
        return;
    };
    for database in [&deployment.database, &deployment.metadata] {
        let name = database.rsplit('/').next().unwrap_or_default();
        let _ = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&admin)
        .await;
    }
    admin.close().await;
}
