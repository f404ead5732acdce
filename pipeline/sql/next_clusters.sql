-- The one hit definition (pipeline/hits.py), for the gate's held-out days and evaluate's month:
-- every triple with $start <= ts < $end, with the user's next $horizon distinct clusters other
-- than c1 and c2, counted from c_next on (so c_next is first) and seen before $until (NULL: any
-- time; the gate passes month_start, so its held-out days never look into the month).
-- A strategy hits when the cluster it serves for (c1, c2) on that day is among them.
-- Parameters: $triples, $sequences, $start, $end, $until, $horizon.
WITH events AS (
    SELECT user_id, ts, c1, c2,
           row_number() OVER (ORDER BY user_id, ts, c1, c2, c_next) AS id
    FROM read_parquet($triples)
    WHERE ts >= $start::TIMESTAMP AND ts < $end::TIMESTAMP
),
future AS (
    SELECT e.id, v.cluster_id, min(v.ts) AS first_ts
    FROM events e
    JOIN read_parquet($sequences) v
      ON v.user_id = e.user_id AND v.ts >= e.ts AND v.cluster_id <> e.c1 AND v.cluster_id <> e.c2
     AND ($until::TIMESTAMP IS NULL OR v.ts < $until::TIMESTAMP)
    GROUP BY e.id, v.cluster_id
),
ranked AS (
    SELECT id, cluster_id, row_number() OVER (PARTITION BY id ORDER BY first_ts, cluster_id) AS r
    FROM future
)
SELECT e.id, e.user_id, CAST(e.ts AS DATE) AS day, e.c1, e.c2,
       list(r.cluster_id ORDER BY r.r) AS future
FROM events e
JOIN ranked r ON r.id = e.id AND r.r <= $horizon
GROUP BY e.id, e.user_id, e.ts, e.c1, e.c2
ORDER BY e.id
