"""audit verify's verdict: bytes first, content where bytes differ (the end-to-end run is in
test_dvc_pipeline.py)."""
from __future__ import annotations

import pandas as pd

from pipeline.audit import Verdict, pairs_differ


def table(preds):
    return pd.DataFrame({"c1": [0, 0, 1], "c2": [1, 2, 2], "c_pred": pd.array(preds, dtype="Int32")})


def test_pairs_differ_counts_changed_missing_and_null_predictions():
    assert pairs_differ(table([2, 1, None]), table([2, 1, None])) == 0
    assert pairs_differ(table([2, 1, None]), table([3, 1, 0])) == 2
    assert pairs_differ(table([2, 1, None]), table([2, 1, None]).iloc[:2]) == 1


def test_byte_differences_fail_unless_content_is_asked_for_and_every_prediction_agrees():
    same = Verdict("cpu-avx2", "cpu-avx2")
    same.pairs_differ = {"base.parquet": 0}
    assert same.failure("r", content=False) is None
    assert "rebuilt byte for byte" in same.lines("r", 1)[-1]

    moved = Verdict("cuda-NVIDIA H100", "cpu-avx2")
    moved.bytes_differ, moved.pairs_differ, moved.adapter_max_abs_diff = ["tables/base.parquet"], {"base.parquet": 0}, 3e-8
    assert "every prediction agrees: --content accepts that" in moved.failure("r", content=False)
    assert moved.failure("r", content=True) is None
    lines = "\n".join(moved.lines("r", 1))
    assert "recorded on cuda-NVIDIA H100, rebuilt on cpu-avx2" in lines and "differ by at most 3e-08" in lines

    moved.pairs_differ = {"base.parquet": 2}
    assert moved.failure("r", content=True).endswith("differs from the record in its predictions")
