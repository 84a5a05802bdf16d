-- Step identity: the scheduler's number of the step that last claimed the repository (see the
-- scheduler's migration of the same name). A start is accepted only with a higher number than
-- this, and a step's end, failure and cancel apply only while it still names that step, so a
-- stale step can never commit or overwrite a newer step's status.
ALTER TABLE repositories ADD COLUMN migration_step bigint NOT NULL DEFAULT 0 CHECK (migration_step >= 0);
