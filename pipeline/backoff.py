"""The back-off chain: fresh evidence counted and served with no LLM (evaluate's `backoff`, the
RAG table's twin, and the hybrid's count answer in the gate and bulk_infer): the pair's top
retrieved successor, else what followed its last cluster alone over the same window, else popular."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pandas as pd

from pipeline import db, retrieval


def backoff_successors(con: duckdb.DuckDBPyConnection, daily: Path | str, days: list[date],
                       window_days: int) -> pd.DataFrame:
    """(refresh_date, c2, backoff): per day and last cluster, its two most frequent successors of
    [day - window_days, day) whatever came before it (the back-off chain's second level)."""
    found = db.over_dates(con, "evaluate_backoff", days, {"daily": str(daily), "window_days": int(window_days)})
    found["backoff"] = found["backoff"].map(list)
    return found


def answers(frame: pd.DataFrame, day_column: str, found: pd.DataFrame, fallback: pd.DataFrame,
            popular: dict) -> pd.arrays.IntegerArray:
    """The count answer, no LLM (evaluate's `backoff`, the hybrid's "counts"): each row's top
    retrieved successor (`found`, any support) on its day, else the top successor of c2 alone over
    the same window (`fallback`: backoff_successors) other than c1, else popular[day]'s first
    cluster that is neither c1 nor c2."""
    retrieved = retrieval.attach(frame, found, day_column)
    keyed = frame[["c1", "c2"]].assign(day=pd.to_datetime(pd.Series(list(frame[day_column]), index=frame.index)))
    ranked = fallback.assign(day=pd.to_datetime(fallback.refresh_date), top=fallback.backoff.str[0],
                             runner_up=fallback.backoff.str[1])[["day", "c2", "top", "runner_up"]]
    level2 = keyed.merge(ranked, on=["day", "c2"], how="left")
    c2_top = level2.top.where(level2.top != level2.c1, level2.runner_up).astype("Int32")
    pop = [retrieval.first_popular(popular.get(d, []), a, b) for d, a, b in zip(frame[day_column], frame.c1, frame.c2)]
    return pd.array([got[0] if got else (c if pd.notna(c) else p) for got, c, p in zip(retrieved, c2_top, pop)],
                    dtype="Int32")


def popular_at(con: duckdb.DuckDBPyConnection, daily: Path | str, days: list[date], window_days: int) -> dict:
    """{day: its three most popular clusters of [day - window_days, day)} (a day with nothing
    there is absent): enough for one that is neither c1 nor c2."""
    found = retrieval.popular(con, daily, days, window_days, 3)
    return {d.date(): p for d, p in zip(pd.to_datetime(found.refresh_date), found.popular)}
