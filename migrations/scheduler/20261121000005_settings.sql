-- The rest of the original's settings, changeable at run time (UpdateSettings, ferryctl settings).
ALTER TABLE migration_settings
    -- Skip a repository with more tags than this (too_many_tags); 0 = no limit.
    ADD COLUMN max_tags_count integer NOT NULL DEFAULT 100 CHECK (max_tags_count >= 0),
    -- Attempts to start a step while every importer is busy, before aborting it.
    ADD COLUMN start_max_retries integer NOT NULL DEFAULT 50 CHECK (start_max_retries >= 0),
    -- Seconds per tag: a pre-import past pre_import_timeout may run tags × rate before the guard
    -- cancels it.
    ADD COLUMN pre_import_tags_rate double precision NOT NULL DEFAULT 0.5 CHECK (pre_import_tags_rate >= 0),
    -- Seconds to wait after a step ends before starting the next repository; 0 = no wait.
    ADD COLUMN enqueue_waiting_time_secs integer NOT NULL DEFAULT 0 CHECK (enqueue_waiting_time_secs >= 0),
    -- Only repositories registered before this are migrated; NULL = all.
    ADD COLUMN created_before timestamptz,
    -- Only repositories whose plan is one of these are migrated (no plan counts as 'free');
    -- NULL = all plans.
    ADD COLUMN target_plans text[],
    -- Root namespaces (first path segment) never migrated.
    ADD COLUMN deny_root_namespaces text[] NOT NULL DEFAULT '{}';

ALTER TABLE container_repositories
    -- Tags counted when the pre-import started (for too_many_tags and the dynamic timeout).
    ADD COLUMN migration_tags_count integer;
