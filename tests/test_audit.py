"""audit verify's verdict: bytes first, content where bytes differ (the end-to-end run is in
test_dvc_pipeline.py)."""
from __future__ import annotations

import json

import pandas as pd

from pipeline import audit
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


ROW = {"tag": "tables/2024-03", "date": "2024-04-01", "month": "2024-03", "exact_match": 0.25, "test_recall": 0.5,
       "passed": False, "override": "tiny random model in CI", "hit_fixed": 0.123456, "hit_rag_refreshed": 0.2}


def test_list_is_a_table_by_default_json_with_the_flag_and_an_empty_list_says_how_to_release(monkeypatch, capsys):
    monkeypatch.setattr(audit, "listing", lambda: [])
    audit.main(["list"])
    assert capsys.readouterr().out == ("no releases yet (no tables/* tag); make one from a built, committed state "
                                       "with python -m pipeline.audit release\n")
    audit.main(["list", "--json"])
    assert json.loads(capsys.readouterr().out) == []
    monkeypatch.setattr(audit, "listing", lambda: [ROW, {**ROW, "tag": "tables/2024-04", "month": "2024-04",
                                                         "passed": True, "override": None, "hit_fixed": None}])
    audit.main(["list"])
    head, first, second = capsys.readouterr().out.splitlines()
    assert head.split() == ["tag", "date", "month", "exact_match", "test_recall", "hit_fixed", "hit_rag_refreshed",
                            "gate"]
    assert first.split()[:7] == ["tables/2024-03", "2024-04-01", "2024-03", "0.2500", "0.5000", "0.1235", "0.2000"]
    assert first.endswith("overridden: tiny random model in CI") and second.split()[5:] == ["0.2000", "passed"]
    assert first.index("0.5000") == second.index("0.5000")  # columns line up
    audit.main(["list", "--json"])
    assert json.loads(capsys.readouterr().out)[0] == ROW


def test_show_reads_as_text_with_the_pair_and_its_prompt(monkeypatch, capsys):
    gate = {"passed": True, "exact_match": 0.5, "test_recall": 0.75, "override_reason": None}
    lineage = {k: f"{k}-0123456789abcdef" for k in audit.lookup.LINEAGE} | {
        "period": "2024-03", "strategy": "rag", "refresh_date": "2024-03-29", "decoding": "constrained",
        "gate": gate, "packages": {"torch": "2.5.1", "peft": "0.13.2"}, "params": {"a": {"b": 1, "c": 2}}}
    pair = {"c1": 0, "c2": 1, "c_pred": 3, "description": "jazz", "valid": True, "served": "model", "output": "3",
            "retrieved": [3], "table": "tables/rag-2024-03-29.parquet", "rev": "abc", "lineage": lineage,
            "prompt": "Recent interests:\nline two", "prompt_template_matches": False}
    shown = {"rev": "tables/2024-03", "commit": "f" * 40, "tables": ["base.parquet", "rag-2024-03-29.parquet"],
             "lineage": {k: v for k, v in lineage.items()}, "pair": pair}
    monkeypatch.setattr(audit, "show", lambda rev, p: shown)
    audit.main(["show", "tables/2024-03", "--pair", "0", "1"])
    text = capsys.readouterr().out
    assert text.startswith("tables/2024-03 (commit ffffffffffff): 2 tables, base.parquet, rag-2024-03-29.parquet\n")
    assert "  gate passed, exact match 0.5, test recall 0.75\n" in text and "  2 settings (--json prints them)\n" in text
    assert "  packages peft 0.13.2, torch 2.5.1\n" in text and "adapter adapter_hash" in text
    assert "(0, 1) -> 3: jazz\n" in text
    assert text.endswith("  prompt (this checkout's template; the table's differs):\n    Recent interests:\n"
                         "    line two\n")
    audit.main(["show", "tables/2024-03", "--json"])
    assert json.loads(capsys.readouterr().out)["pair"]["prompt"] == pair["prompt"]


def test_release_refuses_a_workspace_whose_data_or_outputs_live_outside_the_repository(tmp_path):
    from pipeline import config

    for override, named in ((f"data.path={tmp_path / 'data'}", "(data.path)"),
                            (f"paths.tables={tmp_path / 'tables'}", "(paths.tables)")):
        try:
            audit.release(config.compose([override]))
        except audit.AuditError as refused:
            assert str(refused).startswith(f"{tmp_path}") and named in str(refused)
            assert "outside the repository" in str(refused)
        else:
            raise AssertionError(f"released with {override}")
