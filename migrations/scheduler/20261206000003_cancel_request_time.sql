-- When an operator's cancel was recorded. A cancel holds back new claims only while it is in
-- flight: one older than a minute was left by a replica that stopped mid-cancel, and no longer
-- holds anything back.
ALTER TABLE container_repositories ADD COLUMN migration_cancel_requested_at timestamptz;
