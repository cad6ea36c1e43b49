-- lexview store, migration 4: repositories waiting for a resync from their
-- PDS (`getRepo`), after a `#sync` event, a broken commit chain or a
-- reactivation. A row is written with the event that asked for it and
-- removed in the transaction that applies the repository's snapshot, so a
-- restart resumes every resync that had not finished.
CREATE TABLE resyncs (
    did          VARCHAR PRIMARY KEY,
    reason       VARCHAR NOT NULL,
    requested_at TIMESTAMP NOT NULL
);
