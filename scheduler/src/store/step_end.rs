//! A step's end as an importer reports it, and, when the lease holder applies it, the claim of
//! the freed slot's next step in the same statement.
//!
//! The original finished a pre-import and started the final import in one breath
//! (`finish_pre_import_and_start_import`), and refilled a freed slot only on the enqueue loop's
//! next pass. Here the lease holder does both in the end's own statement: a finished pre-import
//! moves straight on to `importing` (its slot stays taken), and a finished final import hands its
//! slot to the next ready repository. Nothing waits for a pass, and a slot is never seen free
//! while ready repositories wait.
//!
//! A hand-over never adds to what is in process, so it needs no count against concurrent claims:
//! it runs only when what is in process (one step of it ending now) fits the capacity. The
//! enqueue loop's own claims still count; a hand-over committed meanwhile both freed a slot and
//! took it. It is skipped, and left to the loop, when aborted repositories wait (they go first
//! and need their importer asked), when the settings make new repositories wait after a step
//! ends, or when the migration is disabled.

use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;

use ferry_proto::common::v1::ImportStats;
use ferry_shared::step::{MaybeStep, Step};

use super::{Claimed, EndedStep, FENCE_HOLDS, NO_CANCEL_IN_FLIGHT, SchedulerStore, admin, fenced};
use crate::state::MigrationState;

/// The figures a step adds to its repository (parameters `$4` to `$13`).
const ADD_STATS: &str = "migration_last_error = NULL, \
     import_manifests = r.import_manifests + $4, import_tags = r.import_tags + $5, \
     import_blobs = GREATEST(r.import_blobs, $6), import_blobs_copied = r.import_blobs_copied + $7, \
     import_bytes_copied = r.import_bytes_copied + $8, import_blobs_present = r.import_blobs_present + $9, \
     import_tags_skipped = GREATEST(r.import_tags_skipped, $10), import_duration_ms = r.import_duration_ms + $11, \
     import_manifests_skipped = GREATEST(r.import_manifests_skipped, $12), \
     import_layers_skipped = GREATEST(r.import_layers_skipped, $13)";

/// Which pass of the migration the ended step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Pre,
    Final,
}

impl Pass {
    /// The state the step ends from, the state it ends in, and the column its end is stamped in.
    fn columns(self) -> (MigrationState, MigrationState, &'static str) {
        match self {
            Pass::Pre => (
                MigrationState::PreImporting,
                MigrationState::PreImportDone,
                "migration_pre_import_done_at",
            ),
            Pass::Final => (
                MigrationState::Importing,
                MigrationState::ImportDone,
                "migration_import_done_at",
            ),
        }
    }
}

/// How an end is applied: fenced or not, and whether the lease holder claims the next step.
#[derive(Debug, Clone, Copy)]
pub(super) enum Apply {
    /// Only the end; fenced by the token when there is one (the guard's reconciliation).
    EndOnly(Option<u64>),
    /// The end, whoever reports it, and the next step claimed under the lease holder's token.
    HandOver(u64),
}

fn bind_stats<'q>(
    query: Query<'q, sqlx::Postgres, PgArguments>,
    stats: &ImportStats,
) -> Query<'q, sqlx::Postgres, PgArguments> {
    use super::to_i64;
    query
        .bind(to_i64(stats.manifests))
        .bind(to_i64(stats.tags))
        .bind(to_i64(stats.blobs))
        .bind(to_i64(stats.blobs_copied))
        .bind(to_i64(stats.bytes_copied))
        .bind(to_i64(stats.blobs_present))
        .bind(to_i64(stats.tags_skipped))
        .bind(to_i64(stats.duration_ms))
        .bind(to_i64(stats.manifests_skipped))
        .bind(to_i64(stats.layers_skipped))
}

/// Only the end (`$14`: its fencing token; `$15`: the step). A final import's end settles a
/// cancel requested meanwhile (the completion won); a pre-import's leaves it for the cancel to
/// finish.
fn end_only(pass: Pass) -> String {
    let (_, _, done_column) = pass.columns();
    let (with, check) = fenced(14);
    let settle_cancel = match pass {
        Pass::Pre => "",
        Pass::Final => "migration_cancel_requested = NULL, ",
    };
    format!(
        "{with}UPDATE container_repositories r SET migration_state = $3, {done_column} = now(), \
             {settle_cancel}updated_at = now(), {ADD_STATS} \
         WHERE r.path = $1 AND r.migration_state = $2 AND r.migration_step = $15 {check} \
         RETURNING r.migration_importer AS importer, r.migration_state, NULL::bigint AS next_id, \
             NULL::text AS next_path, NULL::bigint AS next_step"
    )
}

