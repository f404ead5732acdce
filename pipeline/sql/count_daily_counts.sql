-- Daily transition counts: how often c_next followed (c1, c2) on each UTC day.
SELECT CAST(ts AS DATE) AS day, c1, c2, c_next, count(*)::INTEGER AS n
FROM read_parquet($triples)
GROUP BY ALL
ORDER BY day, c1, c2, c_next
