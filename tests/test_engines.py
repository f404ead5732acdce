"""engine=duckdb and engine=spark, and extract's two SQL forms: the same output bytes."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import spark
from pipeline.stages import count, extract
from tests.conftest import ROOT, compose, events_frame, write_dataset

OUTPUTS = ("sequences", "triples", "daily_counts")
METRICS = ("extract.json", "extract/detail.json", "count.json", "count/detail.json", "drift_by_month.csv")


def fixture_events(n_users: int = 40, n_events: int = 3000):
    """Users browsing 6 clusters, starting over 45 days (so pairs meet in two months): minute-grained times (ties, which item_id
    breaks), pauses over the 30-minute session gap, immediate and later repeats, 20 % negative
    events and some unknown items."""
    rng = np.random.default_rng(7)
    rows = []
    for user in range(1, n_users + 1):
        t, cluster = int(rng.integers(0, 45 * 86_400)), int(rng.integers(0, 6))
        for _ in range(n_events // n_users):
            t += int(rng.choice([0, 60, 120, 3600, 86_400], p=[0.2, 0.45, 0.2, 0.1, 0.05]))
            if rng.random() > 0.35:  # 35 % immediate repeats of the cluster
                cluster = int(rng.integers(0, 6))
            item = 9999 if rng.random() < 0.01 else 100 * cluster + int(rng.integers(0, 3))
            rows.append((user, item, t, 0.2 if rng.random() < 0.2 else 0.9))
    return events_frame(rows)


def run_engine(root: Path, engine: str, *overrides: str) -> dict[str, bytes]:
    cfg = compose(root, f"engine={engine}", "count.min_support=1", *overrides)
    write_dataset(root / "data", fixture_events())
    extract.run(cfg)
    count.run(cfg)
    out = {name: Path(cfg.paths[name]).read_bytes() for name in OUTPUTS}
    out.update({name: (Path(cfg.paths.metrics) / name).read_bytes() for name in METRICS})
    return out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="engine=spark needs a Java 17+ runtime: no java on PATH")
@pytest.mark.skipif(importlib.util.find_spec("pyspark") is None, reason="engine=spark needs pyspark: bin/setup --spark")
@pytest.mark.parametrize("dedupe", ["first_occurrence", "consecutive"])
def test_spark_writes_the_bytes_duckdb_writes(tmp_path, dedupe):
    duck = run_engine(tmp_path / "duckdb", "duckdb", f"extract.dedupe={dedupe}")
    assert len(duck["triples"]) > 1000 and b'"pairs_compared": 0' not in duck["count.json"]
    sparked = run_engine(tmp_path / "spark", "spark", f"extract.dedupe={dedupe}")
    assert {name: sparked[name] == duck[name] for name in duck} == {name: True for name in duck}


SPARK_THEN_EXIT = """
import io, logging
from pipeline import config
from pipeline.spark import Spark
with Spark(config.compose(["engine=spark"])):
    pass
stream = io.StringIO()
logging.basicConfig(level=logging.INFO, stream=stream)  # as Hydra's job logging or a test runner's capture
stream.close()
print("last line")
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="engine=spark needs a Java 17+ runtime: no java on PATH")
@pytest.mark.skipif(importlib.util.find_spec("pyspark") is None, reason="engine=spark needs pyspark: bin/setup --spark")
def test_a_spark_run_ends_with_its_own_last_line():
    """py4j closes its connections at interpreter exit and logs it: that must not print a logging
    traceback after the run's (or CI's) last line."""
    done = subprocess.run([sys.executable, "-c", SPARK_THEN_EXIT], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().endswith("last line")
    assert "Logging error" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("dedupe", ["first_occurrence", "consecutive"])
@pytest.mark.parametrize("setting", ["extract.min_engagement=0.5", "extract.min_engagement=0.7"])
def test_partitioned_form_writes_the_bytes_of_the_ordered_form(tmp_path, dedupe, setting):
    """The portable SQL (what Spark runs) against DuckDB's faster row-order form, on DuckDB;
    0.7 is no float32 value, so both compare engagement in double precision."""
    ordered = run_engine(tmp_path / "ordered", "duckdb", f"extract.dedupe={dedupe}", setting, "extract.form=ordered")
    partitioned = run_engine(tmp_path / "partitioned", "duckdb", f"extract.dedupe={dedupe}", setting,
                             "extract.form=partitioned")
    assert len(ordered["triples"]) > 1000
    assert {name: partitioned[name] == ordered[name] for name in ordered} == {name: True for name in ordered}


def test_transpile_inlines_parameters_and_renames_duckdb_functions():
    text = "SELECT epoch_us(ts) > CAST($gap AS BIGINT) * 1000000 AS late FROM read_parquet($path) WHERE x >= $m"
    assert spark.transpile(text, {"gap": 1800, "path": "/d/t.parquet", "m": 0.5}) == (
        "SELECT UNIX_MICROS(ts) > CAST(1800 AS BIGINT) * 1000000 AS late FROM parquet.`/d/t.parquet` WHERE x >= 0.5")
    with pytest.raises(KeyError, match=r"\$gap"):
        spark.transpile(text, {"path": "p", "m": 1})
