"""extract: validated raw data -> deduped cluster sequences and (c1, c2, c_next) triples."""
from __future__ import annotations

from pathlib import Path

import duckdb
from omegaconf import DictConfig

from pipeline import db
from pipeline.data import contract
from pipeline.files import atomic_path, write_json

DEDUPE_MODES = ("first_occurrence", "consecutive")


def build(con: duckdb.DuckDBPyConnection, params: DictConfig) -> dict:
    """Create the temp table `deduped` from the registered views; return extract's counts."""
    if params.dedupe not in DEDUPE_MODES:
        raise ValueError(f"params.yaml: extract.dedupe is {params.dedupe!r}, expected one of {DEDUPE_MODES}")
    if int(params.min_distinct) < 3:
        raise ValueError(f"params.yaml: extract.min_distinct is {params.min_distinct}, a triple needs at least 3")
    query = db.sql("extract").replace("__DEDUPE__", db.sql(f"dedupe_{params.dedupe}"))
    con.execute(query, {"min_engagement": float(params.min_engagement), "session_gap": int(params.session_gap)})
    cols = ["events", "negative_events", "unknown_item_events", "deduped_visits", "sequences",
            "short_sequences_dropped"]
    row = con.execute(db.sql("extract_stats"), {"min_engagement": float(params.min_engagement),
                                                 "min_distinct": int(params.min_distinct)}).fetchone()
    return dict(zip(cols, row))


def run(cfg: DictConfig) -> None:
    con = db.connect(cfg)
    counts = contract.register(con, cfg.data.path, cfg.data.time_range, cfg.data.unknown_items)
    stats = build(con, cfg.extract)
    min_distinct = {"min_distinct": int(cfg.extract.min_distinct)}
    # Both outputs land together or not at all.
    with atomic_path(cfg.paths.sequences) as sequences, atomic_path(cfg.paths.triples) as triples:
        stats["kept_visits"] = db.copy(con, "sequences", sequences, min_distinct)
        stats["triples"] = db.copy(con, "triples", triples, min_distinct)
        if stats["triples"] == 0:
            raise ValueError(f"{cfg.data.path}: no triples after extract ({stats}); check extract.min_engagement "
                             "and extract.session_gap")
    stats["positive_events"] = stats["events"] - stats["negative_events"] - stats["unknown_item_events"]
    stats["repeats_collapsed"] = stats["positive_events"] - stats["deduped_visits"]
    stats.update(clusters=counts["clusters"], items=counts["items"], dataset=str(cfg.data.name))
    write_json(Path(cfg.paths.metrics) / "extract.json", stats)
    print(" ".join(f"{k}={v}" for k, v in sorted(stats.items())))
