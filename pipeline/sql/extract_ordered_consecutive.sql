-- Immediate repeats are already collapsed (A A B A -> A B A). Visits may repeat a cluster,
-- so `enough` marks sequences with at least 3 distinct clusters.
SELECT *, count(DISTINCT cluster_id) OVER (PARTITION BY seq) >= 3 AS enough
FROM sessioned
ORDER BY g
