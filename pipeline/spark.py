"""The stages' SQL on Spark (`engine: spark`): the same pipeline/sql/ files, transpiled.

The queries are written once, in DuckDB's dialect, without relying on row order (every window
names its partition and order). `transpile` turns a file into Spark SQL with sqlglot plus the
rewrites sqlglot does not do (below); tests/test_engines.py runs both engines on one fixture and
compares every output row. Results are written through pipeline.db.write_batches with DuckDB's
Arrow schema, so the Parquet files are the same bytes as the DuckDB path's.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlglot
from omegaconf import DictConfig
from sqlglot import exp

from pipeline import db

# DuckDB functions sqlglot 30.30 passes through unchanged, and their Spark names.
FUNCTIONS = {"epoch_us": "unix_micros"}


def transpile(text: str, params: dict | None = None) -> str:
    """A pipeline/sql/ query (DuckDB dialect, `$name` parameters) as Spark SQL with the
    parameters inlined as literals (Spark SQL takes no named parameters in every position,
    e.g. read_parquet's path)."""
    params = params or {}

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder):
            if node.name not in params:
                raise KeyError(f"SQL parameter ${node.name} has no value")
            return exp.convert(params[node.name])
        if isinstance(node, exp.Anonymous) and node.name.lower() in FUNCTIONS:
            return exp.Anonymous(this=FUNCTIONS[node.name.lower()], expressions=node.expressions)
        return node

    return sqlglot.parse_one(text, read="duckdb").transform(rewrite).sql(dialect="spark")


def arrow_schema(schema: pa.Schema) -> pa.Schema:
    """Spark's Arrow schema as DuckDB hands it over: nullable fields, no metadata, and naive
    timestamps (Spark's TIMESTAMP carries the session zone, UTC, so the values are the same)."""
    def plain(t: pa.DataType) -> pa.DataType:
        return pa.timestamp("us") if pa.types.is_timestamp(t) else t
    return pa.schema([pa.field(f.name, plain(f.type)) for f in schema])


class Spark:
    """A Spark session (local mode by default, `spark.master` for a cluster) with the DuckDB
    interface of pipeline.db.DuckDB. Use it as a context manager: the session and the staged
    inputs go when the block ends."""

    def __init__(self, cfg: DictConfig):
        # pyspark 4.3 warns on import of its own test helpers (which it imports while it runs SQL) that
        # pandas 3 is not fully supported; no pandas object crosses to Spark here (Parquet does), so
        # that one message is silenced, for the processes that run Spark.
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        try:
            from pyspark.sql import SparkSession  # the JVM starts only when engine=spark
        except ModuleNotFoundError:
            raise ValueError("params.yaml: engine is 'spark' but pyspark is not installed; run "
                             "`bin/setup --spark`") from None

        self.session = (
            SparkSession.builder.appName("pipeline").master(cfg.spark.master)
            .config("spark.driver.memory", cfg.spark.driver_memory)
            .config("spark.sql.shuffle.partitions", cfg.spark.shuffle_partitions)
            .config("spark.ui.enabled", False).config("spark.ui.showConsoleProgress", False)
            # Days are UTC days, as on DuckDB (db.connect).
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate()
        )
        self.session.sparkContext.setLogLevel("ERROR")
        # py4j logs every connection it closes at INFO, from __del__ at interpreter exit, after
        # handlers' streams (a test runner's capture, Hydra's job log) may be closed: a "Logging
        # error" traceback after the run's last line. Its warnings and errors still show.
        logging.getLogger("py4j").setLevel(logging.WARNING)
        self.stage_dir = Path(cfg.spark.stage_dir)
        self.stage: Path | None = None

    def __enter__(self) -> "Spark":
        return self

    def __exit__(self, *exc) -> None:
        self.session.stop()
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)

    def stage_views(self, con: duckdb.DuckDBPyConnection, views: tuple[str, ...]) -> None:
        """Hand DuckDB views (the validated contract: pipeline.data.contract.register) to Spark
        through Parquet files in spark.stage_dir, where every executor must be able to read."""
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix="stage-", dir=self.stage_dir))
        for view in views:
            path = self.stage / f"{view}.parquet"
            con.execute(f"COPY (SELECT * FROM {view}) TO '{path}' (FORMAT parquet)")
            self.session.read.parquet(str(path)).createOrReplaceTempView(view)

    def _df(self, query: str, params: dict | None):
        return self.session.sql(transpile(db.sql(query), params))

    def table(self, name: str, query: str, params: dict | None = None) -> None:
        # Cached: like DuckDB's temp tables, each step is computed once however often it is read.
        self._df(query, params).cache().createOrReplaceTempView(name)

    def drop(self, name: str) -> None:
        self.session.table(name).unpersist()
        self.session.catalog.dropTempView(name)

    def rows(self, query: str, params: dict | None = None) -> list[dict]:
        return [row.asDict() for row in self._df(query, params).collect()]

    def copy(self, query: str, target: Path | str, params: dict | None = None) -> int:
        # Collected through the driver in the query's order; at cluster scale, Spark's own
        # writer (same schema and order, other bytes) is the way out (README "Benchmarks").
        table = self._df(query, params).toArrow()
        schema = arrow_schema(table.schema)
        return db.write_batches(table.cast(schema).to_batches(), schema, target)
