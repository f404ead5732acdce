"""extract: positive filter, ordering with ties, session split, dedupe, triples, counted drops."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.stages import extract
from tests.conftest import compose, events_frame, run_stage, write_dataset

HOUR = 3600
# user 1: c0 c0(repeat) c1 [negative c5] c0(revisit) c2 c3 | 2h gap | c4 c5 c4 (2 distinct: dropped)
# user 2: c1 and c3 at the same second (item_id breaks the tie: c1 first), then c2, and an unknown item
EVENTS = [
    (1, 0, 0, 0.9), (1, 1, 60, 0.8), (1, 100, 120, 0.7), (1, 500, 150, 0.2), (1, 0, 180, 0.9),
    (1, 200, 240, 0.9), (1, 300, 300, 0.6), (1, 400, 300 + 2 * HOUR, 0.9), (1, 500, 360 + 2 * HOUR, 0.9),
    (1, 401, 420 + 2 * HOUR, 0.9),
    (2, 300, 0, 0.9), (2, 100, 0, 0.9), (2, 9999, 30, 0.9), (2, 200, 60, 0.9),
]


def run(tmp_path, *overrides):
    cfg = compose(tmp_path, *overrides)
    write_dataset(tmp_path / "data", events_frame(EVENTS))
    extract.run(cfg)
    triples = pd.read_parquet(cfg.paths.triples)
    sequences = pd.read_parquet(cfg.paths.sequences)
    headline, detail = (json.loads((tmp_path / "metrics" / name).read_text())
                        for name in ("extract.json", "extract/detail.json"))
    assert set(headline) == set(extract.HEADLINE) and not set(headline) & set(detail)
    return triples, sequences, {**headline, **detail}


def test_first_occurrence(tmp_path):
    triples, sequences, metrics = run(tmp_path)
    assert triples[["user_id", "c1", "c2", "c_next"]].values.tolist() == [
        [1, 0, 1, 2], [1, 1, 2, 3], [2, 1, 3, 2]]
    assert sequences.query("user_id == 1").cluster_id.tolist() == [0, 1, 2, 3]
    assert sequences.query("user_id == 2").cluster_id.tolist() == [1, 3, 2]
    # c_next's own timestamp stamps the triple
    assert triples.ts.iloc[0] == pd.Timestamp("2024-01-10 12:04:00")
    assert metrics["events"] == 14 and metrics["negative_events"] == 1 and metrics["unknown_item_events"] == 1
    assert metrics["positive_events"] == 12
    assert metrics["repeats_collapsed"] == 3  # c0 repeat, c0 revisit, c4 revisit
    assert metrics["sequences"] == 3 and metrics["short_sequences_dropped"] == 1
    assert metrics["triples"] == 3


def test_consecutive_keeps_revisits_but_no_triple_returns_to_c1(tmp_path):
    triples, sequences, metrics = run(tmp_path, "extract.dedupe=consecutive")
    assert sequences.query("user_id == 1").cluster_id.tolist() == [0, 1, 0, 2, 3]
    # (0, 1, 0) is not a triple of distinct clusters and is left out
    assert triples.query("user_id == 1")[["c1", "c2", "c_next"]].values.tolist() == [[1, 0, 2], [0, 2, 3]]
    assert metrics["repeats_collapsed"] == 1


def test_session_gap_is_a_setting(tmp_path):
    triples, _, metrics = run(tmp_path, f"extract.session_gap={3 * HOUR}")
    assert metrics["sequences"] == 2
    assert triples.query("user_id == 1")[["c1", "c2", "c_next"]].values.tolist() == [
        [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]


def test_min_engagement_is_a_setting(tmp_path):
    _, sequences, metrics = run(tmp_path, "extract.min_engagement=0.75")
    assert metrics["negative_events"] == 3
    # user 1 keeps c0 c0 c0 c2 (2 distinct) and c4 c5 c4: both sequences are too short
    assert sequences.query("user_id == 1").empty and metrics["short_sequences_dropped"] == 2


def test_output_is_deterministic(tmp_path):
    run(tmp_path / "a")
    run(tmp_path / "b")
    for name in ("triples.parquet", "sequences.parquet"):
        a, b = (tmp_path / run_dir / "work" / "extract" / name for run_dir in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()


def test_no_triples_is_an_error_and_keeps_old_outputs(tmp_path):
    cfg = compose(tmp_path, "extract.min_engagement=0.95")
    write_dataset(tmp_path / "data", events_frame(EVENTS))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "extract.json").write_text("{}")
    triples = Path(cfg.paths.triples)
    triples.parent.mkdir(parents=True)
    triples.write_text("last good run")
    with pytest.raises(ValueError, match="no triples after extract"):
        extract.run(cfg)
    assert (tmp_path / "metrics" / "extract.json").read_text() == "{}"
    assert triples.read_text() == "last good run"
    assert sorted(p.name for p in triples.parent.iterdir()) == ["triples.parquet"]


def test_matches_an_independent_polars_implementation(tmp_path):
    """On a synthetic world big enough for parallel scans, DuckDB's streaming steps keep the
    (user, ts, item) order they rely on: daily counts equal those of benchmarks' polars code."""
    from benchmarks.count.impl_polars import daily_counts
    from pipeline.data import synth
    from pipeline.stages import count

    cfg = compose(tmp_path, "data.synth.n_events=400000", "data.synth.chunk_events=100000")
    synth.generate(cfg.data.synth, cfg.data.time_range, cfg.data.path)
    extract.run(cfg)
    count.run(cfg)
    ours = pd.read_parquet(cfg.paths.daily_counts)
    theirs = daily_counts(tmp_path / "data" / "events", tmp_path / "data" / "items.parquet",
                          cfg.extract.min_engagement, cfg.extract.session_gap).to_pandas()
    ours["day"], theirs["day"] = pd.to_datetime(ours["day"]), pd.to_datetime(theirs["day"])
    pd.testing.assert_frame_equal(ours.astype({"n": "int64"}), theirs.astype({"n": "int64"}), check_dtype=False)
    sequences = pd.read_parquet(cfg.paths.sequences)
    assert sequences[["user_id", "seq", "pos"]].equals(
        sequences[["user_id", "seq", "pos"]].sort_values(["user_id", "seq", "pos"]).reset_index(drop=True))
    assert (sequences.groupby("seq").ts.diff().dropna() >= pd.Timedelta(0)).all()


