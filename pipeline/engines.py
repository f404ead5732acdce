"""The engine extract and count run their SQL on (`engine` in params.yaml)."""
from __future__ import annotations

import contextlib

import duckdb
from omegaconf import DictConfig

from pipeline import db

ENGINES = ("duckdb", "spark")


def open_engine(cfg: DictConfig, con: duckdb.DuckDBPyConnection):
    """A context manager yielding the configured engine; con is the stage's DuckDB connection."""
    if cfg.engine == "duckdb":
        return contextlib.nullcontext(db.DuckDB(con))
    if cfg.engine == "spark":
        from pipeline import spark  # sqlglot and pyspark only when asked for

        return spark.Spark(cfg)
    raise ValueError(f"params.yaml: engine is {cfg.engine!r}, expected one of {ENGINES}")
