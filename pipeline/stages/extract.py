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
    """Create the temp table `deduped` from the registered views; return extract's counts.

    Each step materialises one table and drops its input, so at most two copies of the
    visits are held (or spilled) at a time."""
    if params.dedupe not in DEDUPE_MODES:
        raise ValueError(f"params.yaml: extract.dedupe is {params.dedupe!r}, expected one of {DEDUPE_MODES}")
    positive = {"min_engagement": float(params.min_engagement)}
    con.execute(db.sql("extract_order"), positive)
    con.execute(db.sql("extract_sessions"), {"session_gap": int(params.session_gap)})
    counts = con.execute("SELECT (SELECT count(*) FROM ordered), (SELECT max(seq) FROM sessioned)").fetchone()
    con.execute("DROP TABLE ordered")
    con.execute(db.sql(f"extract_dedupe_{params.dedupe}"))
    con.execute("DROP TABLE sessioned")
    con.execute(db.sql("extract_deduped"))
    con.execute("DROP TABLE kept")
    cursor = con.execute(db.sql("extract_stats"), {**positive, "positive_events": counts[0], "sequences": counts[1]})
    (row,) = cursor.fetchall()  # drained: the connection takes no other query while a result is open
    return dict(zip([c[0] for c in cursor.description], row))


def run(cfg: DictConfig) -> None:
    con = db.connect(cfg)
    counts = contract.register(con, cfg.data.path, cfg.data.time_range, cfg.data.unknown_items,
                               max_keyword_chars=cfg.data.max_keyword_chars,
                               engagement_range=cfg.data.engagement_range)
    stats = build(con, cfg.extract)
    # Both outputs land together or not at all.
    with atomic_path(cfg.paths.sequences) as sequences, atomic_path(cfg.paths.triples) as triples:
        stats["kept_visits"] = db.copy(con, "sequences", sequences)
        stats["triples"] = db.copy(con, "triples", triples)
        if stats["triples"] == 0:
            raise ValueError(f"{cfg.data.path}: no triples after extract ({stats}); check extract.min_engagement "
                             "and extract.session_gap")
    stats["repeats_collapsed"] = stats["positive_events"] - stats["deduped_visits"]
    stats.update(clusters=counts["clusters"], items=counts["items"], dataset=str(cfg.data.name))
    write_json(Path(cfg.paths.metrics) / "extract.json", stats)
    print(" ".join(f"{k}={v}" for k, v in sorted(stats.items())))
