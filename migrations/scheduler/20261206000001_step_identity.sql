-- Step identity. Every claim of a step (a pre-import, a final import, a retry) numbers it with
-- the repository's next step; the start, the importer's record of it, its end, its cancel and the
-- guard's decisions all name that number, and every write here is a compare-and-set on it. A
-- message about an older step (a late notification, a start that hung on a frozen importer, a
-- guard decision that lost a race) therefore changes nothing.
ALTER TABLE container_repositories
    ADD COLUMN migration_step bigint NOT NULL DEFAULT 0 CHECK (migration_step >= 0),
    -- An operator's cancel in flight: set (naming its skip reason) before the importer is asked,
    -- so that no new step is claimed meanwhile and the step's own failed or canceled end skips
    -- the repository instead of queueing a retry. Cleared by every end.
    ADD COLUMN migration_cancel_requested text CHECK (migration_cancel_requested IN (
        'migration_canceled', 'migration_forced_canceled'));

-- A step handed back by an importer's graceful shutdown is aborted without counting a retry, so
-- an aborted repository may have no retries counted.
ALTER TABLE container_repositories DROP CONSTRAINT container_repositories_check;
ALTER TABLE container_repositories ADD CONSTRAINT container_repositories_aborted_check
    CHECK (migration_state <> 'import_aborted' OR migration_aborted_at IS NOT NULL);
