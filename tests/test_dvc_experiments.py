"""End to end: `dvc exp run`, queued and Hydra sweeps, and other data sets, on a built and
committed tiny world in a scratch copy of the repository."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.scratch_repo import failed, make, sh

pytestmark = pytest.mark.slow  # a scratch DVC repository in other processes


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Built and committed, as test_dvc_pipeline.py's first test leaves its own copy."""
    repo = make(tmp_path_factory)
    sh(repo, sys.executable, "-m", "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "repro")
    return repo


def test_exp_run_with_hydra_override_reruns_only_count(repo):
    py = sys.executable
    out = sh(repo, py, "-m", "dvc", "exp", "run", "-S", "count.top_k=3")
    assert "Stage 'extract' didn't change, skipping" in out and "Running stage 'count'" in out
    # top_k only changes the drift metrics: daily counts are the same, so no refit
    assert "Stage 'finetune' didn't change, skipping" in out
    assert json.loads((repo / "metrics/count/detail.json").read_text())["top_k"] == 3
    written = (repo / "params.yaml").read_bytes()
    assert b"top_k: 3" in written
    # python -m pipeline.config writes params.yaml itself, in the bytes of DVC's own composition.
    sh(repo, py, "-m", "pipeline.config", "count.top_k=3")
    assert (repo / "params.yaml").read_bytes() == written


def test_exp_run_refuses_a_wrong_type_when_composing_and_a_range_when_the_first_stage_loads(repo):
    """What `dvc exp run -S` loses (pipeline/schema.py): Hydra has no public hook after composition,
    so only types and enums fail in DVC's process, writing nothing; a value out of its range reaches
    params.yaml and the first stage DVC runs refuses it, in the line `python -m pipeline.config`
    prints, before that stage writes anything."""
    py = sys.executable
    # A setting no stage declares (ray.*) reruns nothing on a built workspace (the last experiment's,
    # count.top_k=3): DVC records it, and no stage refuses it until one runs.
    out = sh(repo, py, "-m", "dvc", "exp", "run", "-S", "count.top_k=3", "-S", "ray.workers=0")
    assert "Running stage" not in out and "workers: 0" in (repo / "params.yaml").read_text()

    params = (repo / "params.yaml").read_bytes()
    refused = failed(repo, py, "-m", "dvc", "exp", "run", "-S", "retrieve.method=random")
    assert "expected one of [frequency, trend]" in refused.stderr and "Running stage" not in refused.stdout
    assert (repo / "params.yaml").read_bytes() == params

    refused = failed(repo, py, "-m", "dvc", "exp", "run", "-S", "retrieve.top_n=0")
    ran = re.findall(r"Running stage '(\w+)'", refused.stdout)
    assert len(ran) == 1, refused.stdout
    refusal = f"{ran[0]}: {(repo / 'params.yaml').resolve()}: retrieve.top_n=0: expected >= 1\n"
    assert refusal in refused.stderr, refused.stderr
    assert "top_n: 0" in (repo / "params.yaml").read_text()
    sh(repo, py, "-m", "pipeline.config")  # back to conf/'s composition
    sh(repo, py, "-m", "dvc", "checkout", "-q", "-f")  # DVC removed the refusing stage's old outputs


def test_moving_the_refresh_date_reruns_retrieval_and_decodes_only_new_prompts(repo):
    py = sys.executable
    sh(repo, py, "-m", "dvc", "exp", "run")  # back to conf/'s composition after earlier tests
    shutil.rmtree(repo / "work/.infer_cache")  # earlier tests decoded every date's prompts
    sh(repo, py, "-m", "dvc", "exp", "run", "-S", "refresh.until=2024-03-03")
    out = sh(repo, py, "-m", "dvc", "exp", "run", "-S", "refresh.until=2024-03-05")
    assert "Running stage 'retrieve'" in out and "Running stage 'bulk_infer'" in out
    # count measures the month by its refresh dates (count/detail.json); its daily counts, the same bytes,
    # leave the fine-tune and the gate alone.
    assert "Running stage 'count'" in out
    for stage in ("extract", "finetune", "gate"):
        assert f"Stage '{stage}' didn't change, skipping" in out
    tables = json.loads((repo / "metrics/bulk_infer.json").read_text())["tables"]
    per_table = json.loads((repo / "metrics/bulk_infer/detail.json").read_text())["per_table"]
    decoded = json.loads((repo / "metrics/timing/bulk_infer.json").read_text())["decoded"]
    assert tables == 4 and decoded == per_table["rag-2024-03-05"]["new_prompts"] > 0
    assert "Running stage 'evaluate'" in out
    assert "metrics/evaluate.json" in sh(repo, py, "-m", "dvc", "metrics", "diff", "HEAD")


def test_sweeps_by_queue_and_by_hydra_multirun_never_refit(repo):
    import time

    py = sys.executable
    sh(repo, py, "-m", "dvc", "exp", "run")  # back to conf/'s composition after earlier tests
    sh(repo, py, "-m", "dvc", "exp", "remove", "-q", "--all-commits")
    sh(repo, py, "-m", "dvc", "exp", "run", "--queue", "-S", "retrieve.method=frequency,trend")
    sh(repo, py, "-m", "dvc", "queue", "start")
    deadline = time.time() + 900
    while any(s in sh(repo, py, "-m", "dvc", "queue", "status") for s in ("Queued", "Running")):
        assert time.time() < deadline, "queued sweep did not finish"
        time.sleep(5)
    status = sh(repo, py, "-m", "dvc", "queue", "status")
    assert status.count("Success") == 2 and "Failed" not in status
    rows = json.loads(sh(repo, py, "-c", "import json; from pipeline import sweep; print(json.dumps(sweep.summary()))"))
    assert sorted(r["retrieve.method"] for r in rows) == ["frequency", "trend"]  # the summary's columns: what varies
    assert all(r["rag_refreshed"] is not None for r in rows)
    logs = [sh(repo, py, "-m", "dvc", "queue", "logs", r["experiment"]) for r in rows]
    # No refit anywhere (a queued copy checks the adapter out of DVC's cache); the setting that
    # differs from the baseline (frequency, top_n 1) rebuilds its tables, the baseline's reruns nothing.
    assert all("Running stage 'finetune'" not in log and "Running stage 'extract'" not in log for log in logs)
    assert sum("Running stage 'bulk_infer'" in log for log in logs) == 1

    out = sh(repo, py, "-m", "pipeline.sweep", "-m", "retrieve.method=frequency,trend", "retrieve.top_n=2")
    assert out.count("Running stage 'retrieve'") == 2 and out.count("Running stage 'bulk_infer'") == 2
    assert out.count("Stage 'finetune' didn't change, skipping") == 2 and "Running stage 'extract'" not in out
    assert "sweep: evaluate headline" in sh(repo, py, "-m", "pipeline.sweep", "summary")


def test_movielens_switches_the_whole_pipeline(repo):
    py = sys.executable
    out = sh(repo, py, "-m", "dvc", "exp", "run", "-S", "data=movielens")
    assert "Running stage 'extract'" in out and "Running stage 'count'" in out
    extract = json.loads((repo / "metrics/extract/detail.json").read_text())
    assert extract["dataset"] == "movielens" and extract["clusters"] == 41
    assert json.loads((repo / "metrics/extract.json").read_text())["triples"] > 10000
    assert json.loads((repo / "metrics/count.json").read_text())["pairs_compared"] > 0


def test_any_contract_dataset_runs_without_code_change(repo, tmp_path):
    py = sys.executable
    shutil.copytree(repo / "data/synthetic", tmp_path / "elsewhere")
    sh(repo, py, "-m", "pipeline.config", "data=contract", f"data.path={tmp_path / 'elsewhere'}", "period.month=2024-03")
    out = sh(repo, py, "-m", "dvc", "repro")
    assert "Running stage 'extract'" in out
    assert json.loads((repo / "metrics/extract/detail.json").read_text())["dataset"] == "contract"
