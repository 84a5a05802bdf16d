-- Two records that spare a migration requests to the bucket.
--
-- `blobs.copied`: the blob was copied under `gitlab/` before it was registered (false for
-- foreign layers, which are registered but never copied, and for rows registered before this
-- column existed). A step skips the copy of a blob registered with `copied` set: a shared base
-- layer is copied once, not once per repository. A blob first registered as foreign keeps
-- `false`, and later steps copy it (the bucket refuses a second copy), which costs a request
-- and never a missing copy.
ALTER TABLE blobs ADD COLUMN copied boolean NOT NULL DEFAULT false;

-- The tag links a pre-import read, each with the version (GCS generation) of the `current/link`
-- it was read at. The final import takes a tag's digest from here while the listing shows the
-- same version, rather than reading the link again. Rows live from the pre-import's commit to
-- the final import's.
CREATE TABLE source_tag_links (
    repository_id bigint NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    tag           text   NOT NULL,
    digest        text   NOT NULL,
    link_version  text   NOT NULL,
    PRIMARY KEY (repository_id, tag)
);
