"""count: triples -> daily counts per (day, c1, c2, c_next), and successor drift metrics."""
from __future__ import annotations

import csv
from pathlib import Path

from omegaconf import DictConfig

from pipeline import db, engines
from pipeline.files import atomic_path, write_json


def drift(engine, daily: Path, top_k: int, min_support: int) -> dict:
    """Mean and variance of month-over-month top-k Jaccard, overall and per month."""
    engine.table("jaccard", "drift", {"daily": str(daily), "top_k": top_k, "min_support": min_support})
    rows = engine.rows("drift_summary")
    # The total row (month NULL) is missing on Spark when there is no pair at all.
    overall = next((r for r in rows if r["month"] is None), {"pairs": 0})
    months = [r for r in rows if r["month"] is not None]
    if overall["pairs"] == 0:
        raise ValueError(f"{daily}: no pair reaches count.min_support={min_support} in two consecutive months; "
                         "drift is undefined (lower count.min_support or use more data)")
    return {
        "top_k": top_k, "min_support": min_support, "pairs_compared": overall["pairs"],
        "mean_jaccard": round(overall["mean_jaccard"], 6), "var_jaccard": round(overall["var_jaccard"] or 0.0, 6),
        "by_month": {m["month"]: {"pairs": m["pairs"], "mean_jaccard": round(m["mean_jaccard"], 6),
                                 "var_jaccard": round(m["var_jaccard"] or 0.0, 6)} for m in months},
    }


def run(cfg: DictConfig) -> None:
    with engines.open_engine(cfg, db.connect(cfg)) as engine:
        with atomic_path(cfg.paths.daily_counts) as daily:
            rows = engine.copy("daily_counts", daily, {"triples": str(cfg.paths.triples)})
        metrics = drift(engine, Path(cfg.paths.daily_counts), int(cfg.count.top_k), int(cfg.count.min_support))
    metrics["daily_count_rows"] = rows
    write_json(Path(cfg.paths.metrics) / "drift.json", metrics)
    with atomic_path(Path(cfg.paths.metrics) / "drift_by_month.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["month", "mean_jaccard", "pairs"])
        for month, row in metrics["by_month"].items():
            writer.writerow([month, row["mean_jaccard"], row["pairs"]])
    print(f"count: {rows} daily rows; top-{cfg.count.top_k} Jaccard mean {metrics['mean_jaccard']:.3f} "
          f"var {metrics['var_jaccard']:.3f} over {metrics['pairs_compared']} pair-months")
