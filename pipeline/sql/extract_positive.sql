-- Positive events with their cluster, the input of both SQL forms. A table of its own because
-- DuckDB sorts this table in about half the CPU time it takes to sort the same rows fed straight
-- from the Parquet scan and join (10M events: 0.6 s to build it + 1.5 s to sort it, against
-- 3.8-5.0 s for one statement doing both).
-- Parameters: $min_engagement.
SELECT e.user_id, e.item_id, e.ts, i.cluster_id
FROM events AS e JOIN items AS i ON e.item_id = i.item_id
-- compared as DOUBLE on both engines: 0.7 is no float32 value
WHERE CAST(e.engagement AS DOUBLE) >= $min_engagement
