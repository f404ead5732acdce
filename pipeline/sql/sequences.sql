-- Deduped per-user cluster sequences that are long enough to yield triples, in (user, time) order.
SELECT user_id, seq, pos, ts, cluster_id
FROM deduped
WHERE long_enough
ORDER BY seq, pos
