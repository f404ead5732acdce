"""extract: validated raw data -> deduped cluster sequences and (c1, c2, c_next) triples."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pipeline import db, engines
from pipeline.data import contract
from pipeline.files import atomic_path, write_json

DEDUPE_MODES = ("first_occurrence", "consecutive")


def build(engine, params: DictConfig) -> dict:
    """Create the table `deduped` from the tables events and items; return extract's counts.

    Each step materialises one table and drops its input, so at most two copies of the
    visits are held (or spilled) at a time."""
    if params.dedupe not in DEDUPE_MODES:
        raise ValueError(f"params.yaml: extract.dedupe is {params.dedupe!r}, expected one of {DEDUPE_MODES}")
    positive = {"min_engagement": float(params.min_engagement)}
    engine.table("visits", "extract_visits", {**positive, "session_gap": int(params.session_gap)})
    engine.table("kept", f"extract_dedupe_{params.dedupe}")
    engine.drop("visits")
    engine.table("deduped", "extract_deduped")
    engine.drop("kept")
    (stats,) = engine.rows("extract_stats", positive)
    return stats


def run(cfg: DictConfig) -> None:
    con = db.connect(cfg)
    counts = contract.register(con, cfg.data.path, cfg.data.time_range, cfg.data.unknown_items,
                               max_keyword_chars=cfg.data.max_keyword_chars,
                               engagement_range=cfg.data.engagement_range)
    with engines.open_engine(cfg, con) as engine:
        if cfg.engine != "duckdb":
            engine.stage_views(con, ("events", "items"))
        stats = build(engine, cfg.extract)
        # Both outputs land together or not at all.
        with atomic_path(cfg.paths.sequences) as sequences, atomic_path(cfg.paths.triples) as triples:
            stats["kept_visits"] = engine.copy("sequences", sequences)
            stats["triples"] = engine.copy("triples", triples)
            if stats["triples"] == 0:
                raise ValueError(f"{cfg.data.path}: no triples after extract ({stats}); check extract.min_engagement "
                                 "and extract.session_gap")
    stats["repeats_collapsed"] = stats["positive_events"] - stats["deduped_visits"]
    stats.update(clusters=counts["clusters"], items=counts["items"], dataset=str(cfg.data.name))
    write_json(Path(cfg.paths.metrics) / "extract.json", stats)
    print(" ".join(f"{k}={v}" for k, v in sorted(stats.items())))
