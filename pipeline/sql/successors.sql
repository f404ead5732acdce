-- Per refresh date d and pair (c1, c2): the top $top_n successors of the window
-- [d - $window_days, d), never day d or later, never c1 or c2.
--   frequency: ranked by count in the window;
--   trend:     ranked by the count's increase over the window before it (increases only).
-- Ties go to the lower cluster id; `support` is each successor's count in the window and
-- `pair_support` the pair's count over all its successors there (evaluation buckets pairs by it).
-- A pair with no triple in the window is absent; under trend, a pair whose successors all fell
-- keeps its row with nothing retrieved, so its pair_support still counts.
-- Reads the view `refresh_dates` (day).
-- Parameters: $daily, $window_days, $top_n, $method.
WITH dates AS (SELECT DISTINCT day::DATE AS refresh_date FROM refresh_dates),
counts AS (
    SELECT r.refresh_date, d.c1, d.c2, d.c_next,
           coalesce(sum(d.n) FILTER (WHERE d.day >= r.refresh_date - $window_days::INTEGER), 0) AS recent,
           coalesce(sum(d.n) FILTER (WHERE d.day < r.refresh_date - $window_days::INTEGER), 0) AS previous
    FROM dates AS r
    JOIN read_parquet($daily) AS d
      ON d.day >= r.refresh_date - 2 * $window_days::INTEGER AND d.day < r.refresh_date
    WHERE d.c_next <> d.c1 AND d.c_next <> d.c2
    GROUP BY ALL
),
scored AS (
    SELECT *, CASE WHEN $method = 'trend' THEN recent - previous ELSE recent END AS score
    FROM counts
)
SELECT refresh_date, c1, c2,
       coalesce(list(c_next ORDER BY score DESC, c_next) FILTER (WHERE score > 0), [])[1:$top_n] AS retrieved,
       coalesce(list(recent ORDER BY score DESC, c_next) FILTER (WHERE score > 0), [])[1:$top_n]::INTEGER[] AS support,
       sum(recent)::INTEGER AS pair_support
FROM scored
GROUP BY ALL
HAVING sum(recent) > 0
ORDER BY refresh_date, c1, c2
