-- Evaluation events (docs/design.md, "Time"): every triple of the month, with the user's next
-- $horizon distinct clusters other than c1 and c2, counted from c_next on (so c_next is first).
-- A strategy hits when the cluster it serves for (c1, c2) on that day is among them.
WITH events AS (
    SELECT user_id, ts, c1, c2,
           row_number() OVER (ORDER BY user_id, ts, c1, c2, c_next) AS id
    FROM read_parquet($triples)
    WHERE ts >= $month_start AND ts < $month_end
),
future AS (
    SELECT e.id, v.cluster_id, min(v.ts) AS first_ts
    FROM events e
    JOIN read_parquet($sequences) v
      ON v.user_id = e.user_id AND v.ts >= e.ts AND v.cluster_id <> e.c1 AND v.cluster_id <> e.c2
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
