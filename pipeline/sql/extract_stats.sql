-- What extract kept and dropped, for metrics/extract.json.
-- Parameters: $min_engagement.
WITH raw AS (
    SELECT count(*) AS events,
           count(CASE WHEN CAST(e.engagement AS DOUBLE) < $min_engagement THEN 1 END) AS negative_events,
           count(CASE WHEN CAST(e.engagement AS DOUBLE) >= $min_engagement AND i.item_id IS NULL THEN 1 END)
               AS unknown_item_events
    FROM events AS e LEFT JOIN items AS i ON e.item_id = i.item_id
),
summary AS (
    SELECT count(*) AS deduped_visits, count(CASE WHEN pos = 0 AND long_enough THEN 1 END) AS kept_sequences,
           coalesce(max(seq), 0) AS sequences
    FROM deduped
)
SELECT events, negative_events, unknown_item_events,
       events - negative_events - unknown_item_events AS positive_events, deduped_visits, sequences,
       sequences - kept_sequences AS short_sequences_dropped
FROM raw, summary
