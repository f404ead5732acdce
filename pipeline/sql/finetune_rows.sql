-- Daily counts of the training days for pairs with enough support, in a fixed order
-- (the seeded sampler relies on it). Parameters: $daily, $train_start, $test_start, $min_support.
WITH rows AS (
    SELECT day, c1, c2, c_next, n, sum(n) OVER (PARTITION BY c1, c2) AS support
    FROM read_parquet($daily)
    WHERE day >= $train_start AND day < $test_start
)
SELECT day, c1, c2, c_next, n FROM rows
WHERE support >= $min_support
ORDER BY c1, c2, day, c_next
