-- Mutual follows of an actor: accounts it follows that follow it back.
-- Parameters (lexicons/dev/lexview/graph/getMutualFollows.json): $actor (DID or
-- handle), $limit. Each row is one item of the output's `mutuals` array.
WITH me AS (
    SELECT coalesce((SELECT did FROM actors WHERE lower(handle) = lower($actor) LIMIT 1), $actor) AS did
)
SELECT DISTINCT out.target AS did, a.handle
FROM me
JOIN links out
    ON out.source_did = me.did
   AND out.source_collection = 'app.bsky.graph.follow'
   AND out.path = '.subject'
JOIN links back
    ON back.source_did = out.target
   AND back.target = me.did
   AND back.source_collection = 'app.bsky.graph.follow'
   AND back.path = '.subject'
LEFT JOIN actors a ON a.did = out.target
ORDER BY did
LIMIT $limit
