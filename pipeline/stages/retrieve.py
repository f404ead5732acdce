"""retrieve: per refresh date, each pair's recent successors and the globally popular clusters."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pipeline import db, retrieval
from pipeline.files import write_json, write_parquet
from pipeline.period import refresh_dates


def run(cfg: DictConfig) -> None:
    r = cfg.retrieval
    days = refresh_dates(cfg)
    con = db.connect(cfg)
    daily = cfg.paths.daily_counts
    found = retrieval.successors(con, daily, days, int(r.window_days), int(r.top_n), str(r.method))
    popular = retrieval.popular(con, daily, days, int(r.window_days), int(r.popular_n))
    write_parquet(found, cfg.paths.retrieved)
    write_parquet(popular, cfg.paths.popular)
    # Under trend a pair can have window support and nothing retrieved: it counts as no retrieval.
    hit = found[found.retrieved.map(bool)]
    per_date = hit.groupby(hit.refresh_date.astype(str)).size()
    write_json(Path(cfg.paths.metrics) / "retrieve.json", {
        "method": str(r.method), "window_days": int(r.window_days), "top_n": int(r.top_n),
        "refresh_dates": [str(d) for d in days],
        "pairs_with_retrieval": {str(d): int(per_date.get(str(d), 0)) for d in days}})
    print(f"retrieve: {len(days)} refresh dates, {len(found)} (date, pair) rows, method {r.method}")
