"""extract + count in pandas: events -> daily (c1, c2, c_next) counts, first_occurrence dedupe.

Same semantics as the extract stage (pipeline/sql/extract_*.sql, first_occurrence) + count_daily_counts.sql:
positive events (engagement >= min_engagement, compared in float64 as DuckDB does), joined to
items (unknown items dropped), ordered per user by (ts, item_id), split on gaps > session_gap
seconds, a cluster's first visit kept per sequence, sequences with < 3 distinct clusters
dropped, triples stamped with c_next's time, counted per UTC day.

Sequences are contiguous after the sort, so lag-within-sequence is a plain shift guarded by
"same sequence id two rows back", and every row with a c1 lies in a sequence of >= 3
distinct clusters (first_occurrence leaves only distinct clusters): no per-sequence count.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

US_PER_DAY = 86_400 * 1_000_000


def _utc_us(ts: pd.Series) -> np.ndarray:
    """Naive UTC wall time in microseconds (the contract's internal ts; naive input is UTC)."""
    if ts.dt.tz is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.to_numpy("datetime64[us]").view(np.int64)


def _order(user: np.ndarray, ts: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Positions that sort by (user, ts, item), as df.sort_values(["user_id", "ts", "item_id"]) but
    ~3x faster: one stable argsort of a packed (user rank, ts) key, then item_id orders the rare
    (user, ts) ties. Falls back to the three-column sort when the packed key would overflow."""
    codes, _ = pd.factorize(user, sort=True)
    lo, span = int(ts.min()), int(ts.max()) - int(ts.min()) + 1
    if len(ts) == 0 or (int(codes.max()) + 1) * span >= 2**63:
        return pd.DataFrame({"u": user, "t": ts, "i": item}).sort_values(["u", "t", "i"]).index.to_numpy()
    key = codes.astype(np.int64) * span + (ts - lo)
    order = np.argsort(key, kind="stable")
    key = key[order]
    tie = np.zeros(len(key), dtype=bool)
    same = key[1:] == key[:-1]
    tie[1:] |= same
    tie[:-1] |= same
    at = np.flatnonzero(tie)  # tie blocks are contiguous; reorder each by item_id in place
    if len(at):
        order[at] = order[at][np.lexsort((item[order[at]], key[at]))]
    return order


def daily_counts(events_path, items_path, min_engagement: float, session_gap: int) -> pd.DataFrame:
    ev = pd.read_parquet(events_path, columns=["user_id", "item_id", "ts", "engagement"])
    # float64 comparison, as DuckDB compares FLOAT to a DOUBLE parameter.
    ev = ev.loc[ev["engagement"].to_numpy(np.float64) >= float(min_engagement),
                ["user_id", "item_id", "ts"]]
    items = pd.read_parquet(items_path, columns=["item_id", "cluster_id"])
    at = pd.Index(items["item_id"].to_numpy(np.int64)).get_indexer(ev["item_id"].to_numpy(np.int64))
    known = at >= 0  # inner join: unknown items are dropped
    ev = pd.DataFrame({
        "user_id": ev["user_id"].to_numpy(np.int64)[known],
        # naive UTC wall time in microseconds (the contract's internal ts)
        "ts": _utc_us(ev["ts"])[known],
        "item_id": ev["item_id"].to_numpy(np.int64)[known],
        "cluster_id": items["cluster_id"].to_numpy(np.int32)[at[known]],
    })
    del at, known
    ev = ev.take(_order(ev["user_id"].to_numpy(), ev["ts"].to_numpy(), ev["item_id"].to_numpy()))

    user = ev["user_id"].to_numpy()
    ts = ev["ts"].to_numpy()
    new = np.empty(len(ev), dtype=bool)
    new[:1] = True
    np.not_equal(user[1:], user[:-1], out=new[1:])
    new[1:] |= (ts[1:] - ts[:-1]) > int(session_gap) * 1_000_000
    sid = np.cumsum(new, dtype=np.int64)  # global sequence id, increasing along the sort
    cluster = ev["cluster_id"].to_numpy()
    del ev, user, new

    # first_occurrence: a (sequence, cluster) pair's first row in (ts, item_id) order.
    key = pd.Series((sid << 32) | (cluster.astype(np.int64) & 0xFFFFFFFF))
    first = ~key.duplicated(keep="first").to_numpy()
    sid, cluster, ts = sid[first], cluster[first], ts[first]
    del key, first

    # triples: c1 = two rows back, c2 = one row back, in the same sequence
    same = sid[2:] == sid[:-2]
    c1, c2, c_next = cluster[:-2], cluster[1:-1], cluster[2:]
    same &= c_next != c1
    out = pd.DataFrame({
        "day": (ts[2:][same] // US_PER_DAY).astype("datetime64[D]"),
        "c1": c1[same], "c2": c2[same], "c_next": c_next[same],
    })
    return (out.groupby(["day", "c1", "c2", "c_next"], sort=True).size()
            .rename("n").astype(np.int32).reset_index())
