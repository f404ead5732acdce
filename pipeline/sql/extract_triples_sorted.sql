-- extract_triples.sql in (user, time) order for the partitioned form, whose tables keep no row order.
SELECT user_id, ts, c1, c2, cluster_id AS c_next
FROM deduped
WHERE long_enough AND c1 IS NOT NULL AND cluster_id <> c1
ORDER BY seq, pos
