-- Upcoming calendar events with RSVP counts by status.
-- Parameters (checked against lexicons/dev/lexview/calendar/getUpcomingEvents.json
-- and bound, never spliced): $after (datetime or NULL), $limit.
-- Each row is one item of the output's `events` array. Note: `->>` binds more
-- loosely than `=` and `IS`, so comparisons on it need parentheses.
SELECT
    e.uri,
    e.did,
    e.record ->> 'name' AS name,
    e.record ->> 'startsAt' AS startsAt,
    e.record ->> 'endsAt' AS endsAt,
    count(r.uri) FILTER (WHERE coalesce(r.record ->> 'status', 'community.lexicon.calendar.rsvp#going')
                               = 'community.lexicon.calendar.rsvp#going') AS going,
    count(r.uri) FILTER (WHERE (r.record ->> 'status') = 'community.lexicon.calendar.rsvp#interested') AS interested,
    count(r.uri) FILTER (WHERE (r.record ->> 'status') = 'community.lexicon.calendar.rsvp#notgoing') AS notgoing,
    count(r.uri) AS rsvps
FROM records e
LEFT JOIN links l
    ON l.target = e.uri
   AND l.source_collection = 'community.lexicon.calendar.rsvp'
   AND l.path = '.subject.uri'
LEFT JOIN records r ON r.uri = l.source_uri
WHERE e.collection = 'community.lexicon.calendar.event'
  AND (e.record ->> 'startsAt') IS NOT NULL
  AND TRY_CAST(e.record ->> 'startsAt' AS TIMESTAMP)
      >= coalesce(TRY_CAST($after AS TIMESTAMP), now()::TIMESTAMP)
GROUP BY e.uri, e.did, e.record
ORDER BY TRY_CAST(e.record ->> 'startsAt' AS TIMESTAMP), e.uri
LIMIT $limit
