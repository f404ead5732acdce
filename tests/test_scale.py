"""Issue 32 at small scale: the estimate bulk_infer prints before a long decode, and the 1,000-cluster
preset's path (benchmarks/scale) at a few dozen clusters through every stage."""
from __future__ import annotations

import hashlib
import re
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.scale import run as scale
from pipeline.data import contract, synth
from pipeline.llm import pool
from pipeline.stages import bulk_infer
from tests.conftest import run_stage


def test_the_estimate_line_names_prompts_time_and_rate():
    assert bulk_infer.estimate_line(999_000, 87.0) == (
        "bulk_infer: 999,000 prompts to decode; about 3 h 11 min at 87 prompts/s (first shard)")
    assert bulk_infer.estimate_line(5_000, 100.0).endswith("about 50 s at 100 prompts/s (first shard)")
    assert "about 8 min at" in bulk_infer.estimate_line(50_000, 100.0)


def test_the_estimate_comes_once_after_the_first_shard_and_not_for_one_shard(tmp_path, capsys):
    decoded = []

    def decode(shard, advance, exclude=None, seeds=None):
        decoded.append(len(shard))
        return [("an answer", -1.0)] * len(shard)

    cache = bulk_infer.Forecast(tmp_path, {"model": "fake"})
    cache.arm(25, workers=1)
    got = pool._InProcess(decode).fill(cache, [f"prompt {i}" for i in range(25)], shard_size=10)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bulk_infer:")]
    assert len(got) == 25 and decoded == [10, 10, 5]
    assert len(lines) == 1 and re.fullmatch(r"bulk_infer: 25 prompts to decode; about \d+ (s|min|h \d+ min) at "
                                            r"[\d,]+ prompts/s \(first shard\)", lines[0]), lines
    assert len(bulk_infer.Forecast(tmp_path, {"model": "fake"}).load()) == 25  # every shard still stored
    cache.arm(5, workers=1)
    pool._InProcess(decode).fill(cache, [f"other {i}" for i in range(5)], shard_size=10)
    assert "prompts to decode" not in capsys.readouterr().out


@pytest.mark.slow
def test_the_scale_preset_runs_every_stage_at_a_few_dozen_clusters(tmp_path, monkeypatch):
    """benchmarks/scale's settings (data=synthetic_1000's keyed world at 24 clusters, the tiny model)
    through every stage in this process, and bulk_infer again from an empty answer cache into other
    tables: the same bytes."""
    settings = scale.overrides(tmp_path, 24, 1, ["data.synth.n_events=20000", "data.synth.n_users=500",
                                                 "bulk_infer.max_new_tokens=1", "refresh.until=2024-03-05"])
    from pipeline import config

    data = config.compose(settings).data
    assert data.synth.pair_noise == "keyed"
    synth.generate(data.synth, data.time_range, data.path)
    for stage in ("extract", "count", "finetune", "gate", "retrieve", "bulk_infer", "evaluate"):
        assert run_stage(monkeypatch, tmp_path, stage, *settings) is None, stage
    again = [*settings, f"paths.tables={tmp_path / 'again'}", f"paths.infer_cache={tmp_path / 'again_cache'}"]
    assert run_stage(monkeypatch, tmp_path, "bulk_infer", *again) is None

    def digest(folder: Path) -> dict:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}

    first = digest(tmp_path / "tables")
    assert len(first) == 4 and first == digest(tmp_path / "again")
    assert len(pd.read_parquet(tmp_path / "tables" / "base.parquet")) == 24 * 23
