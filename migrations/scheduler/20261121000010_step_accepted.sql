-- When the importer recorded in `migration_importer` accepted the current step. Both are cleared
-- when a step is claimed, so a claimed step without them has not been accepted yet; the time from
-- `migration_pre_import_done_at` to this column, for a final import, is the dispatch latency.
ALTER TABLE container_repositories ADD COLUMN migration_step_accepted_at timestamptz;
