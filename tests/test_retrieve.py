"""retrieve: refresh dates, frequency and trend successors, global popularity, no future data."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pipeline import db, evidence, retrieval
from pipeline.period import refresh_dates
from pipeline.stages import retrieve
from tests.conftest import compose
from tests.test_finetune import daily_frame

DAILY = [
    # pair (0, 1): successor 2 is steady, 3 surges in the week before March 1st
    ("2024-02-16", 0, 1, 2, 5), ("2024-02-20", 0, 1, 2, 5), ("2024-02-23", 0, 1, 3, 1),
    ("2024-02-26", 0, 1, 3, 4),
    # pair (1, 2): only old data, outside every window
    ("2024-01-05", 1, 2, 4, 9),
    # planted future: on and after the refresh date, never read
    ("2024-03-01", 0, 1, 5, 99), ("2024-03-02", 0, 1, 5, 99),
]


def run(tmp_path, *overrides):
    cfg = compose(tmp_path, "refresh.until=2024-03-03", *overrides)
    Path(cfg.paths.daily_counts).parent.mkdir(parents=True)
    daily_frame(DAILY).to_parquet(cfg.paths.daily_counts)
    retrieve.run(cfg)
    found = pd.read_parquet(cfg.paths.retrieved)
    return cfg, found, pd.read_parquet(cfg.paths.popular)


def on(found, day):
    rows = found[pd.to_datetime(found.refresh_date) == pd.Timestamp(day)]
    return {(int(a), int(b)): list(r) for a, b, r in zip(rows.c1, rows.c2, rows.retrieved)}


def test_refresh_dates(tmp_path):
    assert refresh_dates(compose(tmp_path, "refresh.until=2024-03-05")) == [
        date(2024, 3, 1), date(2024, 3, 3), date(2024, 3, 5)]
    assert len(refresh_dates(compose(tmp_path))) == 16  # March 1, 3, ..., 31
    with pytest.raises(ValueError, match="refresh.until=2024-04-02"):
        refresh_dates(compose(tmp_path, "refresh.until=2024-04-02"))


def test_frequency_ignores_the_refresh_day_and_later(tmp_path):
    cfg, found, popular = run(tmp_path, "retrieve.top_n=2", "retrieve.window_days=14")
    assert on(found, "2024-03-01") == {(0, 1): [2, 3]}  # Feb 16-29: 2 (10x) before 3 (5x), never 5
    assert on(found, "2024-03-03") == {(0, 1): [5, 2]}  # March 1-2 are now past; 2 and 3 tie at 5x
    metrics = json.loads((Path(cfg.paths.metrics) / "retrieve.json").read_text())
    assert metrics == {"refresh_dates": 2, "mean_pairs_with_retrieval": 1.0}
    detail = json.loads((Path(cfg.paths.metrics) / "retrieve" / "detail.json").read_text())
    assert detail["pairs_with_retrieval"] == {"2024-03-01": 1, "2024-03-03": 1}
    assert list(popular.popular.iloc[0]) == [2, 3]


def test_trend_ranks_by_increase(tmp_path):
    _, found, _ = run(tmp_path, "retrieve.method=trend", "retrieve.top_n=2")
    # window Feb 23-29 against Feb 16-22: 3 rose by 5, 2 fell by 5 and is left out
    assert on(found, "2024-03-01") == {(0, 1): [3]}


def test_successors_never_return_c1_or_c2(tmp_path):
    cfg = compose(tmp_path)
    path = tmp_path / "daily.parquet"
    daily_frame([("2024-02-28", 0, 1, 0, 9), ("2024-02-28", 0, 1, 1, 9), ("2024-02-28", 0, 1, 4, 1)]).to_parquet(path)
    found = retrieval.successors(db.connect(cfg), path, [date(2024, 3, 1)], 7, 3)
    assert [list(r) for r in found.retrieved] == [[4]]


def test_pair_support_counts_every_successor_in_the_window(tmp_path):
    cfg = compose(tmp_path)
    path = tmp_path / "daily.parquet"
    daily_frame([("2024-02-27", 0, 1, 2, 3), ("2024-02-28", 0, 1, 4, 2), ("2024-02-28", 0, 1, 1, 9),  # c2: not a successor
                 ("2024-02-16", 0, 1, 5, 40),  # before the window
                 ("2024-02-20", 2, 1, 3, 5), ("2024-02-26", 2, 1, 3, 1)]).to_parquet(path)
    con = db.connect(cfg)
    found = retrieval.successors(con, path, [date(2024, 3, 1)], 7, 1).set_index(["c1", "c2"])
    assert found.loc[(0, 1), "retrieved"] == [2] and found.loc[(0, 1), "support"] == [3]
    assert found.loc[(0, 1), "pair_support"] == 5 and found.loc[(2, 1), "pair_support"] == 1
    # trend: (2, 1)'s only successor fell (5 -> 1); nothing is retrieved, yet its support stays known
    trend = retrieval.successors(con, path, [date(2024, 3, 1)], 7, 1, "trend").set_index(["c1", "c2"])
    assert trend.loc[(2, 1), "retrieved"] == [] and trend.loc[(2, 1), "pair_support"] == 1
    assert trend.loc[(0, 1), "retrieved"] == [2] and len(trend) == 2


def test_the_hybrid_rule_is_chosen_on_held_out_hits_and_leaves_the_model_only_on_a_clear_gain():
    import numpy as np

    from pipeline import hits

    days = [date(2024, 2, 23)]
    frame = pd.DataFrame({"c1": [0, 0, 1, 2], "c2": [1, 2, 0, 1], "day": days * 4})
    found = pd.DataFrame({"refresh_date": pd.to_datetime(days * 3), "c1": [0, 0, 1], "c2": [1, 2, 0],
                          "retrieved": [[3], [4], [2]], "support": [[9], [1], [1]]})
    answers = pd.Series(pd.array([5, 6, 7, 8], dtype="Int32"))
    logprob = pd.Series([-0.1, -4.0, -0.2, -0.3])
    # the count answer: the retrieved successor, else (for (2, 1)) what followed 1 alone: 6
    last = pd.DataFrame({"refresh_date": pd.to_datetime(days), "c2": [1], "successors": [[6, 0]]})
    counts = evidence.answers(frame, "day", found, last, {days[0]: [4, 5]}, 1)
    assert counts.tolist() == [3, 4, 2, 6]

    def choose(truth, users_per_pair):
        """Each pair seen by `users_per_pair` held-out users, one event each, going on to `truth`."""
        def score(served):
            return np.repeat((served.astype("Int64") == pd.Series(truth).astype("Int64")).fillna(False).to_numpy(),
                             users_per_pair)

        users = np.arange(4 * users_per_pair)
        return retrieval.choose_hybrid(score, lambda c, hit: hits.guarded(c, hit, users, "counts", 300, 1), answers,
                                       logprob, frame, found, "day", [1, 5], counts)

    def serve(rule):
        return retrieval.serve_hybrid(rule, answers, logprob, frame, found, "day", counts).tolist()

    # What held out rewards: the count answer on the pair the model is unsure of (0, 2) and the
    # model's answers elsewhere, which no support threshold gives and a confidence one does.
    got = choose([5, 4, 7, 8], 50)
    assert got["rule"] == "confidence" and got["tau"] is None and -4.0 < got["min_logprob"] <= -0.3
    assert serve(got) == [5, 4, 7, 8]
    assert {c["rule"] for c in got["candidates"]} == {"counts", "model", "support", "confidence"}
    # Trusting the thick pair's count and the model elsewhere: support at tau 5.
    got = choose([3, 6, 7, 8], 50)
    assert (got["rule"], got["tau"], got["min_logprob"]) == ("support", 5, None)
    assert serve(got) == [3, 6, 7, 8]
    # The model beats counting by one hit in four: clear over 50 held-out users a pair, noise over one.
    assert choose([5, 6, 2, 9], 50)["rule"] == "model"
    got = choose([5, 6, 2, 9], 1)
    assert (got["rule"], got["tau"], got["min_logprob"]) == ("counts", None, None) and serve(got) == [3, 4, 2, 6]
    assert any(c["gain"] > 0 for c in got["candidates"])
    assert retrieval.hybrid_rule({"rule": "counts"}, "gate.json") == {"rule": "counts", "tau": None,
                                                                       "min_logprob": None}
