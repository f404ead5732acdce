-- Where each day's pairs of the evaluated month [$month_start, $month_end) sit, the one definition
-- count's realism figures and evaluate's by-support table share (pipeline/buckets.py):
--   support: the pair's support in the retrieval window [r - $window_days, r) of the refresh date r
--            that serves the day (the newest on or before it), counted as successors.sql counts
--            pair_support (successors other than c1 and c2);
--   seen_in_training: whether the pair has any triple in the fine-tune's sample days
--            [$train_start, $test_start) (false: unseen in training);
--   triples: the pair's triples that day.
-- A day before the first refresh date has no row. Reads the view `refresh_dates` (day).
-- Parameters: $daily, $month_start, $month_end, $window_days, $train_start, $test_start.
WITH daily AS (SELECT * FROM read_parquet($daily)),
month AS (
    SELECT day, c1, c2, sum(n) AS triples
    FROM daily
    WHERE day >= $month_start AND day < $month_end
    GROUP BY ALL
),
served AS (
    SELECT m.day, m.c1, m.c2, m.triples, max(r.day::DATE) AS refresh_date
    FROM month AS m JOIN refresh_dates AS r ON r.day::DATE <= m.day
    GROUP BY ALL
),
window_support AS (
    SELECT s.refresh_date, s.c1, s.c2, sum(d.n) AS support
    FROM (SELECT DISTINCT refresh_date, c1, c2 FROM served) AS s
    JOIN daily AS d
      ON d.c1 = s.c1 AND d.c2 = s.c2 AND d.c_next <> d.c1 AND d.c_next <> d.c2
     AND d.day >= s.refresh_date - $window_days::INTEGER AND d.day < s.refresh_date
    GROUP BY ALL
),
trained AS (
    SELECT DISTINCT c1, c2 FROM daily WHERE day >= $train_start AND day < $test_start
)
SELECT s.day, s.c1, s.c2, coalesce(w.support, 0)::INTEGER AS support,
       t.c1 IS NOT NULL AS seen_in_training, s.triples::INTEGER AS triples
FROM served AS s
LEFT JOIN window_support AS w USING (refresh_date, c1, c2)
LEFT JOIN trained AS t USING (c1, c2)
ORDER BY s.day, s.c1, s.c2
