"""Inputs checked against what built them (pipeline/lineage.py, run by `python -m pipeline STAGE`)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline import lineage
from tests.conftest import TINY_WORLD, compose

UPSTREAM = ("extract", "count", "finetune", "gate", "retrieve")
# The default world instead of the dense one (its cold clusters fewer than the tiny world's clusters).
SWITCHED = ("data=synthetic", "data.synth.cold_clusters=1")


@pytest.fixture
def recorded(world, tmp_path):
    """A copy of the session world whose outputs carry the records the stage runner leaves."""
    where = tmp_path / "w"
    shutil.copytree(world, where, ignore=shutil.ignore_patterns("tables", ".infer_cache"))
    cfg = compose(where, *TINY_WORLD)
    for stage in UPSTREAM:
        lineage.record(cfg, stage)
    return where, cfg


def test_a_stage_run_before_its_inputs_exist_names_the_stage_to_run(tmp_path):
    cfg = compose(tmp_path, *TINY_WORLD)
    for stage, missing, producer in (("count", "triples.parquet", "extract"), ("retrieve", "daily_counts", "count"),
                                     ("finetune", "daily_counts", "count"), ("gate", "adapter", "finetune"),
                                     ("bulk_infer", "adapter", "finetune"), ("evaluate", "tables", "bulk_infer")):
        with pytest.raises(FileNotFoundError, match=rf"{missing}.*: missing; run the {producer} stage \(dvc repro\)$"):
            lineage.check(cfg, stage)


def test_inputs_built_under_the_same_settings_pass(recorded):
    _, cfg = recorded
    for stage in ("gate", "bulk_infer"):
        lineage.check(cfg, stage)


def test_switching_the_dataset_stops_bulk_infer_and_the_gate(recorded):
    where, _ = recorded
    switched = compose(where, *TINY_WORLD, *SWITCHED)
    for stage in ("gate", "bulk_infer", "retrieve"):
        with pytest.raises(ValueError, match=r"extract/triples.parquet \(behind .*\): built with data.name="
                                             r"\"synthetic_dense\", but params.yaml has \"synthetic\"; run dvc repro"):
            lineage.check(switched, stage)
    # Under dvc repro, DVC reruns what is stale before the stage: its dvc.lock decides, not the records.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DVC_ROOT", str(where))
        lineage.check(switched, "bulk_infer")
    # A dataset at another path: the fine-tune read the old one's clusters.
    moved = compose(where, *TINY_WORLD, f"data.path={where / 'other'}")
    with pytest.raises(ValueError, match=r"finetune/adapter: built from .*/data/clusters.parquet, not "
                                         r".*/other/clusters.parquet; run dvc repro"):
        lineage.check(moved, "bulk_infer")


def test_an_input_rebuilt_after_its_consumer_is_named(recorded):
    where, cfg = recorded
    daily = Path(cfg.paths.daily_counts)
    daily.write_bytes(daily.read_bytes() + b"rebuilt")  # count reran, the fine-tune did not
    lineage.record(cfg, "count")
    with pytest.raises(ValueError, match=r"finetune/adapter: built from another .*count/daily_counts.parquet than "
                                         "the one there now; run dvc repro"):
        lineage.check(cfg, "gate")


def test_an_input_its_record_does_not_vouch_for_is_refused_and_a_touched_one_is_judged(recorded):
    import json

    where, cfg = recorded
    switched = compose(where, *TINY_WORLD, *SWITCHED)
    triples = Path(switched.paths.triples)
    os.utime(triples, ns=(1, 1))  # as `dvc checkout` leaves the same bytes: the record still describes them
    with pytest.raises(ValueError, match=r"extract/triples.parquet: built with data.name="):
        lineage.check(switched, "count")
    lineage.check(cfg, "count")
    record = triples.with_name(".triples.parquet.lineage")
    kept, rows = record.read_text(), triples.read_bytes()
    # Edited (or another build's file copied in), a missing record, an unreadable or a foreign one:
    # no dvc.lock lists these paths, so nothing vouches for the file.
    for problem, change in (
            ("changed since the extract stage wrote it", lambda: triples.write_bytes(triples.read_bytes() + b"x")),
            ("no lineage record describes it .*", record.unlink),
            ("its lineage record is unreadable", lambda: record.write_text("{not json")),
            ("its lineage record is the 'count' stage's, not the extract stage's",
             lambda: record.write_text(json.dumps({**json.loads(kept), "stage": "count"})))):
        change()
        with pytest.raises(ValueError, match=rf"extract/triples.parquet: {problem}; run dvc repro$"):
            lineage.check(cfg, "count")
        record.write_text(kept)
        triples.write_bytes(rows)
    # Deep in the chain too: the gate's verdict edited by hand stops bulk_infer.
    lineage.check(cfg, "count")
    gate = Path(cfg.paths.metrics) / "gate.json"
    verdict = json.loads(gate.read_text())
    gate.write_text(json.dumps({**verdict, "passed": not verdict["passed"]}, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ValueError, match=r"metrics/gate.json: changed since the gate stage wrote it; run dvc repro$"):
        lineage.check(cfg, "bulk_infer")


def test_a_long_setting_is_named_by_the_first_key_that_differs(recorded):
    where, _ = recorded
    other = compose(where, *TINY_WORLD, "finetune.trainer.max_steps=3")
    with pytest.raises(ValueError) as refused:
        lineage.check(other, "gate")
    assert str(refused.value).endswith("built with finetune.trainer.max_steps=2, but params.yaml has 3; run dvc repro")
    assert len(str(refused.value)) < 300


def test_under_dvc_repro_an_output_outside_the_work_tree_is_refused_before_the_stage_runs(tmp_path, monkeypatch):
    from tests.conftest import ROOT, events_frame, run_stage, write_dataset

    write_dataset(tmp_path / "data", events_frame([(1, 100 * (i % 4), 60 * i, 0.9) for i in range(8)]))
    monkeypatch.setenv("DVC_ROOT", str(ROOT))  # as DVC sets it for a stage's command
    error = run_stage(monkeypatch, tmp_path, "extract")
    assert error == (f"extract: {tmp_path}/work/extract/sequences.parquet: outside the repository's work tree ({ROOT}), "
                     "where dvc repro tracks no output; set the paths.* setting to a path inside it")
    assert not (tmp_path / "work").exists()
    monkeypatch.delenv("DVC_ROOT")
    assert run_stage(monkeypatch, tmp_path, "extract") is None  # a direct run may write there
    assert (tmp_path / "work" / "extract" / ".triples.parquet.lineage").is_file()


def test_an_input_recorded_without_one_of_its_stages_inputs_is_named(recorded):
    import json

    _, cfg = recorded
    record = Path(cfg.paths.adapter).with_name(".adapter.lineage")
    found = json.loads(record.read_text())
    del found["inputs"][cfg.paths.daily_counts]  # as recorded before dvc.yaml declared that input
    record.write_text(json.dumps(found))
    with pytest.raises(ValueError, match=rf"finetune/adapter: built without {cfg.paths.daily_counts}; run dvc repro$"):
        lineage.check(cfg, "gate")


def test_a_composition_as_dvc_exp_run_makes_it_refuses_a_users_file_at_an_output_path(tmp_path):
    """DVC's Hydra composition (`dvc exp run -S`) resolves conf/ in its own process, then checks the
    outputs out with force: the output paths are checked while it resolves, nothing is written."""
    from dvc.utils.hydra import compose_and_dump

    from pipeline import config

    notes, out = tmp_path / "notes.txt", tmp_path / "params.yaml"
    notes.write_text("a user's notes\n")
    with pytest.raises(Exception, match=r"notes.txt: a file the count stage did not write"):
        compose_and_dump(out, str(config.CONF_DIR), None, "config", str(config.ROOT), [f"paths.daily_counts={notes}"])
    assert notes.read_text() == "a user's notes\n" and not out.exists()
    compose_and_dump(out, str(config.CONF_DIR), None, "config", str(config.ROOT), [])
    assert out.read_text() == config.PARAMS.read_text()  # the check leaves the composition's bytes alone