def test_outputs_have_fixed_row_groups_so_their_bytes_do_not_depend_on_threads(world, tmp_path, monkeypatch):
    """DuckDB's parallel COPY cut row groups where its two threads handed over batches (at 3M events,
    two md5s in six runs); with small row groups forced, every run here must give the same bytes."""
    import hashlib

    import pyarrow.parquet as pq

    from pipeline import db

    monkeypatch.setattr(db, "ROW_GROUP_SIZE", 200)
    cfg = compose(tmp_path, f"data.path={world / 'data'}")
    seen = set()
    for _ in range(4):
        extract.run(cfg)
        for out in (cfg.paths.triples, cfg.paths.sequences):
            meta = pq.ParquetFile(out).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            assert len(sizes) > 3 and set(sizes[:-1]) == {200} and 0 < sizes[-1] <= 200, (out, sizes)
        seen.add(tuple(hashlib.md5(Path(p).read_bytes()).hexdigest() for p in (cfg.paths.triples, cfg.paths.sequences)))
    assert len(seen) == 1


@pytest.mark.parametrize("n_clusters", [1, 2])
def test_too_few_clusters_for_a_triple_say_so(tmp_path, n_clusters):
    cfg = compose(tmp_path)
    write_dataset(tmp_path / "data", events_frame([(1, 100 * (i % n_clusters), 60 * i, 0.9) for i in range(8)]),
                  n_clusters=n_clusters)
    with pytest.raises(ValueError, match=rf"data: {n_clusters} clusters; a triple \(c1, c2, c_next\) needs three "
                                         "distinct clusters$"):
        extract.run(cfg)


def test_a_memory_limit_too_small_names_the_setting(tmp_path, monkeypatch):
    write_dataset(tmp_path / "data", events_frame(EVENTS))
    error = run_stage(monkeypatch, tmp_path, "extract", "duckdb.memory_limit=100KB")
    assert error.startswith("extract: duckdb.memory_limit=100KB is too small for this data (DuckDB: Out of Memory"), error
    assert "\n" not in error and "clusters.parquet" not in error
