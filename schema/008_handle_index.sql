-- lexview store, migration 8: an index on lowercased handles, so that a
-- handle given for an account (`actor=`, `repo=`, GraphQL's `author`) is
-- resolved by the index instead of a scan of `actors`, which grows by one
-- row per DID that sends an #identity or #account event: 46 ms per lookup
-- with 2M actors before, in the order of a millisecond with the index.
-- Lookups filter on `lower(handle) = ...`, the indexed expression.
CREATE INDEX actors_handle ON actors (lower(handle));
