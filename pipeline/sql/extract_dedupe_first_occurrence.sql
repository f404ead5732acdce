-- Keep each cluster's first visit in a sequence: what is left is distinct clusters, so a
-- sequence with 3 visits has 3 distinct clusters (enough is decided from visit counts).
CREATE OR REPLACE TEMP TABLE kept AS
SELECT min(g) AS g, seq, cluster_id, arg_min(ts, g) AS ts, any_value(user_id) AS user_id, true AS enough
FROM sessioned
GROUP BY seq, cluster_id
ORDER BY g;
