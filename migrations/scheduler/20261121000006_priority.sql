-- StartMigrationNow: a prioritized repository is taken before the others.
ALTER TABLE container_repositories ADD COLUMN migration_priority integer NOT NULL DEFAULT 0;
CREATE INDEX container_repositories_ready_idx
    ON container_repositories (migration_state, migration_priority DESC, path);
