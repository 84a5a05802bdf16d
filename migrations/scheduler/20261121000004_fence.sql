-- The highest fencing token any enqueue-lease holder has written with. Every write a holder makes
-- updates it in the same statement, only if its token is not older; a holder whose lease was
-- taken over (paused past its TTL, then resumed) therefore cannot change anything.
CREATE TABLE scheduler_fence (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    fence      bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO scheduler_fence DEFAULT VALUES;
