-- What the importer skipped as the registry did: tagged manifests (no revision link, schema 1,
-- unlinked config) and layers not linked to the repository. Reported per step; the largest step's
-- figure is kept.
ALTER TABLE container_repositories
    ADD COLUMN import_manifests_skipped bigint NOT NULL DEFAULT 0,
    ADD COLUMN import_layers_skipped    bigint NOT NULL DEFAULT 0;
