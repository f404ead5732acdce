-- Each kept visit with its global sequence number seq (1, 2, ... in (user, time) order), its
-- position in the sequence, its two predecessors (c1, c2), and whether its sequence is long
-- enough: >= 3 visits (seen from the visit's neighbours, in the one window w) and, where visits
-- may repeat a cluster, >= 3 distinct clusters (`enough`).
WITH users AS (
    SELECT user_id, max(s) AS sequences FROM kept GROUP BY user_id
),
offsets AS (
    -- one row per user: the sequences of the users before it
    SELECT user_id, sum(sequences) OVER (ORDER BY user_id ROWS UNBOUNDED PRECEDING) - sequences AS base
    FROM users
),
around AS (
    SELECT user_id, s, ts, cluster_id, enough, row_number() OVER w AS k,
           lag(cluster_id, 2) OVER w AS c1, lag(cluster_id, 1) OVER w AS c2,
           lead(cluster_id, 1) OVER w AS next_1, lead(cluster_id, 2) OVER w AS next_2
    FROM kept
    WINDOW w AS (PARTITION BY user_id, s ORDER BY g)
)
SELECT a.user_id, CAST(o.base + a.s AS BIGINT) AS seq, CAST(a.k - 1 AS INTEGER) AS pos, a.ts, a.cluster_id, a.c1, a.c2,
       a.enough AND (a.c1 IS NOT NULL OR (a.c2 IS NOT NULL AND a.next_1 IS NOT NULL) OR a.next_2 IS NOT NULL)
           AS long_enough
FROM around AS a JOIN offsets AS o ON a.user_id = o.user_id
