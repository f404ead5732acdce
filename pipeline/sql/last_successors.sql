-- The last cluster's recent successors (the back-off level of RAG evidence and of the back-off
-- baseline): per refresh date d and last cluster c2, its most frequent successors over
-- [d - $window_days, d) whatever came before c2, never c2 itself.
-- Two per c2 suffice: the first that is not the event's c1 is always among them.
-- Ties go to the lower cluster id. Reads the view `refresh_dates` (day).
-- Parameters: $daily, $window_days.
WITH dates AS (SELECT DISTINCT day::DATE AS refresh_date FROM refresh_dates),
totals AS (
    SELECT r.refresh_date, d.c2, d.c_next, sum(d.n) AS n
    FROM dates AS r
    JOIN read_parquet($daily) AS d ON d.day >= r.refresh_date - $window_days::INTEGER AND d.day < r.refresh_date
    WHERE d.c_next <> d.c2 AND d.c_next <> d.c1
    GROUP BY ALL
)
SELECT refresh_date, c2, list(c_next ORDER BY n DESC, c_next)[1:2] AS successors
FROM totals
GROUP BY ALL
ORDER BY refresh_date, c2
