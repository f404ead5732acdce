-- Keep each cluster's first visit in a sequence: what is left is distinct clusters, so a
-- sequence with 3 visits has 3 distinct clusters (enough is decided from visit counts).
-- Plain aggregates (ts rises with g) rather than arg_min(ts, g): measurably cheaper.
SELECT min(g) AS g, seq, cluster_id, min(ts) AS ts, user_id, true AS enough
FROM sessioned
GROUP BY seq, cluster_id, user_id
ORDER BY g
