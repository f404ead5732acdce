"""count: triples -> daily counts per (day, c1, c2, c_next), successor drift metrics, and where the
evaluated month's triples sit by their pair's support (the world's realism figures)."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline import db, engines
from pipeline.buckets import bucket_of
from pipeline.files import atomic_path, write_metrics
from pipeline.period import refresh_dates, windows


def drift(engine, daily: Path, top_k: int, min_support: int) -> tuple[dict, list[dict]]:
    """Mean and variance of month-over-month top-k Jaccard: overall, and per month (month, pairs,
    mean_jaccard, var_jaccard)."""
    engine.table("jaccard", "count_drift", {"daily": str(daily), "top_k": top_k, "min_support": min_support})
    rows = engine.rows("count_drift_summary")
    # The total row (month NULL) is missing on Spark when there is no pair at all.
    overall = next((r for r in rows if r["month"] is None), {"pairs": 0})
    if overall["pairs"] == 0:
        raise ValueError(f"{daily}: no pair reaches count.min_support={min_support} in two consecutive months; "
                         "drift is undefined (lower count.min_support or use more data)")
    months = [{"month": r["month"], "pairs": r["pairs"], "mean_jaccard": round(r["mean_jaccard"], 6),
               "var_jaccard": round(r["var_jaccard"] or 0.0, 6)} for r in rows if r["month"] is not None]
    return {"top_k": top_k, "min_support": min_support, "pairs_compared": overall["pairs"],
            "mean_jaccard": round(overall["mean_jaccard"], 6),
            "var_jaccard": round(overall["var_jaccard"] or 0.0, 6)}, months


def support_profile(rows: pd.DataFrame, bounds: dict[str, int]) -> dict:
    """Shares of the month's triples by support bucket (keyed by its name) and unseen in training, from
    count_support_profile.sql's (support, seen_in_training, triples) rows; shares are null without triples."""
    total = int(rows.triples.sum())
    bucket = bucket_of(rows.support, bounds)

    def share(mask) -> float | None:
        return round(float(rows.triples[mask].sum()) / total, 6) if total else None

    return {"triples": total, **{name: share(bucket == name) for name in bounds},
            "unseen_in_training": share(~rows.seen_in_training.astype(bool))}


def headline(m: dict) -> dict:
    """What `dvc metrics show` compares: the month-over-month drift of top-k successor sets. The
    settings it was measured under and the evaluated month's realism figures are in the detail."""
    return {k: m[k] for k in ("mean_jaccard", "var_jaccard", "pairs_compared")}


def run(cfg: DictConfig) -> None:
    con = db.connect(cfg)
    with engines.open_engine(cfg, con) as engine:
        with atomic_path(cfg.paths.daily_counts) as daily:
            rows = engine.copy("count_daily_counts", daily, {"triples": cfg.paths.triples})
        metrics, months = drift(engine, Path(cfg.paths.daily_counts), cfg.count.top_k, cfg.count.min_support)
    # A small read of the written counts, on DuckDB whatever the engine (as retrieve reads them).
    w = windows(cfg)
    profile = db.over_dates(con, "count_support_profile", refresh_dates(cfg), {
        "daily": cfg.paths.daily_counts, "month_start": w.month_start, "month_end": w.month_end,
        "window_days": cfg.retrieve.window_days, "train_start": w.train_start, "test_start": w.test_start})
    metrics["month"] = {"period": cfg.period.month, **support_profile(profile, dict(cfg.evaluate.support_buckets))}
    write_metrics(cfg.paths.metrics, "count", headline(metrics), metrics)
    # Per-month detail is a plot, not a metric: `dvc metrics show` stays one readable row.
    with atomic_path(Path(cfg.paths.metrics) / "drift_by_month.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["month", "mean_jaccard", "var_jaccard", "pairs"])
        writer.writeheader()
        writer.writerows(months)
    shares = ", ".join(f"{k} {v}" for k, v in metrics["month"].items() if k not in ("period", "triples"))
    print(f"count: {rows} daily rows; top-{cfg.count.top_k} Jaccard mean {metrics['mean_jaccard']:.3f} "
          f"var {metrics['var_jaccard']:.3f} over {metrics['pairs_compared']} pair-months; {cfg.period.month}'s "
          f"{metrics['month']['triples']} triples by window support: {shares}")
