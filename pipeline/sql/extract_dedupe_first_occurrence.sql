-- Keep each cluster's first visit in a sequence: what is left is distinct clusters, so a
-- sequence with 3 visits has 3 distinct clusters (enough is decided from visit counts).
-- Plain aggregates: ts rises with g within a user, so min(ts) is the first visit's time.
SELECT user_id, s, min(g) AS g, min(ts) AS ts, cluster_id, true AS enough
FROM visits
GROUP BY user_id, s, cluster_id
