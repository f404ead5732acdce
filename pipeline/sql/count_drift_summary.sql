-- Jaccard pairs, mean and sample variance per month, and over all months (the row whose month is NULL).
SELECT month, count(*) AS pairs, avg(jaccard) AS mean_jaccard, var_samp(jaccard) AS var_jaccard
FROM jaccard
GROUP BY ROLLUP (month)
ORDER BY month
