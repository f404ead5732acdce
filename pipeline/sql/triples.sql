-- (c1, c2) -> c_next of consecutive distinct clusters, stamped with c_next's time.
SELECT user_id, ts, c1, c2, cluster_id AS c_next
FROM deduped
WHERE n_distinct >= $min_distinct AND c1 IS NOT NULL AND cluster_id <> c1
ORDER BY user_id, seq, pos
