"""Retrieval over daily counts: what followed a pair recently (paper section 2.3)."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from pipeline import db


def top_successors(con: duckdb.DuckDBPyConnection, daily: Path | str, requests: pd.DataFrame, window_days: int,
                   top_n: int) -> pd.DataFrame:
    """For each request (c1, c2, day): `retrieved`, the top_n successors of [day - window_days, day).

    Requests with nothing in their window are absent from the result."""
    con.register("requests", requests[["c1", "c2", "day"]])
    try:
        return con.execute(db.sql("retrieve_top"), {"daily": str(daily), "window_days": int(window_days),
                                                    "top_n": int(top_n)}).df()
    finally:
        con.unregister("requests")
