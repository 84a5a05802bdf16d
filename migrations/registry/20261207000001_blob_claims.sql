-- Claims on copies under `gitlab/` that a step found there already and is about to register
-- (`ferryctl gc`, docs/operations.md "Removing abandoned copies"). A step that finds a blob's
-- destination present while the blob is not registered as copied writes its claim here, in a
-- short transaction of its own under the shared form of the blob's advisory lock, then looks at
-- the object again. `ferryctl gc` removes an unregistered copy only in a transaction that holds
-- the exclusive form of the same lock and finds no claim younger than its window, so a copy is
-- never removed between a step's reliance on it and the registration that protects it for good.
-- Claims older than the window protect nothing any more (every step ends within it) and gc drops
-- them.
CREATE TABLE blob_claims (
    digest     text        PRIMARY KEY,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
