-- lexview store, migration 6: ART indexes for point lookups, and table
-- macros that make queries use them.
--
-- Without the indexes every getRecord, backlink count or view scans whole
-- columns (5.6 ms for a getRecord on 100k records, growing with the store).
-- DuckDB uses an index only when the indexed column's equality or IN list is
-- the scan's only filter: `target = ? AND path = ?` scans the table. The
-- macros below look the rows up by the indexed column alone (OFFSET 0 keeps
-- the optimizer from pushing the caller's other filters into that scan), and
-- callers filter the few rows they return. Lists are space-separated (AT-URIs
-- and DIDs contain no spaces).
CREATE INDEX records_uri ON records (uri);
CREATE INDEX records_did ON records (did);
CREATE INDEX links_target ON links (target);
CREATE INDEX link_counts_target ON link_counts (target);

CREATE MACRO records_at(uris) AS TABLE
    SELECT * FROM records WHERE uri IN (SELECT unnest(string_split(uris, ' '))) OFFSET 0;
CREATE MACRO records_by(did_) AS TABLE
    SELECT * FROM records WHERE did = did_ OFFSET 0;
CREATE MACRO links_to(target_) AS TABLE
    SELECT * FROM links WHERE target = target_ OFFSET 0;
CREATE MACRO links_to_any(targets) AS TABLE
    SELECT * FROM links WHERE target IN (SELECT unnest(string_split(targets, ' '))) OFFSET 0;
CREATE MACRO counts_of(target_) AS TABLE
    SELECT * FROM link_counts WHERE target = target_ OFFSET 0;
CREATE MACRO counts_of_any(targets) AS TABLE
    SELECT * FROM link_counts WHERE target IN (SELECT unnest(string_split(targets, ' '))) OFFSET 0;
