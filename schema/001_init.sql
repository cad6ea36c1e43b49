-- lexview store, migration 1: records, the generic backlink index, counts,
-- actors, per-source cursors and the quarantine of invalid records.
-- Everything here is derived from repositories and can be rebuilt.

-- One row per indexed (valid) record, the latest version only.
CREATE TABLE records (
    uri         VARCHAR   NOT NULL,  -- at://did/collection/rkey
    did         VARCHAR   NOT NULL,
    collection  VARCHAR   NOT NULL,
    rkey        VARCHAR   NOT NULL,
    cid         VARCHAR   NOT NULL,  -- CID of the record block
    rev         VARCHAR   NOT NULL,  -- repo revision (TID) of the commit that wrote it
    record      JSON      NOT NULL,  -- the record in the data model's JSON form
    created_at  VARCHAR,             -- the record's own createdAt, when it has one
    indexed_at  TIMESTAMP NOT NULL
);

-- The generic backlink index: every AT-URI or DID found anywhere in a record,
-- with its JSON path (.subject.uri, .reply.parent.uri, .subject, .facets[].features[].did).
CREATE TABLE links (
    source_uri        VARCHAR NOT NULL,
    source_did        VARCHAR NOT NULL,
    source_collection VARCHAR NOT NULL,
    path              VARCHAR NOT NULL,
    target            VARCHAR NOT NULL,  -- an at:// URI or a DID
    target_did        VARCHAR NOT NULL   -- the DID the target belongs to
);

-- Materialised counts of links by (target, source collection, path), kept
-- exact by the writer through updates and deletes.
CREATE TABLE link_counts (
    target     VARCHAR NOT NULL,
    collection VARCHAR NOT NULL,
    path       VARCHAR NOT NULL,
    n          BIGINT  NOT NULL,
    PRIMARY KEY (target, collection, path)
);

-- Identity and hosting state of every DID seen.
CREATE TABLE actors (
    did        VARCHAR PRIMARY KEY,
    handle     VARCHAR,
    active     BOOLEAN NOT NULL DEFAULT true,
    status     VARCHAR,             -- null when active; deactivated, takendown, suspended, deleted, ...
    updated_at TIMESTAMP NOT NULL
);

-- The position of each source, committed in the same transaction as the data
-- it covers.
CREATE TABLE cursors (
    source     VARCHAR PRIMARY KEY,
    cursor     BIGINT  NOT NULL,
    event_time VARCHAR,              -- the time field of the last applied event
    updated_at TIMESTAMP NOT NULL
);

-- Records that failed their lexicon (or could not be decoded), with the reason.
CREATE TABLE quarantine (
    uri        VARCHAR NOT NULL,
    did        VARCHAR NOT NULL,
    collection VARCHAR NOT NULL,
    rkey       VARCHAR NOT NULL,
    cid        VARCHAR,
    rev        VARCHAR,
    reason     VARCHAR NOT NULL,
    record     JSON,
    seen_at    TIMESTAMP NOT NULL
);
