"""extract + count with the project's own stage code (what `python -m pipeline extract` and
`python -m pipeline count` do, minus count's drift metrics), on DuckDB or, with the override
engine=spark, on Spark.

The config is composed from conf/ with data.path, paths.* and duckdb.temp_directory pointed
into a scratch folder, then pipeline.stages.extract.run (contract validation, the extract_*.sql
steps, sequences + triples Parquet) and count's daily_counts COPY run unchanged.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd

from pipeline import config, db, engines
from pipeline.files import atomic_path
from pipeline.stages import extract

# The world issue 15 measured, the first synthetic one (data=synthetic_dense keeps it byte for byte).
WORLD = "data=synthetic_dense"


def compose(data_dir, work_dir, min_engagement: float, session_gap: int, extra: list[str] = ()):
    work = Path(work_dir)
    return config.compose([
        WORLD,
        f"data.path={Path(data_dir).resolve()}",
        f"extract.min_engagement={min_engagement}",
        f"extract.session_gap={session_gap}",
        "extract.dedupe=first_occurrence",
        f"paths.sequences={work / 'extract' / 'sequences.parquet'}",
        f"paths.triples={work / 'extract' / 'triples.parquet'}",
        f"paths.daily_counts={work / 'count' / 'daily_counts.parquet'}",
        f"paths.metrics={work / 'metrics'}",
        f"duckdb.temp_directory={work / 'duckdb_tmp'}",
        *extra,
    ])


def run_stages(cfg, quiet: bool = True) -> int:
    """extract.run(cfg), then count's daily_counts copy (count.run without drift). Returns daily rows."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        extract.run(cfg)
        # count.run's first step, as it writes it
        with engines.open_engine(cfg, db.connect(cfg)) as engine, atomic_path(cfg.paths.daily_counts) as daily:
            return engine.copy("count_daily_counts", daily, {"triples": str(cfg.paths.triples)})


def daily_counts(events_path, items_path, min_engagement: float, session_gap: int, work_dir=None,
                 extra: list[str] = ()) -> pd.DataFrame:
    """The pipeline's daily counts. The contract wants events/items/clusters in one folder:
    events_path and items_path must be that folder's events.parquet and items.parquet."""
    import tempfile

    data_dir = Path(events_path).parent
    if Path(items_path).resolve() != (data_dir / "items.parquet").resolve():
        raise ValueError(f"{items_path}: the pipeline reads items from {data_dir / 'items.parquet'}")
    with contextlib.ExitStack() as stack:
        work = work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-duckdb-"))
        cfg = compose(data_dir, work, min_engagement, session_gap, list(extra))
        run_stages(cfg)
        return pd.read_parquet(cfg.paths.daily_counts)
