-- The "rust" feed: posts that mention Rust, newest first.
-- Served as at://<publisher>/app.bsky.feed.generator/rust by getFeedSkeleton.
-- $limit and $cursor are bound by lexview (never spliced); each row returns
-- `post` and its `cursor` (the position the next page starts after).
SELECT uri AS post, rkey || ' ' || did AS cursor
FROM records
WHERE collection = 'app.bsky.feed.post'
  AND regexp_matches(record ->> 'text', '(?i)\brust\b')
  AND ($cursor IS NULL OR (rkey || ' ' || did) < $cursor)
ORDER BY rkey DESC, did DESC
LIMIT $limit
