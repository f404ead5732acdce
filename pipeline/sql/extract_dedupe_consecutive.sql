-- Immediate repeats are already collapsed (A A B A -> A B A). Visits may repeat a cluster, so
-- `enough` marks sequences with at least 3 distinct clusters: the count of clusters' first
-- visits (Spark has no count(DISTINCT) over a window).
WITH marked AS (
    SELECT *, CASE WHEN row_number() OVER (PARTITION BY user_id, s, cluster_id ORDER BY g) = 1 THEN 1 ELSE 0 END AS novel
    FROM visits
)
SELECT user_id, s, g, ts, cluster_id, sum(novel) OVER (PARTITION BY user_id, s) >= 3 AS enough
FROM marked
