-- The project repair scan (part 1): for every project, how many repositories the registry has
-- under it that container_repositories lacks.

CREATE TABLE container_registry_data_repair_details (
    project_id    bigint      PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    missing_count integer     NOT NULL DEFAULT 0 CHECK (missing_count >= 0),
    -- ongoing: claimed by a scan worker; completed: analyzed; failed: the analysis failed.
    status        text        NOT NULL DEFAULT 'ongoing'
        CHECK (status IN ('ongoing', 'completed', 'failed')),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Stale claims, returned to the scan.
CREATE INDEX container_registry_data_repair_details_ongoing_idx
    ON container_registry_data_repair_details (updated_at) WHERE status = 'ongoing';
-- Repair part 2's filter.
CREATE INDEX container_registry_data_repair_details_missing_idx
    ON container_registry_data_repair_details (project_id) WHERE missing_count > 0;

-- The scan in progress, one row: the current pass and the scanning replica's last report.
CREATE TABLE repair_scan_state (
    id                  boolean          PRIMARY KEY DEFAULT true CHECK (id),
    -- When the pass in progress started; NULL when none is.
    pass_started_at     timestamptz,
    -- Projects analyzed and repositories found missing in the pass in progress.
    pass_projects       bigint           NOT NULL DEFAULT 0,
    pass_missing        bigint           NOT NULL DEFAULT 0,
    -- The scanning replica, its rate, and when it last reported.
    scanner             text,
    projects_per_second double precision NOT NULL DEFAULT 0,
    reported_at         timestamptz
);
INSERT INTO repair_scan_state DEFAULT VALUES;

ALTER TABLE migration_settings
    -- The scan's feature flag.
    ADD COLUMN repair_enabled boolean NOT NULL DEFAULT false,
    -- Scan workers at once; 0 = off.
    ADD COLUMN repair_max_concurrency integer NOT NULL DEFAULT 2
        CHECK (repair_max_concurrency >= 0),
    -- An ongoing analysis older than this goes back to the scan.
    ADD COLUMN repair_stale_after_secs integer NOT NULL DEFAULT 7200
        CHECK (repair_stale_after_secs > 0);
