-- lexview store, migration 7: `records` and `links` rebuilt with the
-- compression of their string columns named, and `links` without
-- `target_did` (no query read it: the DID of a target is its own prefix).
--
-- At every checkpoint DuckDB otherwise analyses each column with every
-- method (dictionary, FSST, uncompressed, ...) before compressing it with the
-- best; here the choice is the one it made on the 5M-record load store
-- (URIs, keys, revisions and record JSON: FSST; CIDs, random base32:
-- uncompressed; collections and paths: dictionary), so the writer skips
-- the analysis. With the dropped column, ingest of the generated
-- million events went from ~113k to ~124k events/s (README, Benchmarks).
-- DuckDB stores a segment uncompressed where the named method cannot. Left
-- to DuckDB: DIDs (dictionary or FSST by how many authors a segment holds)
-- and the times.
--
-- On an existing store this copies both tables and rebuilds their indexes:
-- minutes for millions of records.
CREATE TABLE records_v7 (
    uri         VARCHAR   NOT NULL USING COMPRESSION fsst,
    did         VARCHAR   NOT NULL,
    collection  VARCHAR   NOT NULL USING COMPRESSION dictionary,
    rkey        VARCHAR   NOT NULL USING COMPRESSION fsst,
    cid         VARCHAR   NOT NULL USING COMPRESSION uncompressed,
    rev         VARCHAR   NOT NULL USING COMPRESSION fsst,
    record      JSON      NOT NULL USING COMPRESSION fsst,
    created_at  VARCHAR,
    indexed_at  TIMESTAMP NOT NULL
);
INSERT INTO records_v7
    SELECT uri, did, collection, rkey, cid, rev, record, created_at, indexed_at FROM records;
DROP TABLE records;
ALTER TABLE records_v7 RENAME TO records;

CREATE TABLE links_v7 (
    source_uri        VARCHAR NOT NULL USING COMPRESSION fsst,
    source_did        VARCHAR NOT NULL,
    source_collection VARCHAR NOT NULL USING COMPRESSION dictionary,
    path              VARCHAR NOT NULL USING COMPRESSION dictionary,
    target            VARCHAR NOT NULL USING COMPRESSION fsst
);
INSERT INTO links_v7
    SELECT source_uri, source_did, source_collection, path, target FROM links;
DROP TABLE links;
ALTER TABLE links_v7 RENAME TO links;

-- Hidden rows move to and from `links` with `SELECT *`: same columns.
CREATE TABLE hidden_links_v7 AS
    SELECT source_uri, source_did, source_collection, path, target FROM hidden_links;
DROP TABLE hidden_links;
ALTER TABLE hidden_links_v7 RENAME TO hidden_links;

-- The indexes of migration 6 went with the old tables.
CREATE INDEX records_uri ON records (uri);
CREATE INDEX records_did ON records (did);
CREATE INDEX links_target ON links (target);
