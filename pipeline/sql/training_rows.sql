-- Daily counts of the fine-tune's sample days [$train_start, $test_start) for pairs with at least
-- $min_support triples there, in a fixed order (the fine-tune's seeded sampler relies on it): what
-- the fine-tune curates from and what the count twin (gate, evaluate) counts. Parameters: $daily, $train_start, $test_start, $min_support.
WITH rows AS (
    SELECT day, c1, c2, c_next, n, sum(n) OVER (PARTITION BY c1, c2) AS support
    FROM read_parquet($daily)
    WHERE day >= $train_start AND day < $test_start
)
SELECT day, c1, c2, c_next, n FROM rows
WHERE support >= $min_support
ORDER BY c1, c2, day, c_next
