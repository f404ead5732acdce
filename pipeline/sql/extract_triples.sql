-- (c1, c2) -> c_next of consecutive distinct clusters, stamped with c_next's time, in deduped's row order.
-- With consecutive dedupe, A B A is no triple: c_next must differ from c1 too.
SELECT user_id, ts, c1, c2, cluster_id AS c_next
FROM deduped
WHERE long_enough AND c1 IS NOT NULL AND cluster_id <> c1
