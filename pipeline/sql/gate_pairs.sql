-- Distinct pairs of the held-out days [$test_start, $month_start), in a fixed order.
SELECT DISTINCT c1, c2
FROM read_parquet($triples)
WHERE ts >= $test_start::TIMESTAMP AND ts < $month_start::TIMESTAMP
ORDER BY c1, c2
