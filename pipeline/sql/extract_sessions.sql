-- Split each user's visits into sequences at gaps longer than $session_gap seconds and
-- collapse immediate repeats (A A B -> A B): no dedupe mode keeps them, and dropping them
-- here shrinks what first_occurrence has to hash.
-- seq numbers sequences globally (1, 2, ...) in (user, time) order; g is the visit's rank.
WITH flagged AS (
    SELECT user_id, ts, cluster_id, row_number() OVER () AS g,
           user_id IS DISTINCT FROM lag(user_id) OVER ()
           OR epoch_us(ts) - epoch_us(lag(ts) OVER ()) > $session_gap::BIGINT * 1000000 AS starts
    FROM ordered
),
numbered AS (
    SELECT g, user_id, ts, cluster_id, starts,
           sum(starts::INTEGER) OVER (ROWS UNBOUNDED PRECEDING)::BIGINT AS seq
    FROM flagged
)
SELECT g, seq, cluster_id, ts, user_id
FROM numbered
QUALIFY starts OR cluster_id <> lag(cluster_id) OVER ()
