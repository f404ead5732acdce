-- extract_sequences.sql in (user, time) order for the partitioned form, whose tables keep no row order.
SELECT user_id, seq, pos, ts, cluster_id
FROM deduped
WHERE long_enough
ORDER BY seq, pos
