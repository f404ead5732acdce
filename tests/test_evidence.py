"""The evidence of RAG prompts: the pair's line, else its last cluster's, as the back-off chain serves it."""
from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from pipeline import db, evidence
from pipeline.llm import prompts
from tests.conftest import compose
from tests.test_finetune import daily_frame

D1, D3 = date(2024, 3, 1), date(2024, 3, 3)


def test_last_successors_rank_what_followed_c2_alone_in_the_window(tmp_path):
    cfg = compose(tmp_path)
    path = tmp_path / "daily.parquet"
    daily_frame([("2024-02-27", 0, 1, 2, 3), ("2024-02-28", 3, 1, 2, 2), ("2024-02-28", 0, 1, 4, 4),
                 ("2024-02-20", 0, 1, 5, 50),  # before the 7-day window
                 ("2024-03-01", 0, 1, 6, 99)]).to_parquet(path)  # the refresh day itself: never read
    got = evidence.last_successors(db.connect(cfg), str(path), [D1], 7)
    # 2 followed c2=1 five times over two different c1, 4 four times
    assert got.c2.tolist() == [1] and got.successors.tolist() == [[2, 4]]


def test_a_last_cluster_silent_in_the_window_takes_its_successors_of_the_longer_fallback_window(tmp_path):
    cfg = compose(tmp_path)
    path = tmp_path / "daily.parquet"
    daily_frame([("2024-02-28", 0, 1, 2, 3),  # c2 = 1: a recent successor, 2
                 ("2024-02-10", 0, 1, 4, 9),  # ... and the window's top two, 4 and 2: 4 joins after 2
                 ("2024-02-11", 3, 1, 5, 1),
                 ("2024-02-12", 0, 3, 6, 2),  # c2 = 3: nothing in the last 7 days, 6 before
                 ("2024-01-01", 0, 7, 8, 5)]).to_parquet(path)  # c2 = 7: before the 28 days too
    con = db.connect(cfg)
    got = evidence.last_successors(con, str(path), [D1], 7, 28)
    assert got.c2.tolist() == [1, 3] and got.successors.tolist() == [[2, 4], [6]]
    assert evidence.last_successors(con, str(path), [D1], 7, 7).successors.tolist() == [[2]]  # no fallback
    frame = pd.DataFrame({"c1": [0, 0, 0], "c2": [1, 3, 7], "day": [D1, D1, D1]})
    no_pairs = pd.DataFrame({"refresh_date": pd.to_datetime([]), "c1": [], "c2": [], "retrieved": [], "support": []})
    _, back = evidence.lines(frame, "day", no_pairs, got, 1, "backoff")
    assert back.tolist() == [[2], [6], []]


def test_the_last_line_backs_off_only_where_the_pair_has_no_line_and_never_names_c1():
    found = pd.DataFrame({"refresh_date": pd.to_datetime([D1, D1]), "c1": [0, 2], "c2": [1, 1],
                          "retrieved": [[7], [3]], "support": [[5], [2]]})
    last = pd.DataFrame({"refresh_date": pd.to_datetime([D1, D1, D3]), "c2": [1, 0, 1],
                         "successors": [[2, 4], [1, 5], [6, 7]]})
    frame = pd.DataFrame({"c1": [0, 2, 3, 1, 4], "c2": [1, 1, 1, 0, 2], "day": [D1, D1, D1, D1, D1]})
    retrieved, back = evidence.lines(frame, "day", found, last, 3, "backoff")
    # (0, 1) has its own line; (2, 1) is too thin (2 < 3): c1 2 tops c2's list, so the runner-up 4;
    # (3, 1) has none: c2's top 2; (1, 0): 1 is c1, so 5; (4, 2): c2 = 2 has no successors
    assert retrieved.tolist() == [[7], [], [], [], []]
    assert back.tolist() == [[], [4], [2], [5], []]
    retrieved, back = evidence.lines(frame, "day", found, last, 3, "instance")
    assert retrieved.tolist() == [[7], [], [], [], []] and back.tolist() == [[]] * 5
    with pytest.raises(ValueError, match="prompts.evidence='both'"):
        evidence.lines(frame, "day", found, last, 3, "both")


def test_a_prompt_shows_the_last_line_after_the_history_and_before_the_question():
    names = {0: "chess", 1: "street food", 2: "jazz"}
    text = prompts.for_pair(names, 0, 1, last=[2])
    assert text == "Recent interests:\n- chess\n- street food\nRecently after the last one: jazz\nNext new interest:"
    assert prompts.for_pair(names, 0, 1) != text
