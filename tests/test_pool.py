"""Decoding on a pool of Ray actors (pipeline/llm/pool.py): 2 local CPU workers, the tiny world.

Skipped where Ray is not installed (`bin/setup --ray` installs it; CI does). The first tests run
before any Ray is up: the one-line errors, and a build on a local Ray that the pool starts and
stops itself; the rest share one local Ray (the `local_ray` fixture), whose workers get this
module's worker subclasses by value."""
from __future__ import annotations

import os
import shutil
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from pipeline import timing  # noqa: E402
from pipeline.data import contract  # noqa: E402
from pipeline.llm import bulk, pool, prompts  # noqa: E402
from pipeline.llm.cache import AnswerCache  # noqa: E402
from pipeline.stages import bulk_infer  # noqa: E402
from tests.conftest import TINY_WORLD, build, compose  # noqa: E402

pytestmark = pytest.mark.slow  # a local Ray and its worker processes

# Shards of 8 in batches of 4: the tiny world's 31 prompts make 4 shards, more than the workers,
# and a worker can die between two batches of a shard.
SHARDS = ("bulk_infer.shard_size.cpu=8", "bulk_infer.batch_size.cpu=4")
TWO = ("ray.workers=2", *SHARDS)


def tables(cfg) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(cfg.paths.tables).glob("*.parquet"))}


def parts(cfg) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(cfg.paths.infer_cache).rglob("part-*.parquet"))}


@pytest.fixture(scope="module")
def one_worker(world, tmp_path_factory):
    """(directory, tables, cache parts) of the single-process build, with Ray unimportable:
    ray.workers=1 needs no Ray at all. Every build here runs in that directory (tables record their
    data path), after `fresh` removes its tables and answer cache."""
    where = tmp_path_factory.mktemp("pool") / "w"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)
        cfg = build(world, where, *SHARDS)
    return where, tables(cfg), parts(cfg)


@pytest.fixture
def fresh(one_worker) -> Path:
    where = one_worker[0]
    for output in ("tables", "work/.infer_cache"):
        shutil.rmtree(where / output, ignore_errors=True)
    return where


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, ValueError)
    return message


def test_missing_ray_and_a_bad_address_are_one_line_errors(world, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)
        with pytest.raises(ValueError) as error:
            build(world, tmp_path / "a", *TWO)
    assert "bin/setup --ray" in one_line(error) and "ray.workers" in one_line(error)
    with pytest.raises(ValueError) as error:
        build(world, tmp_path / "a", *TWO, "ray.address=127.0.0.1:1")
    assert "ray.address='127.0.0.1:1'" in one_line(error) and not ray.is_initialized()
    with pytest.raises(ValueError) as error:
        build(world, tmp_path / "a", *TWO, "ray.address=no-port")
    assert "ray.address='no-port'" in one_line(error)


def test_two_workers_build_byte_identical_tables(world, one_worker, fresh):
    """On a local Ray the pool starts for the run and stops after it, and leaves the stage's own
    SIGTERM handler in place (ray.init sets one that exits with status 15 and no word)."""
    def stages_own(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, stages_own)
    try:
        cfg = build(world, fresh, *TWO)
        assert signal.getsignal(signal.SIGTERM) is stages_own
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not ray.is_initialized()
    assert (tables(cfg), parts(cfg)) == one_worker[1:]


@pytest.fixture(scope="module")
def local_ray():
    from ray import cloudpickle

    with pool.keep_callers_sigterm():  # later tests in this process get their SIGTERM handlers, not Ray's
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, runtime_env=pool.runtime_env())
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers below travel by value
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


class DiesMidShard(pool.Worker):
    """Exits its process after the first batch of its first shard, once in the whole run (a marker
    file, since a restarted actor is a new object in a new process)."""
    marker = ""

    def answers(self, shard, extras):
        def advance(n):
            if not os.path.exists(self.marker):
                Path(self.marker).write_text(str(os.getpid()))
                os._exit(1)

        return self.loaded()(shard, advance, **extras)


