-- For each requested (c1, c2, day): its top $top_n successors over [day - $window_days, day),
-- by count, ties to the lower cluster id. Never reads day itself or later.
-- Reads the view `requests` (c1, c2, day). Parameters: $daily, $window_days, $top_n.
WITH wanted AS (SELECT DISTINCT c1, c2, day::DATE AS day FROM requests),
recent AS (
    SELECT r.c1, r.c2, r.day, d.c_next, sum(d.n) AS n
    FROM wanted AS r
    JOIN read_parquet($daily) AS d
      ON d.c1 = r.c1 AND d.c2 = r.c2 AND d.day >= r.day - $window_days::INTEGER AND d.day < r.day
    GROUP BY ALL
)
SELECT c1, c2, day, list(c_next ORDER BY n DESC, c_next)[1:$top_n] AS retrieved
FROM recent
GROUP BY ALL
ORDER BY c1, c2, day
