-- Global level: per refresh date d, the $top_n clusters most often reached in
-- [d - $window_days, d), one list shared by every pair. Reads the view `refresh_dates` (day).
-- Parameters: $daily, $window_days, $top_n.
WITH dates AS (SELECT DISTINCT day::DATE AS refresh_date FROM refresh_dates),
totals AS (
    SELECT r.refresh_date, d.c_next, sum(d.n) AS n
    FROM dates AS r
    JOIN read_parquet($daily) AS d ON d.day >= r.refresh_date - $window_days::INTEGER AND d.day < r.refresh_date
    GROUP BY ALL
)
SELECT refresh_date, list(c_next ORDER BY n DESC, c_next)[1:$top_n] AS popular
FROM totals
GROUP BY ALL
ORDER BY refresh_date
