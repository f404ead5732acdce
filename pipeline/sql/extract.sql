-- Positive events -> per-user, per-sequence deduped cluster visits with their two predecessors.
-- Reads the validated views events/items (pipeline.data.contract.register).
-- Parameters: $min_engagement, $session_gap (seconds). The dedupe step comes from
-- dedupe_<mode>.sql and reads `sessioned`; it must keep (user_id, seq, rn, ts, cluster_id).
CREATE OR REPLACE TEMP TABLE deduped AS
WITH positive AS (
    SELECT e.user_id, e.ts, e.item_id, i.cluster_id
    FROM events AS e JOIN items AS i USING (item_id)
    WHERE e.engagement >= $min_engagement
),
ordered AS (
    -- item_id breaks timestamp ties: real logs hold equal timestamps.
    SELECT user_id, ts, cluster_id,
           row_number() OVER w AS rn,
           coalesce(epoch_us(ts) - epoch_us(lag(ts) OVER w) > $session_gap::BIGINT * 1000000, false)::INTEGER AS gap
    FROM positive
    WINDOW w AS (PARTITION BY user_id ORDER BY ts, item_id)
),
sessioned AS (
    SELECT user_id, rn, ts, cluster_id,
           sum(gap) OVER (PARTITION BY user_id ORDER BY rn ROWS UNBOUNDED PRECEDING)::INTEGER AS seq
    FROM ordered
),
kept AS (
    __DEDUPE__
)
SELECT user_id, seq, (row_number() OVER s - 1)::INTEGER AS pos, ts, cluster_id,
       lag(cluster_id, 2) OVER s AS c1, lag(cluster_id, 1) OVER s AS c2,
       count(DISTINCT cluster_id) OVER (PARTITION BY user_id, seq) AS n_distinct
FROM kept
WINDOW s AS (PARTITION BY user_id, seq ORDER BY rn);
