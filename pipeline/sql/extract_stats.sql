-- What extract kept and dropped, for metrics/extract.json. Parameters: $min_engagement, $min_distinct.
SELECT
    (SELECT count(*) FROM events) AS events,
    (SELECT count(*) FROM events WHERE engagement < $min_engagement) AS negative_events,
    (SELECT count(*) FROM events AS e ANTI JOIN items AS i USING (item_id)
      WHERE e.engagement >= $min_engagement) AS unknown_item_events,
    (SELECT count(*) FROM deduped) AS deduped_visits,
    (SELECT count(DISTINCT (user_id, seq)) FROM deduped) AS sequences,
    (SELECT count(DISTINCT (user_id, seq)) FROM deduped WHERE n_distinct < $min_distinct) AS short_sequences_dropped
