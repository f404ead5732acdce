-- Deduped per-user cluster sequences that are long enough to yield triples.
SELECT user_id, seq, pos, ts, cluster_id
FROM deduped
WHERE n_distinct >= $min_distinct
ORDER BY user_id, seq, pos
