-- What extract kept and dropped, for metrics/extract.json.
-- Parameters: $min_engagement; $positive_events and $sequences, counted while building.
WITH raw AS (
    SELECT count(*) AS events, count(*) FILTER (WHERE engagement < $min_engagement) AS negative_events
    FROM events
),
deduped AS (
    SELECT count(*) AS deduped_visits, count(*) FILTER (WHERE pos = 0 AND long_enough) AS kept_sequences
    FROM deduped
)
SELECT events, negative_events,
       events - negative_events - $positive_events AS unknown_item_events,
       $positive_events AS positive_events, deduped_visits, $sequences AS sequences,
       $sequences - kept_sequences AS short_sequences_dropped
FROM raw, deduped
