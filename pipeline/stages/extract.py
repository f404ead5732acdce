"""extract: validated raw data -> deduped cluster sequences and (c1, c2, c_next) triples."""
from __future__ import annotations

from omegaconf import DictConfig

from pipeline import db, engines
from pipeline.data import contract
from pipeline.files import atomic_path, write_metrics

# What metrics/extract.json keeps of the counts; the rest go to metrics/extract/detail.json.
HEADLINE = ("events", "positive_events", "unknown_item_events", "sequences", "triples")


def form(cfg: DictConfig) -> str:
    """The SQL form extract runs: extract.form, where auto is ordered on DuckDB, partitioned elsewhere
    (the schema allows ordered on DuckDB only)."""
    if cfg.extract.form == "auto":
        return "ordered" if cfg.engine == "duckdb" else "partitioned"
    return cfg.extract.form


def build_ordered(engine, params: DictConfig) -> None:
    """DuckDB only: one global sort, then windows with an empty OVER () streaming over that order."""
    engine.table("ordered", "extract_order")
    engine.drop("positive")
    engine.table("sessioned", "extract_sessions", {"session_gap": params.session_gap})
    engine.drop("ordered")
    engine.table("kept", f"extract_ordered_{params.dedupe}")
    engine.drop("sessioned")
    engine.table("deduped", "extract_ordered_deduped")
    engine.drop("kept")


def build_partitioned(engine, params: DictConfig) -> None:
    """Any engine: every window names its partition (the user) and order; no step relies on row order."""
    engine.table("visits", "extract_visits", {"session_gap": params.session_gap})
    engine.drop("positive")
    engine.table("kept", f"extract_dedupe_{params.dedupe}")
    engine.drop("visits")
    engine.table("deduped", "extract_deduped")
    engine.drop("kept")


def build(engine, params: DictConfig, sql_form: str) -> dict:
    """Create the table `deduped` from the tables events and items; return extract's counts.

    Each step materialises one table and drops its input, so at most two copies of the
    visits are held (or spilled) at a time. Both forms give the same rows (tests/test_engines.py)."""
    engine.table("positive", "extract_positive", {"min_engagement": params.min_engagement})
    (build_ordered if sql_form == "ordered" else build_partitioned)(engine, params)
    (stats,) = engine.rows("extract_stats", {"min_engagement": params.min_engagement})
    return stats


def write(engine, cfg: DictConfig, stats: dict, sequences_query: str, triples_query: str) -> None:
    # Both outputs land together or not at all.
    with atomic_path(cfg.paths.sequences) as sequences, atomic_path(cfg.paths.triples) as triples:
        stats["kept_visits"] = engine.copy(sequences_query, sequences)
        stats["triples"] = engine.copy(triples_query, triples)
        if stats["triples"] == 0:
            raise ValueError(f"{cfg.data.path}: no triples after extract ({stats}); check extract.min_engagement "
                             "and extract.session_gap")


def run(cfg: DictConfig) -> None:
    sql_form = form(cfg)
    con = db.connect(cfg)
    counts = contract.register(con, cfg.data.path, cfg.data.time_range, cfg.data.unknown_items,
                               max_keyword_chars=cfg.data.max_keyword_chars,
                               engagement_range=cfg.data.engagement_range)
    if counts["clusters"] < 3:
        raise ValueError(f"{cfg.data.path}: {counts['clusters']} clusters; a triple (c1, c2, c_next) needs three "
                         "distinct clusters")
    with engines.open_engine(cfg, con) as engine:
        if cfg.engine != "duckdb":
            engine.stage_views(con, ("events", "items"))
        stats = build(engine, cfg.extract, sql_form)
        if sql_form == "ordered":  # deduped is in (user, time) order already
            write(engine, cfg, stats, "extract_sequences", "extract_triples")
        else:
            write(engine, cfg, stats, "extract_sequences_sorted", "extract_triples_sorted")
    stats["repeats_collapsed"] = stats["positive_events"] - stats["deduped_visits"]
    stats.update(clusters=counts["clusters"], items=counts["items"], dataset=cfg.data.name)
    write_metrics(cfg.paths.metrics, "extract", {k: stats[k] for k in HEADLINE},
                  {k: v for k, v in stats.items() if k not in HEADLINE})
    print(" ".join(f"{k}={v}" for k, v in sorted(stats.items())))
