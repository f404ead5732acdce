-- Labels of the lined training samples: per day d of the view `refresh_dates` (day) and pair, the
-- successor other than c1 that followed it most often in [d, d + $label_days) (ties to the lower
-- id): what a table refreshed at d is asked to predict, a novel cluster (a table never serves c1).
-- Parameters: $daily, $label_days.
WITH dates AS (SELECT DISTINCT day::DATE AS d FROM refresh_dates),
counts AS (
    SELECT r.d AS day, t.c1, t.c2, t.c_next, sum(t.n) AS n
    FROM dates AS r
    JOIN read_parquet($daily) AS t ON t.day >= r.d AND t.day < r.d + $label_days::INTEGER
    WHERE t.c_next <> t.c1
    GROUP BY ALL
)
SELECT day, c1, c2, list(c_next ORDER BY n DESC, c_next)[1] AS c_next
FROM counts
GROUP BY ALL
ORDER BY day, c1, c2