class FailsOnLastShard(pool.Worker):
    """An error in the work list's last shard, which is sent only after two shards came back and
    were stored: the run stops there, as a killed run does."""
    last = ""  # the work list's last prompt

    def answers(self, shard, extras):
        if self.last in shard:
            raise RuntimeError("run stopped")
        return super().answers(shard, extras)


def test_a_worker_killed_mid_shard_is_retried_and_the_tables_stay_identical(world, tmp_path, one_worker, fresh,
                                                                              local_ray, monkeypatch):
    DiesMidShard.marker = str(tmp_path / "died")
    monkeypatch.setattr(pool, "Worker", DiesMidShard)
    cfg = build(world, fresh, *TWO)
    assert Path(DiesMidShard.marker).exists()  # a worker did die mid-shard
    assert tables(cfg) == one_worker[1]


def test_a_stopped_run_resumes_from_the_cache(world, one_worker, fresh, local_ray, monkeypatch):
    FailsOnLastShard.last = max(p for part in one_worker[2].values()
                                for p in pq.read_table(pa.BufferReader(part)).column("prompt").to_pylist())
    with monkeypatch.context() as patch:
        patch.setattr(pool, "Worker", FailsOnLastShard)
        with pytest.raises(ray.exceptions.RayTaskError, match="run stopped"):
            build(world, fresh, *TWO)
    cfg = compose(fresh, *TINY_WORLD, *TWO)
    stored = sorted(Path(cfg.paths.infer_cache).rglob("part-*.parquet"))
    assert len(stored) >= 2 and not Path(cfg.paths.tables).exists()
    timing.take()
    bulk_infer.run(cfg)
    run = timing.take()
    assert run["cached_at_start"] == sum(pq.read_metadata(p).num_rows for p in stored) and run["decoded"] > 0
    assert tables(cfg) == one_worker[1]


def test_a_worker_that_cannot_read_or_load_the_adapter_says_so_in_one_line(tmp_path, local_ray):
    cfg = compose(tmp_path, *TINY_WORLD, *TWO)
    missing = tmp_path / "adapter"  # as a node without the shared storage sees it
    decoder = pool.Decoder.of(cfg.model, missing, "cpu", "float32", {0: "a", 1: "b"}, bulk.Settings(False, 4, 8),
                              bulk.scored_answers)
    with pytest.raises(ValueError) as error, pool.decoding(decoder, cfg) as decoding:
        decoding.fill(AnswerCache(tmp_path / "cache", {}), ["x"], 16)
    message = one_line(error)
    assert str(missing) in message and f"node {ray.util.get_node_ip_address()}" in message
    broken = tmp_path / "broken"  # readable, but no adapter: the loader's own one-line error
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{")
    with pytest.raises(ValueError) as error, pool.decoding(replace(decoder, adapter=str(broken)), cfg):
        pass
    assert one_line(error).startswith(f"{broken}: not a readable LoRA adapter") and "in a Ray worker" in one_line(error)


def test_sampled_answers_are_the_same_on_two_workers(world, tmp_path, local_ray):
    """evaluate's repeated sampling: each prompt's seed travels with its shard."""
    names = contract.descriptions(Path(world) / "data")
    texts = sorted(prompts.for_pair(names, a, b) for a in names for b in names if a != b)
    seeds = {t: i for i, t in enumerate(texts)}
    got = []
    for workers in (1, 2):
        cfg = compose(tmp_path, *TINY_WORLD, f"ray.workers={workers}")
        decoder = pool.Decoder.of(cfg.model, None, "cpu", "float32", names, bulk.Settings(False, 5, 4, 1.0),
                                  bulk.scored_answers)
        with pool.decoding(decoder, cfg) as decoding:
            got.append(decoding.fill(AnswerCache(tmp_path / str(workers), {}), texts, 6, seeds=seeds))
    assert got[0] == got[1] and len(set(a for a, _ in got[0].values())) > 1
