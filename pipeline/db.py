"""DuckDB connections and the SQL files in pipeline/sql/."""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from pipeline.files import ROW_GROUP_SIZE

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


def copy(con: duckdb.DuckDBPyConnection, name: str, target: Path | str, params: dict | None = None) -> int:
    """Run pipeline/sql/<name>.sql into `target` as zstd Parquet; return its row count.

    DuckDB's own parallel COPY cuts row groups where its threads happened to hand over batches
    (ROW_GROUP_SIZE is only a target), so the bytes differ between runs at a few million rows; the
    result is streamed in fixed-size batches into pyarrow's writer instead, one row group each.
    Callers write into an atomic_path so a failure leaves the previous output in place."""
    reader = con.sql(sql(name), params=params).to_arrow_reader(ROW_GROUP_SIZE)
    rows, pending = 0, []
    with pq.ParquetWriter(target, reader.schema, compression="zstd") as out:
        for batch in reader:
            pending.append(batch)
            # DuckDB's batches are only about the size asked for: cut exact row groups from them.
            while sum(b.num_rows for b in pending) >= ROW_GROUP_SIZE:
                whole = pa.Table.from_batches(pending)
                out.write_table(whole.slice(0, ROW_GROUP_SIZE), row_group_size=ROW_GROUP_SIZE)
                pending = whole.slice(ROW_GROUP_SIZE).to_batches()
            rows += batch.num_rows
        if pending:
            out.write_table(pa.Table.from_batches(pending, reader.schema), row_group_size=ROW_GROUP_SIZE)
    return rows
