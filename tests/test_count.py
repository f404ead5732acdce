"""count: daily counts and month-over-month top-k Jaccard, checked by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.stages import count
from tests.conftest import compose


def write_triples(path, spec):
    """spec: (day, c1, c2, c_next, times)."""
    rows = [(1, pd.Timestamp(day) + pd.Timedelta(minutes=i), c1, c2, c_next)
            for day, c1, c2, c_next, times in spec for i in range(times)]
    frame = pd.DataFrame(rows, columns=["user_id", "ts", "c1", "c2", "c_next"]).astype(
        {"c1": "int32", "c2": "int32", "c_next": "int32"})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


SPEC = [
    # pair (0, 1): January top-3 {2, 3, 4}, February top-3 {2, 5, 6}: Jaccard 1/5
    ("2024-01-03", 0, 1, 2, 5), ("2024-01-04", 0, 1, 3, 4), ("2024-01-31", 0, 1, 4, 3), ("2024-01-31", 0, 1, 7, 1),
    ("2024-02-01", 0, 1, 2, 5), ("2024-02-02", 0, 1, 5, 4), ("2024-02-02", 0, 1, 6, 3),
    # pair (1, 2): January {0, 3, 5}; February's tie between 4 and 5 (2x each) goes to the lower id 4,
    # so February is {0, 3, 4}: Jaccard 2/4
    ("2024-01-05", 1, 2, 3, 6), ("2024-01-05", 1, 2, 0, 6), ("2024-01-06", 1, 2, 5, 1),
    ("2024-02-05", 1, 2, 3, 6), ("2024-02-05", 1, 2, 0, 6), ("2024-02-06", 1, 2, 5, 2), ("2024-02-06", 1, 2, 4, 2),
    # pair (2, 3): too little support in February to be compared
    ("2024-01-09", 2, 3, 1, 12), ("2024-02-09", 2, 3, 1, 3),
]


def run(tmp_path, *overrides):
    cfg = compose(tmp_path, "count.top_k=3", "count.min_support=12", *overrides)
    write_triples(Path(cfg.paths.triples), SPEC)
    count.run(cfg)
    return (pd.read_parquet(cfg.paths.daily_counts), json.loads((tmp_path / "metrics/count/detail.json").read_text()),
            (tmp_path / "metrics/drift_by_month.csv").read_text())


def test_daily_counts(tmp_path):
    daily, _, _ = run(tmp_path)
    assert daily.n.sum() == sum(s[-1] for s in SPEC)
    row = daily[(daily.day == pd.Timestamp("2024-01-31").date()) & (daily.c_next == 4)]
    assert row[["c1", "c2", "n"]].values.tolist() == [[0, 1, 3]]
    assert daily.equals(daily.sort_values(["day", "c1", "c2", "c_next"]).reset_index(drop=True))


def test_drift_jaccard(tmp_path):
    _, drift, plot = run(tmp_path)
    assert drift["pairs_compared"] == 2
    assert drift["mean_jaccard"] == pytest.approx((0.2 + 0.5) / 2)
    assert drift["var_jaccard"] == pytest.approx(pd.Series([0.2, 0.5]).var())
    assert plot.splitlines() == ["month,mean_jaccard,var_jaccard,pairs", "2024-02,0.35,0.045,2"]
    # metrics/count.json, what `dvc metrics show` prints, holds the drift figures only.
    assert json.loads((tmp_path / "metrics/count.json").read_text()) == count.headline(drift) == {
        k: drift[k] for k in ("mean_jaccard", "var_jaccard", "pairs_compared")}


def test_top_k_is_a_setting(tmp_path):
    _, drift, _ = run(tmp_path, "count.top_k=1")
    assert drift["mean_jaccard"] == pytest.approx(1.0)


def test_no_comparable_pairs_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no pair reaches count.min_support=1000"):
        run(tmp_path, "count.min_support=1000")


def test_month_profile_buckets_triples_by_window_support_and_training(tmp_path):
    """period 2024-03: refresh dates every 2 days from 03-01, 7-day windows, fine-tune days
    [02-02, 02-25); support counts successors other than c1 and c2, as successors.sql does."""
    cfg = compose(tmp_path, "count.min_support=1")
    write_triples(Path(cfg.paths.triples), [
        ("2024-02-26", 0, 1, 2, 30), ("2024-02-27", 0, 1, 0, 5),  # window of 03-01: 30 (c_next = c1 not counted)
        ("2024-03-01", 0, 1, 3, 4),  # head, never in the fine-tune's days
        ("2024-02-10", 1, 2, 0, 3), ("2024-03-02", 1, 2, 0, 6),  # cold at 03-01, seen in training
        ("2024-02-28", 2, 3, 1, 2), ("2024-03-04", 2, 3, 1, 10),  # tail at 03-03 (02-25..03-02 holds 2)
        ("2024-03-08", 2, 3, 4, 5),  # torso at 03-07 (02-29..03-06 holds 03-04's 10)
    ])
    count.run(cfg)
    month = json.loads((tmp_path / "metrics/count/detail.json").read_text())["month"]
    assert month == {"period": "2024-03", "triples": 25, "cold": 0.24, "tail": 0.4, "torso": 0.2, "head": 0.16,
                     "unseen_in_training": 0.76}
