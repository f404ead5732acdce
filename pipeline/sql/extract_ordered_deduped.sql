-- Each kept visit with its position in the sequence, its two predecessors (c1, c2), and
-- whether its sequence is long enough: >= 3 visits (sequences are contiguous runs of `seq`
-- in `kept`) and, where visits may repeat a cluster, >= 3 distinct clusters (`enough`).
WITH around AS (
    SELECT *, row_number() OVER () AS k,
           lag(seq, 1) OVER () AS seq_1, lag(seq, 2) OVER () AS seq_2,
           lead(seq, 1) OVER () AS seq_n1, lead(seq, 2) OVER () AS seq_n2,
           lag(cluster_id, 1) OVER () AS prev_1, lag(cluster_id, 2) OVER () AS prev_2
    FROM kept
),
positioned AS (
    SELECT *, max(CASE WHEN seq_1 IS DISTINCT FROM seq THEN k END) OVER (ROWS UNBOUNDED PRECEDING) AS first_k
    FROM around
)
SELECT user_id, seq, (k - first_k)::INTEGER AS pos, ts, cluster_id,
       CASE WHEN seq_2 = seq THEN prev_2 END AS c1,
       CASE WHEN seq_1 = seq THEN prev_1 END AS c2,
       enough AND coalesce(seq_2 = seq OR (seq_1 = seq AND seq_n1 = seq) OR seq_n2 = seq, false) AS long_enough
FROM positioned
