"""End to end: `dvc repro` on a tiny synthetic world in a scratch copy of the repository, then
releases and audits of what it built."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from pipeline import kernels
from pipeline.audit import flatten
from tests.scratch_repo import failed, fails, make, sh

pytestmark = pytest.mark.slow  # a scratch DVC repository in other processes


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make(tmp_path_factory)


def test_repro_runs_then_is_a_no_op(repo):
    py = sys.executable
    first = sh(repo, py, "-m", "dvc", "repro")
    for stage in ("extract", "count", "finetune", "gate", "retrieve", "bulk_infer", "evaluate"):
        assert f"Running stage '{stage}'" in first
    assert len(list((repo / "tables").glob("rag-2024-03-*.parquet"))) == 16 and (repo / "tables/base.parquet").exists()
    assert json.loads((repo / "metrics/gate.json").read_text())["override_reason"] == "tiny random model in CI"
    assert (repo / "work/finetune/adapter/adapter_model.safetensors").exists()
    extract = json.loads((repo / "metrics/extract.json").read_text())
    detail = json.loads((repo / "metrics/extract/detail.json").read_text())
    assert extract["triples"] > 0 and detail["negative_events"] > 0 and detail["repeats_collapsed"] > 0
    assert (repo / "work/count/daily_counts.parquet").exists()
    again = sh(repo, py, "-m", "dvc", "repro")
    assert "Running stage" not in again and "Data and pipelines are up to date" in again
    assert "up to date" in sh(repo, py, "-m", "dvc", "status")
    assert "mean_jaccard" in sh(repo, py, "-m", "dvc", "metrics", "show")
    # `dvc metrics show` puts every key of every metrics file in one table row: headline figures
    # only, a handful per file, none per date, table or bucket (that detail is in metrics/<stage>/).
    (workspace,) = json.loads(sh(repo, py, "-m", "dvc", "metrics", "show", "--json")).values()
    for path, found in workspace["data"].items():
        keys = list(flatten(found["data"]))
        detail = [k for k in keys if re.search(r"\d{4}-\d\d|(^|\.)(by|per)_", k)]
        assert len(keys) <= 12 and not detail, (path, keys)
    assert "## Findings" in (repo / "reports/evaluate.md").read_text()
    rendered = json.loads(sh(repo, py, "-m", "dvc", "plots", "show", "--json", "--split"))
    assert {"hit_rate_by_day", "topk_overlap"} <= set(rendered["data"])
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "repro")
    # A committed revision serves lookups through DVC, from its cache rather than the work tree.
    shutil.rmtree(repo / "tables")
    served = sh(repo, py, "-m", "pipeline.lookup", "0", "1", "--rev", "HEAD", "--date", "2024-03-04")
    assert "tables/rag-2024-03-03.parquet @ HEAD" in served and "refresh date 2024-03-03" in served
    sh(repo, py, "-m", "dvc", "checkout", "-q")


def test_repro_and_exp_run_leave_a_users_file_at_an_output_path_alone(repo):
    """DVC deletes a stage's outputs before the stage runs unless they persist (dvc.yaml): a path
    edited into params.yaml that names a user's file is refused by the stage, and the file stays.
    `dvc exp run -S` checks outputs out with force before any stage runs: its composition refuses
    the path while DVC resolves it (lineage.outputs_checked), and params.yaml is not rewritten."""
    py = sys.executable
    notes = repo / "notes.txt"
    notes.write_text("a user's notes\n")
    params = repo / "params.yaml"
    try:
        params.write_text(params.read_text().replace("sequences: work/extract/sequences.parquet",
                                                     "sequences: notes.txt", 1))
        assert "notes.txt" in params.read_text()
        err = fails(repo, py, "-m", "dvc", "repro", "extract")
        assert "notes.txt: a file the extract stage did not write" in err and "Traceback" not in err
        assert notes.read_text() == "a user's notes\n"
        sh(repo, "git", "checkout", "--", "params.yaml")
        err = fails(repo, py, "-m", "dvc", "exp", "run", "-S", "paths.daily_counts=notes.txt", "count")
        assert "notes.txt: a file the count stage did not write" in err and "Traceback" not in err
        assert notes.read_text() == "a user's notes\n" and "notes.txt" not in params.read_text()
    finally:
        sh(repo, "git", "checkout", "--", "params.yaml")
        notes.unlink()


def test_release_then_audit_list_show_diff_and_verify(repo, tmp_path):
    import pandas as pd

    from pipeline import manifest

    py = sys.executable
    audit = (py, "-m", "pipeline.audit")
    readme = repo / "README.md"
    readme.write_text(readme.read_text() + "\nedited\n")
    assert "uncommitted changes" in fails(repo, *audit, "release")
    sh(repo, "git", "checkout", "README.md")
    # Rebuilt from a warm answer cache: the outputs keep their bytes, so the release made from them
    # verifies below from the cold cache of a fresh worktree.
    sh(repo, py, "-m", "dvc", "repro", "--force", "--single-item", "bulk_infer")
    assert json.loads((repo / "metrics/timing/bulk_infer.json").read_text())["decoded"] == 0
    assert sh(repo, "git", "status", "--porcelain", "--untracked-files=no") == ""
    assert "make one from a built, committed state with python -m pipeline.audit release" in sh(repo, *audit, "list")
    assert "released tables/2024-03" in sh(repo, *audit, "release")
    assert "already exists" in fails(repo, *audit, "release")
    listed = json.loads(sh(repo, *audit, "list", "--json"))
    assert "overridden: tiny random model in CI" in sh(repo, *audit, "list").splitlines()[1]
    assert [r["month"] for r in listed] == ["2024-03"] and listed[0]["override"] == "tiny random model in CI"
    shown = json.loads(sh(repo, *audit, "show", "tables/2024-03", "--pair", "0", "1", "--json"))
    assert "    Recent interests:" in sh(repo, *audit, "show", "tables/2024-03", "--pair", "0", "1")
    assert shown["lineage"]["adapter_hash"] and shown["pair"]["prompt"].startswith("Recent interests:")
    assert shown["pair"]["prompt_template_matches"] is True
    assert "not a revision" in fails(repo, *audit, "show", "no-such-tag")

    # A second clone holds no outputs and shares only the remote, to which the release was pushed:
    # it reads the release from there, and verifies it (a fresh clone's message for an empty
    # remote is in test_cli.py).
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    shutil.copy(repo / ".dvc/config.local", clone / ".dvc/config.local")
    assert not (clone / ".dvc/cache").exists()
    assert json.loads(sh(clone, *audit, "show", "tables/2024-03", "--pair", "0", "1", "--json"))["pair"] == shown["pair"]
    assert "refresh date 2024-03-31" in sh(clone, py, "-m", "pipeline.lookup", "0", "1", "--rev", "tables/2024-03")
    verified = sh(clone, *audit, "verify", "tables/2024-03")
    here = kernels.device_class()
    assert f"recorded on {here}, rebuilt on {here}" in verified and "expected to differ" not in verified
    assert "all 17 tables and every other output rebuilt byte for byte" in verified

    # Tamper with one prediction of one released table, record the tampered bytes in a second tag,
    # and say the table was built on another device class: verify reads the class from the record,
    # lets the bytes differ, and catches the changed prediction. (The verdicts of every other
    # combination are in test_audit.py; each rebuild here costs a whole tiny pipeline.)
    path = repo / "tables/rag-2024-03-31.parquet"
    table, meta = pd.read_parquet(path), manifest.read(path)
    table.loc[0, "c_pred"] = (int(table.loc[0, "c_pred"]) + 1) % 6 or 1
    manifest.write_table(table, path, {**meta, "device_class": "cpu-elsewhere"})
    sh(repo, py, "-m", "dvc", "commit", "-f", "-q", "bulk_infer")
    sh(repo, "git", "commit", "-qam", "tampered")
    sh(repo, "git", "tag", "-a", "tables/tampered", "-m", "tampered")
    changed = json.loads(sh(repo, *audit, "diff", "tables/2024-03", "tables/tampered"))
    assert changed["changed"] == 1 and changed["pairs"] == 30
    tampered = failed(repo, *audit, "verify", "tables/tampered")
    assert "differs from the record in its predictions" in tampered.stderr
    assert f"recorded on cpu-elsewhere, rebuilt on {here}: another device class" in tampered.stdout
    assert "predictions differ in 1 tables: rag-2024-03-31.parquet (1 pairs)" in tampered.stdout
    sh(repo, "git", "tag", "-d", "tables/tampered")
    sh(repo, "git", "reset", "-q", "--hard", "tables/2024-03")
    sh(repo, py, "-m", "dvc", "checkout", "-q", "-f")

    # Month rollover: another period.month trains its own adapter on its own window and is released
    # beside the first, which stays servable.
    sh(repo, py, "-m", "pipeline.config", "period.month=2024-02")
    out = sh(repo, py, "-m", "dvc", "repro")
    assert "Running stage 'finetune'" in out and "Stage 'extract' didn't change, skipping" in out
    assert json.loads((repo / "metrics/finetune/detail.json").read_text())["train_window"] == ["2024-01-04", "2024-01-27"]
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "February")
    assert "released tables/2024-02" in sh(repo, *audit, "release")
    assert sorted(r["month"] for r in json.loads(sh(repo, *audit, "list", "--json"))) == ["2024-02", "2024-03"]
    assert "refresh date 2024-03-31" in sh(repo, py, "-m", "pipeline.lookup", "0", "1", "--rev", "tables/2024-03")
    sh(repo, "git", "reset", "-q", "--hard", "tables/2024-03")
    sh(repo, py, "-m", "dvc", "checkout", "-q", "-f")
