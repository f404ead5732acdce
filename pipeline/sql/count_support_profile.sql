-- The world's realism figures (README "Synthetic world"): the triples of [$month_start, $month_end)
-- by their pair's support in the retrieval window [r - $window_days, r) of the refresh date r that
-- serves them (the newest on or before their day), counted as successors.sql counts pair_support,
-- and whether their pair has any triple in the fine-tune's sample days [$train_start, $test_start).
-- Reads the view `refresh_dates` (day). Parameters: $daily, $month_start, $month_end,
-- $window_days, $train_start, $test_start.
WITH daily AS (SELECT * FROM read_parquet($daily)),
month AS (
    SELECT d.c1, d.c2, d.n, max(r.day::DATE) AS refresh_date
    FROM daily AS d JOIN refresh_dates AS r ON r.day::DATE <= d.day
    WHERE d.day >= $month_start AND d.day < $month_end
    GROUP BY d.day, d.c1, d.c2, d.c_next, d.n
),
window_support AS (
    SELECT m.refresh_date, m.c1, m.c2, sum(d.n) AS support
    FROM (SELECT DISTINCT refresh_date, c1, c2 FROM month) AS m
    JOIN daily AS d
      ON d.c1 = m.c1 AND d.c2 = m.c2 AND d.c_next <> d.c1 AND d.c_next <> d.c2
     AND d.day >= m.refresh_date - $window_days::INTEGER AND d.day < m.refresh_date
    GROUP BY ALL
),
trained AS (
    SELECT DISTINCT c1, c2 FROM daily WHERE day >= $train_start AND day < $test_start
)
SELECT coalesce(w.support, 0)::INTEGER AS support, t.c1 IS NOT NULL AS seen_in_training,
       sum(m.n)::INTEGER AS triples
FROM month AS m
LEFT JOIN window_support AS w USING (refresh_date, c1, c2)
LEFT JOIN trained AS t USING (c1, c2)
GROUP BY ALL
ORDER BY support, seen_in_training
