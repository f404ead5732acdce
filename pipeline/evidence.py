"""The evidence a RAG prompt carries, and the same evidence counted and served with no LLM.

A back-off chain over the days before a date (issue 30): the pair's own top successor where it
followed the pair at least prompts.min_support times (the paper's instance-level line), else the
top successor of the pair's last cluster whatever came before it, never c1 or c2 (most pairs of a
sparse log have no line of their own, and the last cluster alone predicts the next one well),
else the first popular cluster. RAG prompts show the first two levels (lines); the count answer
(answers: evaluate's `backoff`, the RAG table's twin, and the hybrid's "counts" in the gate and
bulk_infer) serves the chain directly, so the model and its twin read the same evidence.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from pipeline import db, retrieval

# prompts.evidence: which lines a RAG prompt carries.
MODES = ("instance", "backoff")


def last_successors(con, daily: Path | str, days: list[date], window_days: int,
                    fallback_days: int = 0) -> pd.DataFrame:
    """(refresh_date, c2, successors): per day and last cluster, its two most frequent successors
    of [day - window_days, day) whatever came before it (last_successors.sql): the first that is
    not a pair's c1 is always among them. With fallback_days beyond window_days, the two of
    [day - fallback_days, day) follow them, so a last cluster with no recent successor (a sparse
    log's usual case) still gives a line, the older one."""
    def over(days_back: int) -> pd.DataFrame:
        found = db.over_dates(con, "last_successors", days, {"daily": str(daily), "window_days": int(days_back)})
        found["successors"] = found["successors"].map(list)
        return found

    recent = over(window_days)
    if fallback_days <= window_days:
        return recent
    # The longer window holds the shorter one, so every (day, c2) with a recent successor is here.
    older = over(fallback_days)
    first = {(d, c2): got for d, c2, got in zip(recent.refresh_date, recent.c2, recent.successors)}
    chained = []
    for d, c2, got in zip(older.refresh_date, older.c2, older.successors):
        recent_ones = first.get((d, c2), [])
        chained.append(recent_ones + [c for c in got if c not in recent_ones])
    older["successors"] = chained
    return older


def last_line(frame: pd.DataFrame, day_column: str, last: pd.DataFrame) -> pd.Series:
    """Each row's last-cluster successor as a one-element list ([] when c2 had none other than c1),
    matched on (c2, day) against last_successors' rows."""
    keyed = frame[["c1", "c2", day_column]].rename(columns={day_column: "refresh_date"})
    keyed["refresh_date"] = pd.to_datetime(keyed["refresh_date"])
    found = last.assign(refresh_date=pd.to_datetime(last["refresh_date"]))
    merged = keyed.merge(found, on=["refresh_date", "c2"], how="left")
    return pd.Series([next(([int(c)] for c in got if c != a), []) if hasattr(got, "__len__") else []
                      for a, got in zip(merged.c1, merged.successors)], index=frame.index)


def lines(frame: pd.DataFrame, day_column: str, found: pd.DataFrame, last: pd.DataFrame, min_support: int,
          mode: str) -> tuple[pd.Series, pd.Series]:
    """(retrieved, last) for each row of `frame` (c1, c2 and its date in day_column): the pair's
    successors of `found` (retrieval.successors) followed at least min_support times, and under
    mode backoff, where the pair has none, its last cluster's successor (last_line); under
    instance the last line stays empty, the paper's prompts."""
    if mode not in MODES:
        raise ValueError(f"prompts.evidence={mode!r}: not one of {list(MODES)}")
    retrieved = retrieval.attach(frame, found, day_column, min_support)
    if mode == "instance":
        return retrieved, pd.Series([[] for _ in range(len(frame))], index=frame.index)
    fallback = last_line(frame, day_column, last)
    return retrieved, pd.Series([[] if got else f for got, f in zip(retrieved, fallback)], index=frame.index)


def answers(frame: pd.DataFrame, day_column: str, found: pd.DataFrame, last: pd.DataFrame, popular: dict,
            min_support: int) -> pd.arrays.IntegerArray:
    """The count answer, no LLM: each row's back-off chain on its day served directly, the first of
    its lines under backoff (lines: the pair's successor followed at least min_support times, else
    its last cluster's), else popular[day]'s first cluster that is neither c1 nor c2."""
    retrieved, back = lines(frame, day_column, found, last, min_support, "backoff")
    pop = [retrieval.first_popular(popular.get(d, []), a, b) for d, a, b in zip(frame[day_column], frame.c1, frame.c2)]
    return pd.array([(got or fb or [p])[0] for got, fb, p in zip(retrieved, back, pop)], dtype="Int32")


def popular_at(con, daily: Path | str, days: list[date], window_days: int) -> dict:
    """{day: its three most popular clusters of [day - window_days, day)} (a day with nothing
    there is absent): enough for one that is neither c1 nor c2."""
    found = retrieval.popular(con, daily, days, window_days, 3)
    return {d.date(): p for d, p in zip(pd.to_datetime(found.refresh_date), found.popular)}
