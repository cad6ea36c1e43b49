-- lexview store, migration 2: records and links of accounts that are not
-- active (deactivated, takendown, suspended, ...). They are moved out of
-- `records` and `links`, and their links out of `link_counts`, so every answer
-- and count leaves them out without a filter in every query; reactivation
-- moves them back. A deleted account's rows are purged from both.
CREATE TABLE hidden_records AS SELECT * FROM records LIMIT 0;
CREATE TABLE hidden_links AS SELECT * FROM links LIMIT 0;
