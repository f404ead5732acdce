"""The one hit definition the gate (on its held-out days) and evaluate (on the month) share, and
the guard every choice made on held-out days passes.

A served cluster hits an event (a triple (c1, c2, c_next) of a user at time ts) when it is among
the user's next evaluate.horizon distinct clusters other than c1 and c2, counted from c_next on
(next_clusters.sql); the gate's held-out days never look past month_start."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from pipeline import db


def events(con, triples: str, sequences: str, start: date, end: date, horizon: int,
           until: date | None = None) -> pd.DataFrame:
    """(id, user_id, day, c1, c2, future) for every triple of [start, end) with at least one next
    cluster, future being the user's next `horizon` distinct clusters seen before `until`."""
    found = con.execute(db.sql("next_clusters"), {"triples": str(triples), "sequences": str(sequences),
                                                  "start": start, "end": end, "until": until,
                                                  "horizon": int(horizon)}).df()
    found["day"] = pd.to_datetime(found.day).dt.date
    return found


def hits(served: pd.DataFrame, future: pd.Series) -> pd.DataFrame:
    """Per strategy (a column of `served`, one row per event), whether it hit; a missing cluster never does."""
    sets = [set(f) for f in future]
    return pd.DataFrame({s: [c is not None and not pd.isna(c) and int(c) in f for c, f in zip(served[s], sets)]
                         for s in served.columns}, index=served.index)


def gain_ci(users, better, default, reps: int, seed: int) -> tuple[float, list[float]]:
    """(hit rate of `better` less that of `default`, its 95 % CI) over the same events, users
    resampled with replacement (bootstrap): the noise a choice on held-out days must clear."""
    frame = pd.DataFrame({"d": np.asarray(better, dtype=float) - np.asarray(default, dtype=float)})
    grouped = frame.groupby(np.asarray(users)).d
    total, n = grouped.sum().to_numpy(), grouped.size().to_numpy()
    gain = float(total.sum() / n.sum()) if n.sum() else 0.0
    if not len(n):
        return 0.0, [0.0, 0.0]
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, reps, 200):
        idx = rng.integers(0, len(n), size=(min(200, reps - start), len(n)))
        draws.append(total[idx].sum(axis=1) / n[idx].sum(axis=1))
    low, high = np.percentile(np.concatenate(draws), [2.5, 97.5])
    return round(gain, 6), [round(float(low), 6), round(float(high), 6)]


def guarded(candidates: list[dict], hit: dict, users, default: str, reps: int, seed: int) -> dict:
    """The candidate to use: the default unless another's held-out gain over it is clear of noise
    (the lower end of gain_ci above 0); then the one of those with the most hits (the first on a
    tie). `candidates` are dicts with a "name" key (each gets "hit_rate", "gain", "gain_ci" and
    "clear" added in place); `hit` maps each name to its per-event hits."""
    for c in candidates:
        gain, ci = gain_ci(users, hit[c["name"]], hit[default], reps, seed)
        c.update(hit_rate=round(float(np.mean(hit[c["name"]])), 6) if len(users) else 0.0, gain=gain, gain_ci=ci,
                 clear=c["name"] != default and ci[0] > 0)
    clear = [c for c in candidates if c["clear"]]
    base = next(c for c in candidates if c["name"] == default)
    return max(clear, key=lambda c: c["hit_rate"], default=base) if clear else base
