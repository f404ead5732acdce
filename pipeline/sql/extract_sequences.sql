-- Deduped per-user cluster sequences that are long enough to yield triples, in deduped's
-- row order, (user, time) in the ordered form.
SELECT user_id, seq, pos, ts, cluster_id
FROM deduped
WHERE long_enough
