"""DuckDB connections and the SQL files in pipeline/sql/."""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from pipeline.files import ROW_GROUP_SIZE

SQL_DIR = Path(__file__).resolve().parent / "sql"


def connect(cfg: DictConfig) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the configured resources, UTC and ordered output."""
    con = duckdb.connect(config={
        "threads": cfg.duckdb.threads,
        "memory_limit": cfg.duckdb.memory_limit,
        "temp_directory": cfg.duckdb.temp_directory,
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


def over_dates(con: duckdb.DuckDBPyConnection, query: str, days, params: dict) -> pd.DataFrame:
    """The SQL file `query` run with the view `refresh_dates` (day) holding `days`."""
    con.register("refresh_dates", pd.DataFrame({"day": pd.to_datetime(pd.Series(list(days), dtype=object))}))
    try:
        return con.execute(sql(query), params).df()
    finally:
        con.unregister("refresh_dates")


def copy(con: duckdb.DuckDBPyConnection, name: str, target: Path | str, params: dict | None = None) -> int:
    """Run pipeline/sql/<name>.sql into `target` as zstd Parquet; return its row count.

    DuckDB's own parallel COPY cuts row groups where its threads happened to hand over batches
    (ROW_GROUP_SIZE is only a target), so the bytes differ between runs at a few million rows; the
    result is streamed into write_batches instead. Callers write into an atomic_path so a failure
    leaves the previous output in place."""
    reader = con.sql(sql(name), params=params).to_arrow_reader(ROW_GROUP_SIZE)
    return write_batches(reader, reader.schema, target)


def write_batches(batches, schema: pa.Schema, target: Path | str) -> int:
    """Write Arrow batches into `target` as zstd Parquet in row groups of exactly ROW_GROUP_SIZE
    rows (the last one shorter), whatever sizes the engine handed over; return the row count.
    Every engine writes through here, so equal rows give equal bytes."""
    rows, pending = 0, []
    with pq.ParquetWriter(target, schema, compression="zstd") as out:
        for batch in batches:
            pending.append(batch)
            # Engines' batches are only about the size asked for: cut exact row groups from them.
            while sum(b.num_rows for b in pending) >= ROW_GROUP_SIZE:
                whole = pa.Table.from_batches(pending)
                out.write_table(whole.slice(0, ROW_GROUP_SIZE), row_group_size=ROW_GROUP_SIZE)
                pending = whole.slice(ROW_GROUP_SIZE).to_batches()
            rows += batch.num_rows
        if pending:
            out.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_SIZE)
    return rows


class DuckDB:
    """The stages' SQL on DuckDB: named tables built from pipeline/sql/ files (the interface
    pipeline.spark.Spark shares, so a stage runs on either engine)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def table(self, name: str, query: str, params: dict | None = None) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql(query)}", params)

    def drop(self, name: str) -> None:
        self.con.execute(f"DROP TABLE {name}")

    def rows(self, query: str, params: dict | None = None) -> list[dict]:
        cursor = self.con.execute(sql(query), params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def copy(self, query: str, target: Path | str, params: dict | None = None) -> int:
        return copy(self.con, query, target, params)
