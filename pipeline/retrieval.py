"""Retrieval over daily counts: what followed a pair recently (paper section 2.3)."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pandas as pd

from pipeline import db


def successors(con: duckdb.DuckDBPyConnection, daily: Path | str, days: list[date], window_days: int,
               top_n: int, method: str = "frequency") -> pd.DataFrame:
    """(refresh_date, c1, c2, retrieved, support, pair_support): per day and pair, the top_n
    successors of [day - window_days, day), how often each followed the pair there, and how often
    anything did.

    Pairs with no triple in the window are absent. method: frequency or trend (retrieve.sql)."""
    found = db.over_dates(con, "retrieve", days, {"daily": str(daily), "window_days": window_days,
                                                "top_n": top_n, "method": method})
    found["retrieved"] = found["retrieved"].map(list)
    found["support"] = found["support"].map(list)
    return found


def popular(con: duckdb.DuckDBPyConnection, daily: Path | str, days: list[date], window_days: int,
            top_n: int) -> pd.DataFrame:
    """(refresh_date, popular): per day, the top_n clusters most often reached in [day - window_days, day)."""
    found = db.over_dates(con, "popular", days, {"daily": str(daily), "window_days": window_days, "top_n": top_n})
    found["popular"] = found["popular"].map(list)
    return found


def first_popular(clusters, c1: int, c2: int) -> int | None:
    """The first of `clusters` (most popular first) that is neither c1 nor c2, the no-LLM fallback
    of every table and baseline; None when there is none."""
    return next((int(c) for c in clusters if c != c1 and c != c2), None)


def attach(frame: pd.DataFrame, found: pd.DataFrame, day_column: str, min_support: int = 1) -> pd.Series:
    """Each row's retrieved successors with at least min_support in the window (empty when none),
    matched on (c1, c2, day)."""
    keyed = frame[["c1", "c2", day_column]].rename(columns={day_column: "refresh_date"})
    keyed["refresh_date"] = pd.to_datetime(keyed["refresh_date"])
    found = found.assign(refresh_date=pd.to_datetime(found["refresh_date"]))
    merged = keyed.merge(found, on=["c1", "c2", "refresh_date"], how="left")
    # Lists come back as arrays from Parquet and as NaN where nothing matched.
    return pd.Series([[int(c) for c, n in zip(r, s) if n >= min_support] if hasattr(r, "__len__") else []
                      for r, s in zip(merged["retrieved"], merged["support"])], index=frame.index)


def hybrid(answers, trusted) -> pd.arrays.IntegerArray:
    """Hybrid serving: the top retrieved successor where one has enough support (`trusted`: the
    rows' attach(..., min_support=tau)), else the LLM's answer (NA stays NA)."""
    return pd.array([got[0] if got else answer for got, answer in zip(trusted, answers)], dtype="Int32")
