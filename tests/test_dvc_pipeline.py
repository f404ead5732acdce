"""End to end: `dvc repro` on a tiny synthetic world in a scratch copy of the repository."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import kernels
from pipeline.audit import flatten
from pipeline.config import ROOT

pytestmark = pytest.mark.slow  # a scratch DVC repository in other processes

TINY = ["data.synth.n_events=60000", "data.synth.n_clusters=6", "data.synth.cold_clusters=1",
        "data.synth.n_users=2000"]
# Appended to the scratch copy's conf/config.yaml, so every composition (dvc exp run included)
# keeps the tiny model; its untrained adapter cannot pass the gate, hence the override.
TINY_CONF = """
model:
  cache_dir: {models}
finetune:
  samples_per_pair: 1
  batch_size: 8
  trainer: {{max_steps: 4, log_every_n_steps: 1, enable_progress_bar: false}}
gate:
  max_pairs: 10
  max_new_tokens: 6
  override_reason: tiny random model in CI
  min_held_out_triples: 50
# What no assertion here depends on, shortened: a random model's answers are noise at any length
# (decoding is most of bulk_infer's time), and evaluate's repeats and resamples only narrow intervals.
bulk_infer:
  max_new_tokens: 8
evaluate:
  repeat_pairs: 50
  bootstrap: 200
"""


def sh(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh clone-like copy: tracked and new files, no outputs, its own DVC cache and remote."""
    repo = tmp_path_factory.mktemp("repo")
    def git_files(*flags):
        return subprocess.run(["git", "ls-files", *flags], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.split()

    # What a clone would hold: tracked files plus new sources, not stage outputs lying around.
    listed = git_files() + [n for n in git_files("-o", "--exclude-standard") if not n.startswith(("work/", "metrics/"))]
    for name in listed:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    py = sys.executable
    conf = repo / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("- model: smollm2", "- model: tiny_random")
                    + TINY_CONF.format(models=ROOT / "models"))
    sh(repo, py, "-m", "pipeline.config")
    sh(repo, "git", "init", "-q")
    # The default remote lives in the user's home: releases here push to a scratch one instead.
    sh(repo, py, "-m", "dvc", "remote", "modify", "--local", "releases", "url", str(tmp_path_factory.mktemp("remote")))
    sh(repo, py, "-m", "pipeline.data", "synth", *TINY)
    sh(repo, py, "-m", "pipeline.data", "movielens")
    sh(repo, py, "-m", "dvc", "add", "-q", "data")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny world")
    return repo


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


def failed(repo: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode != 0, f"{' '.join(args)} should have failed:\n{done.stdout}"
    return done


def fails(repo: Path, *args: str) -> str:
    return failed(repo, *args).stderr


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

    # Tamper with one released table and record the tampered bytes in a second tag.
    path = repo / "tables/rag-2024-03-31.parquet"
    table, meta = pd.read_parquet(path), manifest.read(path)
    table.loc[0, "c_pred"] = (int(table.loc[0, "c_pred"]) + 1) % 6 or 1
    manifest.write_table(table, path, meta)
    sh(repo, py, "-m", "dvc", "commit", "-f", "-q", "bulk_infer")
    sh(repo, "git", "commit", "-qam", "tampered")
    sh(repo, "git", "tag", "-a", "tables/tampered", "-m", "tampered")
    changed = json.loads(sh(repo, *audit, "diff", "tables/2024-03", "tables/tampered"))
    assert changed["changed"] == 1 and changed["pairs"] == 30
    tampered = failed(repo, *audit, "verify", "tables/tampered")
    assert "differs from the record in its predictions" in tampered.stderr
    assert "predictions differ in 1 tables: rag-2024-03-31.parquet (1 pairs)" in tampered.stdout
    sh(repo, "git", "tag", "-d", "tables/tampered")

    # Same predictions, other bytes, recorded on another device class: the content decides, and agrees.
    sh(repo, "git", "reset", "-q", "--hard", "tables/2024-03")
    sh(repo, py, "-m", "dvc", "checkout", "-q", "-f")
    manifest.write_table(pd.read_parquet(path), path, {**manifest.read(path), "device_class": "cpu-elsewhere"})
    sh(repo, py, "-m", "dvc", "commit", "-f", "-q", "bulk_infer")
    sh(repo, "git", "commit", "-qam", "same predictions, other lineage")
    sh(repo, "git", "tag", "-a", "tables/relabelled", "-m", "relabelled")
    verified = sh(repo, *audit, "verify", "tables/relabelled")
    assert "every prediction of all 17 tables agrees" in verified
    assert f"recorded on cpu-elsewhere, rebuilt on {here}: another device class, so bytes are expected" in verified
    sh(repo, "git", "tag", "-d", "tables/relabelled")
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
    out = sh(repo, py, "-m", "dvc", "exp", "run", "-S", "refresh.until=2024-03-05", "-S", "retrieve.method=trend")
    assert "Running stage 'retrieve'" in out and "Stage 'finetune' didn't change, skipping" in out


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


def test_sweeps_by_queue_and_by_hydra_multirun_never_refit(repo):
    import time

    py = sys.executable
    sh(repo, py, "-m", "dvc", "exp", "run")  # back to conf/'s composition after earlier tests
    sh(repo, py, "-m", "dvc", "exp", "remove", "-q", "--all-commits")
    sh(repo, py, "-m", "dvc", "exp", "run", "--queue", "-S", "retrieve.method=frequency,trend",
       "-S", "retrieve.top_n=1,3")
    sh(repo, py, "-m", "dvc", "queue", "start")
    deadline = time.time() + 900
    while any(s in sh(repo, py, "-m", "dvc", "queue", "status") for s in ("Queued", "Running")):
        assert time.time() < deadline, "queued sweep did not finish"
        time.sleep(5)
    status = sh(repo, py, "-m", "dvc", "queue", "status")
    assert status.count("Success") == 4 and "Failed" not in status
    rows = json.loads(sh(repo, py, "-c", "import json; from pipeline import sweep; print(json.dumps(sweep.summary()))"))
    assert sorted((r["retrieve.method"], r["retrieve.top_n"]) for r in rows) == [
        ("frequency", 1), ("frequency", 3), ("trend", 1), ("trend", 3)]
    assert all(r["rag_refreshed"] is not None for r in rows)
    logs = [sh(repo, py, "-m", "dvc", "queue", "logs", r["experiment"]) for r in rows]
    # No refit anywhere (a queued copy checks the adapter out of DVC's run cache); the three settings
    # that differ from the baseline rebuild their tables.
    assert all("Running stage 'finetune'" not in log and "Running stage 'extract'" not in log for log in logs)
    assert sum("Running stage 'bulk_infer'" in log for log in logs) == 3

    out = sh(repo, py, "-m", "pipeline.sweep", "-m", "retrieve.method=frequency,trend", "retrieve.top_n=2")
    assert out.count("Running stage 'retrieve'") == 2 and out.count("Running stage 'bulk_infer'") == 2
    assert out.count("Stage 'finetune' didn't change, skipping") == 2 and "Running stage 'extract'" not in out
    assert "sweep: evaluate headline" in sh(repo, py, "-m", "pipeline.sweep", "summary")
