-- Collapse immediate repeats only: A A B A -> A B A.
SELECT user_id, seq, rn, ts, cluster_id
FROM sessioned
QUALIFY cluster_id IS DISTINCT FROM lag(cluster_id) OVER (PARTITION BY user_id, seq ORDER BY rn)
