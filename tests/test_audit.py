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


def test_within_one_class_bytes_decide_and_across_classes_the_predictions_do():
    same = Verdict("cpu-avx2-amd", "cpu-avx2-amd")
    same.pairs_differ = {"base.parquet": 0}
    assert same.failure("r") is None
    assert "rebuilt byte for byte" in same.lines("r", 1)[-1]
    same.bytes_differ = ["tables/base.parquet"]
    assert same.failure("r").endswith("differs from the record in its bytes within one device class (cpu-avx2-amd), "
                                      "where bytes must match")

    vendors = Verdict("cpu-avx2-intel", "cpu-avx2-amd")
    vendors.bytes_differ, vendors.pairs_differ, vendors.adapter_max_abs_diff = (
        ["tables/base.parquet", "work/finetune/adapter"], {"base.parquet": 0}, 3e-8)
    assert vendors.failure("r") is None
    lines = "\n".join(vendors.lines("r", 1))
    assert ("recorded on cpu-avx2-intel, rebuilt on cpu-avx2-amd: another device class, so bytes are expected to "
            "differ and the content decides") in lines
    assert "every prediction of all 1 tables agrees" in lines and "differ by at most 3e-08" in lines

    vendors.pairs_differ = {"base.parquet": 2}
    assert vendors.failure("r").endswith("differs from the record in its predictions")
    assert "predictions differ in 1 tables: base.parquet (2 pairs)" in "\n".join(vendors.lines("r", 1))
