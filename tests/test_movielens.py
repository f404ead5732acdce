"""MovieLens adapter: contract, clusters, determinism (python -m pipeline.data movielens)."""
from __future__ import annotations

import csv

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline import config
from pipeline.data import contract
from pipeline.data.movielens import CATCH_ALL, cluster_keys, convert

FILES = ("events.parquet", "items.parquet", "clusters.parquet")


@pytest.fixture(scope="module")
def ml_cfg():
    cfg = config.compose(["data=movielens"]).data
    cfg.source = str(config.ROOT / cfg.source)  # independent of the working directory
    return cfg


@pytest.fixture(scope="module")
def converted(ml_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("movielens") / "data"
    return out, convert(ml_cfg, out)


def test_passes_the_contract(ml_cfg, converted):
    out, stats = converted
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    counts = contract.register(con, out, ml_cfg.time_range, "drop")
    with open(f"{ml_cfg.source}/ratings.csv", newline="") as fh:
        ratings = sum(1 for _ in csv.reader(fh)) - 1
    with open(f"{ml_cfg.source}/movies.csv", newline="") as fh:
        movies = sum(1 for _ in csv.reader(fh)) - 1
    assert stats["events"] == ratings == con.execute("SELECT count(*) FROM events").fetchone()[0]
    assert stats["items"] == movies == counts["items"]
    assert stats["clusters"] == counts["clusters"]
    assert 0 < stats["positive_share"] < 1
    # Every event's item has a cluster: nothing to drop.
    assert con.execute("SELECT count(*) FROM events ANTI JOIN items USING (item_id)").fetchone()[0] == 0


def test_events_schema_order_and_engagement(ml_cfg, converted):
    out, stats = converted
    events = pq.read_table(out / "events.parquet")
    assert events.schema.equals(contract.EVENTS_SCHEMA)
    con = duckdb.connect()
    con.register("events", events)
    rows = con.execute("SELECT user_id, ts, item_id FROM events").fetchall()
    assert rows == sorted(rows)
    positive, low, high = con.execute(f"SELECT avg((engagement >= {ml_cfg.min_engagement})::INT), "
                                      "min(engagement), max(engagement) FROM events").fetchone()
    assert positive == pytest.approx(stats["positive_share"], abs=1e-4)
    assert (low, high) == (pytest.approx(0.1), 1.0)  # ratings 0.5 to 5 stars


def test_clusters_are_described_uniquely(converted):
    out, _ = converted
    clusters = pq.read_table(out / "clusters.parquet").to_pylist()
    assert 20 <= len(clusters) <= 60
    assert [c["cluster_id"] for c in clusters] == list(range(len(clusters)))
    for c in clusters:
        words = c["keywords"]
        assert contract.MIN_KEYWORDS <= len(words) <= contract.MAX_KEYWORDS, words
        assert all(w and w == w.lower().strip() and "," not in w for w in words), words
        assert len(set(words)) == len(words), words
    descriptions = [contract.description(c["keywords"]) for c in clusters]
    assert len(set(descriptions)) == len(descriptions)
    items = pq.read_table(out / "items.parquet")
    assert set(items["cluster_id"].to_pylist()) == set(range(len(clusters)))  # no empty cluster


def test_same_input_same_bytes(ml_cfg, converted, tmp_path):
    out, _ = converted
    convert(ml_cfg, tmp_path / "again")
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_cluster_keys_fall_back():
    # Genre counts: A 1, B 2, C 4, D 5 -> keys are rarest first.
    movies = {1: ["D", "C", "A"], 2: ["D", "C"], 3: ["C", "D"], 4: ["C", "B", "D"], 5: ["D", "B"], 6: []}
    keys = cluster_keys(movies, tagged={1, 2, 3, 4, 5}, min_movies=2)
    # (C, D) has 3 movies; (B, C) and (B, D) one each -> (B,) with 2 movies; (A, C) -> (A,) with 1,
    # which is too small and folds into the largest kept key holding A, then C: (C, D).
    assert keys == {1: ("C", "D"), 2: ("C", "D"), 3: ("C", "D"), 4: ("B",), 5: ("B",), 6: CATCH_ALL}
    # A single genre nobody tagged cannot get a second keyword: it folds too (B, then C -> (C, D)).
    keys = cluster_keys(movies, tagged={1, 2, 3}, min_movies=2)
    assert keys[4] == keys[5] == ("C", "D")


def test_converting_into_the_source_folder_refuses_and_keeps_it(ml_cfg, converted):
    from pathlib import Path

    source = Path(ml_cfg.source)
    before = sorted(p.name for p in source.iterdir())
    with pytest.raises(ValueError, match=rf"^{source}: holds files the pipeline did not write"):
        convert(ml_cfg, source)
    assert sorted(p.name for p in source.iterdir()) == before
    out, _ = converted  # a folder the pipeline wrote is replaced
    assert (out / ".pipeline-output").is_file()
    convert(ml_cfg, out)
