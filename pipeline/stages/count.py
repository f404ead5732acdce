"""count: triples -> daily counts per (day, c1, c2, c_next), and successor drift metrics."""
from __future__ import annotations

import csv
from pathlib import Path

import duckdb
from omegaconf import DictConfig

from pipeline import db
from pipeline.files import atomic_path, write_json


def drift(con: duckdb.DuckDBPyConnection, daily: Path, top_k: int, min_support: int) -> dict:
    """Mean and variance of month-over-month top-k Jaccard, overall and per month."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE jaccard AS {db.sql('drift')}",
                {"daily": str(daily), "top_k": top_k, "min_support": min_support})
    overall = con.execute("SELECT count(*), avg(jaccard), var_samp(jaccard) FROM jaccard").fetchone()
    months = con.execute("SELECT month, count(*), avg(jaccard), var_samp(jaccard) FROM jaccard "
                         "GROUP BY month ORDER BY month").fetchall()
    if overall[0] == 0:
        raise ValueError(f"{daily}: no pair reaches count.min_support={min_support} in two consecutive months; "
                         "drift is undefined (lower count.min_support or use more data)")
    return {
        "top_k": top_k, "min_support": min_support, "pairs_compared": overall[0],
        "mean_jaccard": round(overall[1], 6), "var_jaccard": round(overall[2] or 0.0, 6),
        "by_month": {m: {"pairs": n, "mean_jaccard": round(mean, 6), "var_jaccard": round(var or 0.0, 6)}
                     for m, n, mean, var in months},
    }


def run(cfg: DictConfig) -> None:
    con = db.connect(cfg)
    with atomic_path(cfg.paths.daily_counts) as daily:
        rows = db.copy(con, "daily_counts", daily, {"triples": str(cfg.paths.triples)})
    metrics = drift(con, Path(cfg.paths.daily_counts), int(cfg.count.top_k), int(cfg.count.min_support))
    metrics["daily_count_rows"] = rows
    write_json(Path(cfg.paths.metrics) / "drift.json", metrics)
    with atomic_path(Path(cfg.paths.metrics) / "drift_by_month.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["month", "mean_jaccard", "pairs"])
        for month, row in metrics["by_month"].items():
            writer.writerow([month, row["mean_jaccard"], row["pairs"]])
    print(f"count: {rows} daily rows; top-{cfg.count.top_k} Jaccard mean {metrics['mean_jaccard']:.3f} "
          f"var {metrics['var_jaccard']:.3f} over {metrics['pairs_compared']} pair-months")
