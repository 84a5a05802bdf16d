-- The guard: which importer runs each step, and the original's step time limits as settings.
ALTER TABLE container_repositories
    -- The importer endpoint the current (or last) step was started on.
    ADD COLUMN migration_importer text;

ALTER TABLE migration_settings
    -- A step older than this is checked with its importer (seconds).
    ADD COLUMN max_step_duration_secs integer NOT NULL DEFAULT 300 CHECK (max_step_duration_secs > 0),
    -- A pre-import still running after this long is canceled (seconds).
    ADD COLUMN pre_import_timeout_secs integer NOT NULL DEFAULT 1800 CHECK (pre_import_timeout_secs > 0),
    -- A final import still running after this long is canceled (seconds).
    ADD COLUMN import_timeout_secs integer NOT NULL DEFAULT 600 CHECK (import_timeout_secs > 0);
