"""Where the evaluated month's pairs sit, defined once for count's realism figures and evaluate's
by-support table: their support bucket (evaluate.support_buckets: a pair's support in the retrieval
window sorts it into cold, tail, torso or head) and whether they are unseen in training (no triple
in the fine-tune's sample days). Both come from month_pair_support.sql; count weighs them by the
month's triples, evaluate by its events."""
from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline import db
from pipeline.period import refresh_dates, windows


def month_pairs(con, cfg: DictConfig) -> pd.DataFrame:
    """(day, c1, c2, support, seen_in_training, triples) for each day and pair of the evaluated
    month (month_pair_support.sql), day a datetime.date."""
    w = windows(cfg)
    rows = db.over_dates(con, "month_pair_support", refresh_dates(cfg), {
        "daily": str(cfg.paths.daily_counts), "month_start": w.month_start, "month_end": w.month_end,
        "window_days": cfg.retrieve.window_days, "train_start": w.train_start, "test_start": w.test_start})
    rows["day"] = pd.to_datetime(rows.day).dt.date
    return rows


def of_events(events: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """(support, seen_in_training) of each event (a triple of the month: day, c1, c2), indexed like
    `events`, from month_pairs' rows; an event without its day's pair there is one line (the
    daily counts are not those of these triples)."""
    got = events[["day", "c1", "c2"]].merge(pairs[["day", "c1", "c2", "support", "seen_in_training"]],
                                            on=["day", "c1", "c2"], how="left", validate="many_to_one")
    if got.support.isna().any():
        row = got[got.support.isna()].iloc[0]
        raise ValueError(f"daily counts: no count of pair ({row.c1}, {row.c2}) on {row.day}, where the month's "
                         "triples have one; rerun the count stage (dvc repro)")
    return pd.DataFrame({"support": got.support.astype(int).to_numpy(),
                         "seen_in_training": got.seen_in_training.astype(bool).to_numpy()}, index=events.index)


def bucket_of(support, bounds: dict[str, int]) -> np.ndarray:
    """Each support's bucket: the name in `bounds` (ascending lower bounds from 0) it reaches."""
    # The schema (pipeline/schema.py) holds the bounds to ascending from 0.
    return np.array(list(bounds))[np.searchsorted(np.array(list(bounds.values())), np.asarray(support),
                                                  side="right") - 1]
