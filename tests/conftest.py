"""Shared fixtures: a composed config pointing into tmp_path, and tiny contract datasets."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

from pipeline import kernels

# Before torch is imported: the portable kernels (the default), as every stage's entry point pins them.
kernels.pin("portable")

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import config
from pipeline.data import contract

ROOT = Path(__file__).resolve().parent.parent
# A tiny synthetic world run through the real stages (tiny random model, gate overridden); the dense
# world, whose 5 clusters are all there from the start (tests/golden.json holds its hashes).
TINY_WORLD = ["data=synthetic_dense", "model=tiny_random", f"model.cache_dir={ROOT / 'models'}",
        "finetune.trainer.max_steps=2", "finetune.batch_size=8", "finetune.samples_per_pair=1",
        "finetune.trainer.enable_progress_bar=false",
        "gate.max_pairs=8", "gate.max_new_tokens=4", "gate.override_reason='tiny random model'",
        "gate.min_held_out_triples=50",
        "data.synth.n_events=30000", "data.synth.n_clusters=5", "data.synth.n_users=800",
        "count.min_support=1", "refresh.until=2024-03-05", "bulk_infer.max_new_tokens=5", "bulk_infer.batch_size.cpu=8",
        "bulk_infer.shard_size.cpu=16", "device=cpu"]
T0 = pd.Timestamp("2024-01-10 12:00", tz="UTC")


@functools.cache
def default_paths() -> tuple[tuple[str, str], ...]:
    """conf/'s output paths (a composition takes most of a second: composed once per session)."""
    return tuple((str(key), str(value)) for key, value in config.compose().paths.items())


def moved(tmp_path: Path) -> list[str]:
    """The overrides that move the data and every output path into tmp_path."""
    return [f"data.path={tmp_path / 'data'}", *[f"paths.{key}={tmp_path / value}" for key, value in default_paths()],
            f"duckdb.temp_directory={tmp_path / 'duckdb_tmp'}"]


def compose(tmp_path: Path, *overrides: str):
    """The project config with the data and every output path moved into tmp_path."""
    return config.compose([*moved(tmp_path), *overrides])


LOAD = config.load  # before any test replaces it


def run_stage(monkeypatch, tmp_path: Path, stage: str, *overrides: str) -> str | None:
    """`python -m pipeline STAGE` in this process on a params.yaml composed as compose(tmp_path,
    *overrides) composes; returns its one-line error (None when it succeeded)."""
    from pipeline import cli
    from pipeline.__main__ import main

    params = tmp_path / "params.yaml"
    config.dump([*moved(tmp_path), *overrides], params)
    monkeypatch.setattr(config, "load", lambda: LOAD(params))
    monkeypatch.delenv(cli.DEBUG, raising=False)
    try:
        main([stage])
    except SystemExit as done:
        return done.code
    return None


def events_frame(rows: list[tuple]) -> pd.DataFrame:
    """rows: (user_id, item_id, seconds after T0, engagement)."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "seconds", "engagement"])
    frame["ts"] = T0 + pd.to_timedelta(frame.pop("seconds"), unit="s")
    return frame[["user_id", "item_id", "ts", "engagement"]]


def write_dataset(data_dir: Path, events: pd.DataFrame | pa.Table, n_clusters: int = 6,
                  items: pa.Table | None = None, clusters: pa.Table | None = None) -> Path:
    """Write a dataset; by default item 100*c + k (k < 100) belongs to cluster c."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if items is None:
        ids = list(range(n_clusters * 100))
        items = pa.table({"item_id": pa.array(ids, pa.int64()),
                          "cluster_id": pa.array([i // 100 for i in ids], pa.int32())})
    if clusters is None:
        clusters = pa.table({"cluster_id": pa.array(range(n_clusters), pa.int32()),
                             "keywords": [[f"topic {c}", f"theme {c}"] for c in range(n_clusters)]})
    if isinstance(events, pd.DataFrame):
        events = pa.Table.from_pandas(events, schema=contract.EVENTS_SCHEMA, preserve_index=False)
    pq.write_table(events, data_dir / "events.parquet")
    pq.write_table(items, data_dir / "items.parquet")
    pq.write_table(clusters, data_dir / "clusters.parquet")
    return data_dir


# The modules that take minutes, longest first: they start first, one per pytest-xdist worker
# (pytest.ini: --dist loadfile, --no-loadscope-reorder), and the short ones fill in behind them.
LONGEST_FIRST = ("test_dvc_experiments.py", "test_dvc_pipeline.py", "test_pool.py", "test_engines.py")


def pytest_collection_modifyitems(items):
    """A test on the tiny world (the `world` fixture runs every stage with a model) is slow: the
    fast tier leaves it out. Other slow tests say so themselves (@pytest.mark.slow)."""
    for item in items:
        if "world" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise


@pytest.fixture
def cfg(tmp_path):
    return compose(tmp_path)


def make_world(root: Path, *overrides: str) -> Path:
    """extract .. retrieve on a tiny synthetic world, with an untrained adapter and an overridden gate."""
    from pipeline.data import synth
    from pipeline.stages import count, extract, finetune, gate, retrieve

    cfg = compose(root, *TINY_WORLD, *overrides)
    synth.generate(cfg.data.synth, cfg.data.time_range, cfg.data.path)
    for stage in (extract, count, finetune, gate, retrieve):
        stage.run(cfg)
    return root


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def build(world: Path, where: Path, *overrides: str, retrieval: bool = False):
    """Run bulk_infer (after retrieve, if asked) in `where` on the world's upstream outputs; returns its config."""
    if not where.exists():
        shutil.copytree(world, where, ignore=shutil.ignore_patterns("tables", ".infer_cache"))
    cfg = compose(where, *TINY_WORLD, *overrides)
    from pipeline.stages import bulk_infer, retrieve

    if retrieval:
        retrieve.run(cfg)
    bulk_infer.run(cfg)
    return cfg
