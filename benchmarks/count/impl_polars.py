"""extract + count in polars: events -> daily (c1, c2, c_next) counts, first_occurrence dedupe.

Same semantics as the extract stage (pipeline/sql/extract_*.sql, first_occurrence) +
count_daily_counts.sql; see impl_pandas for the reasoning behind the shifts. `daily_counts` is the
fastest variant measured (eager sort, see VARIANTS / `python -m benchmarks.count.impl_polars`);
the lazy plan is kept as `daily_counts_lazy`.
"""
from __future__ import annotations

import polars as pl

US_PER_DAY = 86_400 * 1_000_000


def _positive(events_path, items_path, min_engagement: float) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    events = (
        pl.scan_parquet(events_path)
        # float64 comparison, as DuckDB compares FLOAT to a DOUBLE parameter
        .filter(pl.col("engagement").cast(pl.Float64) >= float(min_engagement))
        .select(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64),
                # naive UTC wall time in microseconds (the contract's internal ts)
                pl.col("ts").dt.cast_time_unit("us").dt.epoch("us").alias("ts"))
    )
    items = pl.scan_parquet(items_path).select(pl.col("item_id").cast(pl.Int64),
                                               pl.col("cluster_id").cast(pl.Int32))
    # inner join: unknown items are dropped
    return events.join(items, on="item_id", how="inner"), items


def _sequences_to_counts(sorted_: pl.LazyFrame, session_gap: int) -> pl.LazyFrame:
    """From events sorted by (user_id, ts, item_id) to daily counts."""
    user, ts, cluster = pl.col("user_id"), pl.col("ts"), pl.col("cluster_id")
    new = (user != user.shift(1)) | (ts.diff() > int(session_gap) * 1_000_000)
    sid = new.fill_null(True).cum_sum().cast(pl.Int64)
    deduped = (
        sorted_.select(sid.alias("sid"), ts, cluster)
        # first_occurrence: a (sequence, cluster) pair's first row in (ts, item_id) order
        .filter((pl.col("sid") * (1 << 32) + (cluster.cast(pl.Int64) & 0xFFFFFFFF)).is_first_distinct())
    )
    return (
        deduped
        .select((ts // US_PER_DAY).cast(pl.Int32).cast(pl.Date).alias("day"),
                cluster.shift(2).alias("c1"), cluster.shift(1).alias("c2"), cluster.alias("c_next"),
                (pl.col("sid").shift(2) == pl.col("sid")).alias("same"))
        # c1 and c2 from the same sequence; c_next <> c1 always holds after first_occurrence
        .filter(pl.col("same") & (pl.col("c_next") != pl.col("c1")))
        .group_by("day", "c1", "c2", "c_next")
        .agg(pl.len().cast(pl.Int32).alias("n"))
        .sort("day", "c1", "c2", "c_next")
    )


def daily_counts(events_path, items_path, min_engagement: float, session_gap: int) -> pl.DataFrame:
    """Eager sort (multithreaded sort of a materialised frame), the rest lazy."""
    positive, _ = _positive(events_path, items_path, min_engagement)
    ordered = positive.collect().sort("user_id", "ts", "item_id")
    return _sequences_to_counts(ordered.lazy(), session_gap).collect()


def daily_counts_lazy(events_path, items_path, min_engagement: float, session_gap: int) -> pl.DataFrame:
    """One lazy plan."""
    positive, _ = _positive(events_path, items_path, min_engagement)
    return _sequences_to_counts(positive.sort("user_id", "ts", "item_id"), session_gap).collect()


def daily_counts_streaming(events_path, items_path, min_engagement: float, session_gap: int) -> pl.DataFrame:
    """One lazy plan on the streaming engine."""
    positive, _ = _positive(events_path, items_path, min_engagement)
    plan = _sequences_to_counts(positive.sort("user_id", "ts", "item_id"), session_gap)
    return plan.collect(engine="streaming")


VARIANTS = {"eager-sort": daily_counts, "lazy": daily_counts_lazy, "streaming": daily_counts_streaming}
