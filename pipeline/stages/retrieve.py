"""retrieve: per refresh date, each pair's and each last cluster's recent successors, and the
globally popular clusters: the evidence RAG prompts carry (pipeline/evidence.py)."""
from __future__ import annotations

from omegaconf import DictConfig

from pipeline import db, evidence, retrieval
from pipeline.files import write_metrics, write_parquet
from pipeline.period import refresh_dates


def run(cfg: DictConfig) -> None:
    r = cfg.retrieve
    days = refresh_dates(cfg)
    con = db.connect(cfg)
    daily = cfg.paths.daily_counts
    found = retrieval.successors(con, daily, days, r.window_days, r.top_n, r.method)
    last = evidence.last_successors(con, daily, days, r.window_days, r.fallback_window_days)
    popular = retrieval.popular(con, daily, days, r.window_days, r.popular_n)
    write_parquet(found, cfg.paths.retrieved)
    write_parquet(last, cfg.paths.last_successors)
    write_parquet(popular, cfg.paths.popular)
    # Under trend a pair can have window support and nothing retrieved: it counts as no retrieval.
    hit = found[found.retrieved.map(bool)]
    per_date = hit.groupby(hit.refresh_date.astype(str)).size().reindex([str(d) for d in days], fill_value=0)
    write_metrics(cfg.paths.metrics, "retrieve",
                  {"refresh_dates": len(days), "mean_pairs_with_retrieval": round(float(per_date.mean()), 1)},
                  {"method": r.method, "window_days": r.window_days, "fallback_window_days": r.fallback_window_days,
                   "top_n": r.top_n,
                   "pairs_with_retrieval": {d: int(n) for d, n in per_date.items()}})
    print(f"retrieve: {len(days)} refresh dates, {len(found)} (date, pair) rows, method {r.method}")