/// A pre-import's end (`$15`: its step) that moves on to its final import, numbered next, when
/// the holder's token (`$14`) holds, the migration is enabled and no cancel is requested. The
/// importer that ran the pre-import is read from the row as it was; the final import's own is
/// recorded once an importer accepts it.
fn pre_import_handed_over() -> String {
    let (with, _) = fenced(14);
    let holds = FENCE_HOLDS;
    // Whether it moves on: read from the row as the update finds it, so that a cancel requested
    // while the statement waited for the row is seen.
    let on = format!("go.ok AND {NO_CANCEL_IN_FLIGHT}");
    format!(
        "{with}UPDATE container_repositories r SET \
             migration_state = CASE WHEN {on} THEN 'importing' ELSE $3 END, \
             migration_step = CASE WHEN {on} THEN r.migration_step + 1 ELSE r.migration_step END, \
             migration_pre_import_done_at = now(), \
             migration_import_started_at = CASE WHEN {on} THEN now() ELSE r.migration_import_started_at END, \
             migration_import_done_at = CASE WHEN {on} THEN NULL ELSE r.migration_import_done_at END, \
             migration_importer = CASE WHEN {on} THEN NULL ELSE r.migration_importer END, \
             migration_step_accepted_at = CASE WHEN {on} THEN NULL ELSE r.migration_step_accepted_at END, \
             updated_at = now(), {ADD_STATS} \
         FROM (SELECT {holds} AND s.enabled AS ok FROM migration_settings s) go, container_repositories was \
         WHERE r.path = $1 AND r.migration_state = $2 AND r.migration_step = $15 AND was.id = r.id \
         RETURNING was.migration_importer AS importer, r.migration_state, \
             CASE WHEN r.migration_state = 'importing' THEN r.id END AS next_id, \
             CASE WHEN r.migration_state = 'importing' THEN r.path END AS next_path, \
             CASE WHEN r.migration_state = 'importing' THEN r.migration_step END AS next_step"
    )
}

/// A final import's end (`$15`: its step) that hands its slot to the next ready repository when
/// the holder's token (`$14`) holds (see the module's notes for when it does not).
fn final_import_handed_over() -> String {
    let (with, _) = fenced(14);
    let holds = FENCE_HOLDS;
    let ready = admin::ready();
    // The states as literals, not a parameter: with a parameter PostgreSQL's generic plan cannot
    // see that the count reads a few index entries, costs it as a scan of the table, and so
    // plans the statement afresh on every call (0.7 ms a call).
    let in_process = MigrationState::IN_PROCESS
        .map(|state| format!("'{state}'"))
        .join(", ");
    format!(
        "{with}, ended AS (UPDATE container_repositories r SET migration_state = $3, \
                 migration_import_done_at = now(), migration_cancel_requested = NULL, updated_at = now(), {ADD_STATS} \
             WHERE r.path = $1 AND r.migration_state = $2 AND r.migration_step = $15 \
             RETURNING r.migration_importer, r.migration_state), \
         next AS (UPDATE container_repositories SET migration_state = 'pre_importing', migration_priority = 0, \
                 migration_pre_import_started_at = now(), migration_pre_import_done_at = NULL, \
                 migration_importer = NULL, migration_step_accepted_at = NULL, \
                 migration_step = migration_step + 1, updated_at = now() \
             WHERE id = (SELECT r.id FROM container_repositories r, migration_settings s \
                         WHERE {ready} AND s.enabled AND s.enqueue_waiting_time_secs = 0 \
                           AND EXISTS (SELECT 1 FROM ended) AND {holds} \
                           AND NOT EXISTS (SELECT 1 FROM container_repositories WHERE migration_state = 'import_aborted') \
                           AND (SELECT count(*) FROM container_repositories WHERE migration_state IN ({in_process})) <= s.capacity \
                         ORDER BY r.migration_priority DESC, r.path LIMIT 1 FOR UPDATE OF r SKIP LOCKED) \
               AND migration_state = 'default' \
             RETURNING id, path, migration_step) \
         SELECT ended.migration_importer AS importer, ended.migration_state, next.id AS next_id, \
             next.path AS next_path, next.migration_step AS next_step \
         FROM ended LEFT JOIN next ON true"
    )
}

impl SchedulerStore {
    /// Applies the end of step `step` (a `pass` in its ending state only) as `apply` says;
    /// `None` if the repository was not in that step (a duplicate or stale notification).
    pub(super) async fn end_step(
        &self,
        path: &str,
        step: Option<Step>,
        pass: Pass,
        stats: &ImportStats,
        apply: Apply,
    ) -> Result<Option<EndedStep>, sqlx::Error> {
        let (from, to, _) = pass.columns();
        let (sql, fence) = match (apply, pass) {
            (Apply::EndOnly(fence), _) => (end_only(pass), fence),
            (Apply::HandOver(fence), Pass::Pre) => (pre_import_handed_over(), Some(fence)),
            (Apply::HandOver(fence), Pass::Final) => (final_import_handed_over(), Some(fence)),
        };
        let query = bind_stats(sqlx::query(&sql).bind(path).bind(from).bind(to), stats)
            .bind(super::fence_param(fence))
            .bind(step.db());
        let row = query.fetch_optional(&self.pool).await?;
        Ok(row.map(|row| ended_step(&row)))
    }
}

/// An end as a statement returned it (`importer`, `migration_state`, `next_id`, `next_path`,
/// `next_step`).
pub(super) fn ended_step(row: &PgRow) -> EndedStep {
    let next = match (
        row.get("next_id"),
        row.get("next_path"),
        row.get::<Option<i64>, _>("next_step")
            .and_then(Step::from_db),
    ) {
        (Some(id), Some(path), Some(step)) => Some(Claimed { id, path, step }),
        _ => None,
    };
    EndedStep {
        importer: row.get("importer"),
        migration_state: row.get("migration_state"),
        next,
    }
}
