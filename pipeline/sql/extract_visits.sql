-- Positive visits (extract_positive) split per user into sequences at gaps longer than
-- $session_gap seconds, immediate repeats collapsed (A A B -> A B: no dedupe mode keeps them).
-- Every window names its partition and order (user_id; ts, then item_id, which breaks the
-- timestamp ties real logs have): no step relies on row order, so the engine sorts each user
-- apart, in parallel (DuckDB) or across a cluster (Spark), never the whole table at once.
-- s numbers a user's sequences (1, 2, ...); g is the visit's rank in its user's visits.
-- Parameters: $session_gap.
WITH flagged AS (
    SELECT user_id, ts, cluster_id, row_number() OVER w AS g,
           coalesce(epoch_us(ts) - epoch_us(lag(ts) OVER w) > CAST($session_gap AS BIGINT) * 1000000, true) AS starts,
           lag(cluster_id) OVER w AS prev_cluster
    FROM positive
    WINDOW w AS (PARTITION BY user_id ORDER BY ts, item_id)
),
collapsed AS (
    -- a dropped repeat never starts a sequence, so dropping it first leaves s unchanged and
    -- gives the second window (a second sort) fewer rows
    SELECT user_id, ts, cluster_id, g, starts FROM flagged WHERE starts OR cluster_id <> prev_cluster
)
SELECT user_id,
       sum(CASE WHEN starts THEN 1 ELSE 0 END) OVER (PARTITION BY user_id ORDER BY g ROWS UNBOUNDED PRECEDING) AS s,
       g, ts, cluster_id
FROM collapsed
