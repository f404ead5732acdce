-- Month-over-month Jaccard of each pair's top-$top_k successor sets, over daily counts.
-- A pair enters a month's comparison when it has >= $min_support triples in both months.
-- Ties in count are broken by the lower cluster id, so sets are deterministic.
WITH monthly AS (
    SELECT date_trunc('month', day)::DATE AS month, c1, c2, c_next, sum(n) AS n
    FROM read_parquet($daily) GROUP BY ALL
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY month, c1, c2 ORDER BY n DESC, c_next) AS r,
              sum(n) OVER (PARTITION BY month, c1, c2) AS support
    FROM monthly
),
top AS (SELECT month, c1, c2, c_next FROM ranked WHERE r <= $top_k AND support >= $min_support),
sizes AS (SELECT month, c1, c2, count(*) AS size FROM top GROUP BY ALL),
shared AS (
    SELECT cur.month, cur.c1, cur.c2, count(*) AS n_shared
    FROM top AS cur JOIN top AS prev
      ON prev.c1 = cur.c1 AND prev.c2 = cur.c2 AND prev.c_next = cur.c_next
     AND prev.month = cur.month - INTERVAL 1 MONTH
    GROUP BY ALL
)
SELECT strftime(cur.month, '%Y-%m') AS month, cur.c1, cur.c2,
       coalesce(s.n_shared, 0) / (cur.size + prev.size - coalesce(s.n_shared, 0)) AS jaccard
FROM sizes AS cur
JOIN sizes AS prev ON prev.c1 = cur.c1 AND prev.c2 = cur.c2 AND prev.month = cur.month - INTERVAL 1 MONTH
LEFT JOIN shared AS s ON s.month = cur.month AND s.c1 = cur.c1 AND s.c2 = cur.c2
ORDER BY month, c1, c2
