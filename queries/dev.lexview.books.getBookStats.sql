-- Books with average rating and review count, grouped by the hive's book id.
-- Parameters (lexicons/dev/lexview/books/getBookStats.json): $minReviews, $limit.
-- Each row is one item of the output's `books` array.
SELECT
    record ->> 'hiveId' AS hiveId,
    any_value(record ->> 'title') AS title,
    any_value(record ->> 'authors') AS authors,
    count(*) AS readers,
    count(TRY_CAST(record ->> 'stars' AS INTEGER)) AS ratings,
    printf('%.1f', avg(TRY_CAST(record ->> 'stars' AS INTEGER))) AS averageStars,
    count(*) FILTER (WHERE length(trim(coalesce(record ->> 'review', ''))) > 0) AS reviews
FROM records
WHERE collection = 'buzz.bookhive.book'
GROUP BY record ->> 'hiveId'
HAVING count(*) FILTER (WHERE length(trim(coalesce(record ->> 'review', ''))) > 0) >= $minReviews
ORDER BY reviews DESC, readers DESC, hiveId
LIMIT $limit
