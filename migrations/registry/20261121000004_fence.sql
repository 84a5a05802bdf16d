-- The highest scheduler fencing token a step of the repository was started with; a start with a
-- lower token comes from a scheduler whose lease was taken over and is refused.
ALTER TABLE repositories ADD COLUMN migration_fence bigint NOT NULL DEFAULT 0;
