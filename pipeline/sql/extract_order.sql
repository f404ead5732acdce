-- Positive visits sorted once per user by (ts, item_id): item_id breaks timestamp ties, which
-- real logs have. Every later step streams over this order: DuckDB keeps a table's row order
-- through scans, filters and windows with an empty OVER () (docs: sql/dialect/order_preservation),
-- so no further sort is needed.
SELECT user_id, ts, cluster_id
FROM positive
ORDER BY user_id, ts, item_id
