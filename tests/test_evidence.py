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
