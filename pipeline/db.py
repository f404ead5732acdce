"""DuckDB connections and the SQL files in pipeline/sql/."""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb
from omegaconf import DictConfig

SQL_DIR = Path(__file__).resolve().parent / "sql"


def connect(cfg: DictConfig) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the configured resources, UTC and ordered output."""
    con = duckdb.connect(config={
        "threads": int(cfg.duckdb.threads),
        "memory_limit": str(cfg.duckdb.memory_limit),
        "temp_directory": str(cfg.duckdb.temp_directory),
        # Row order is part of the output.
        "preserve_insertion_order": True,
    })
    # Days are UTC days whatever the machine's zone (set after connect: it needs ICU loaded).
    con.execute("SET TimeZone = 'UTC'")
    # DuckDB's own bar shows up on queries that run for more than a couple of seconds.
    if sys.stdout.isatty():
        con.execute("SET enable_progress_bar = true")
    return con


def sql(name: str) -> str:
    """The text of pipeline/sql/<name>.sql."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def literal(path: Path | str) -> str:
    """A path as a SQL string literal (COPY targets cannot be bound parameters)."""
    return "'" + str(path).replace("'", "''") + "'"


def copy(con: duckdb.DuckDBPyConnection, name: str, target: Path | str, params: dict | None = None) -> int:
    """Run pipeline/sql/<name>.sql into `target` as zstd Parquet; return its row count.

    Callers write into an atomic_path so a failure leaves the previous output in place."""
    return con.execute(f"COPY ({sql(name)}) TO {literal(target)} (FORMAT parquet, COMPRESSION zstd)",
                       params).fetchone()[0]
