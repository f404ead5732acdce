-- Test recall: held-out triples of the evaluated pairs whose predicted cluster appears in the
-- user's history within $horizon_days of the triple, never at or after $month_start.
-- Reads the view `predictions` (c1, c2, c_pred). Parameters: $triples, $sequences,
-- $test_start, $month_start, $horizon_days.
WITH held_out AS (
    SELECT t.user_id, t.ts, p.c_pred
    FROM read_parquet($triples) AS t JOIN predictions AS p USING (c1, c2)
    WHERE t.ts >= $test_start::TIMESTAMP AND t.ts < $month_start::TIMESTAMP
)
SELECT count(*) AS triples,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM read_parquet($sequences) AS s
           WHERE s.user_id = h.user_id AND s.cluster_id = h.c_pred AND s.ts >= h.ts
             AND s.ts < least(h.ts + to_days($horizon_days::INTEGER), $month_start::TIMESTAMP))) AS hits
FROM held_out AS h
