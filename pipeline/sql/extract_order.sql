-- Positive events with their cluster, sorted once per user by (ts, item_id): item_id breaks
-- timestamp ties, which real logs have. Every later step streams over this order: DuckDB
-- keeps a table's row order through scans, filters and windows with an empty OVER ()
-- (docs: sql/dialect/order_preservation), so no further sort is needed.
-- Parameters: $min_engagement.
SELECT e.user_id, e.ts, i.cluster_id
FROM events AS e JOIN items AS i USING (item_id)
WHERE e.engagement >= $min_engagement
ORDER BY e.user_id, e.ts, e.item_id
