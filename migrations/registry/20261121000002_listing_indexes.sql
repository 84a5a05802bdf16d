-- Listing for the repair scan (ListSubRepositories: path prefix ranges in byte order) and the
-- dropped-create-events double-check (ListRepositoriesCreatedSince: keyset by creation time).
CREATE INDEX repositories_path_c_idx ON repositories (path COLLATE "C");
CREATE INDEX repositories_created_at_id_idx ON repositories (created_at, id);
