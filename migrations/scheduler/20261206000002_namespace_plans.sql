-- The plan of each root namespace, the source of the `target_plans` setting (the original read
-- the plan of a repository's root namespace). Loaded with `ferryctl plans`; a namespace without
-- an entry is on `free`. It replaces `container_repositories.migration_plan`, which nothing wrote.
CREATE TABLE namespace_plans (
    namespace  text        PRIMARY KEY CHECK (char_length(namespace) BETWEEN 1 AND 255 AND position('/' IN namespace) = 0),
    plan       text        NOT NULL CHECK (char_length(plan) BETWEEN 1 AND 255),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE container_repositories DROP COLUMN migration_plan;
