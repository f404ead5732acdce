-- Keep each cluster's first visit in a sequence: the rest of the sequence is distinct clusters.
SELECT user_id, seq, rn, ts, cluster_id
FROM sessioned
QUALIFY row_number() OVER (PARTITION BY user_id, seq, cluster_id ORDER BY rn) = 1
