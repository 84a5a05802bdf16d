-- The last verification of a migrated repository (`ferryctl verify`): when, how it came out, how
-- many differences it found and the first of them (or why it failed), in words. Recorded only
-- while the repository is still import_done at the step that was verified.
ALTER TABLE container_repositories
    ADD COLUMN verified_at        timestamptz,
    ADD COLUMN verify_outcome     text   CHECK (verify_outcome IN ('match', 'differs', 'failed')),
    ADD COLUMN verify_differences bigint NOT NULL DEFAULT 0 CHECK (verify_differences >= 0),
    ADD COLUMN verify_detail      text   CHECK (char_length(verify_detail) <= 1024),
    ADD CONSTRAINT container_repositories_verified_check
        CHECK ((verified_at IS NULL) = (verify_outcome IS NULL));

-- `ferryctl verify --all` pages through the migrated repositories by path.
CREATE INDEX container_repositories_done_path_idx ON container_repositories (path)
    WHERE migration_state = 'import_done';
