-- OCI artifacts: the manifest's `artifactType` (NULL for images and indexes without one).
ALTER TABLE manifests ADD COLUMN artifact_type text;
