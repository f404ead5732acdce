"""The engine extract and count run their SQL on (`engine` in params.yaml)."""
from __future__ import annotations

import contextlib

import duckdb
from omegaconf import DictConfig

from pipeline import db


def open_engine(cfg: DictConfig, con: duckdb.DuckDBPyConnection):
    """A context manager yielding the configured engine (duckdb or spark); con is the stage's DuckDB connection."""
    if cfg.engine == "spark":
        from pipeline import spark  # sqlglot and pyspark only when asked for

        return spark.Spark(cfg)
    return contextlib.nullcontext(db.DuckDB(con))
