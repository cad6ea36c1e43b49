-- lexview store, migration 3: repositories indexed by `lexview backfill`, at
-- which rev, committed with their records so a killed backfill resumes.
CREATE TABLE backfill_repos (
    did     VARCHAR PRIMARY KEY,
    rev     VARCHAR NOT NULL,   -- empty for a legacy (v2) repository
    done_at TIMESTAMP NOT NULL
);
