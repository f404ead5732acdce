"""The answer cache serves only what it stored: a part whose answers changed, or one moved in from
another namespace, stops the run with one line naming it, and is recomputed only once the user
drops it (python -m pipeline.llm cache --drop-corrupt)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.llm import __main__ as llm_cli
from pipeline.llm.cache import AnswerCache
from tests.conftest import build

NS = {"base_model_hash": "b", "decoding": "free"}
PROMPTS = [f"prompt {i}" for i in range(6)]


def decode(prompts, advance):
    advance(len(prompts))
    return [(f"answer to {p}", -0.5 * len(p)) for p in prompts]


WANT = {p: (f"answer to {p}", -0.5 * len(p)) for p in PROMPTS}


def filled(root, ns=NS) -> AnswerCache:
    cache = AnswerCache(root, ns)
    cache.fill(PROMPTS, decode, shard_size=4)
    return cache


def forge(part, answer="forged"):
    """Rewrite a part's answers, keys and prompts left consistent and its metadata copied."""
    table = pq.read_table(part)
    forged = table.set_column(table.schema.get_field_index("answer"), "answer",
                              pa.array([answer] * table.num_rows))
    pq.write_table(forged.replace_schema_metadata(table.schema.metadata), part)


def test_a_filled_cache_loads_every_answer(tmp_path):
    cache = filled(tmp_path)
    assert len(list(cache.dir.glob("part-*.parquet"))) == 2
    assert AnswerCache(tmp_path, NS).load() == WANT


def test_a_forged_log_probability_is_refused_and_an_old_part_without_one_is_named(tmp_path):
    cache = filled(tmp_path)
    part = sorted(cache.dir.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    column = table.schema.get_field_index("logprob")
    pq.write_table(table.set_column(column, "logprob", pa.array([0.0] * table.num_rows))
                   .replace_schema_metadata(table.schema.metadata), part)
    with pytest.raises(ValueError, match="fails its checksum"):
        cache.load()
    # A part of the format before log-probabilities, checksum and all, moved into today's namespace.
    pq.write_table(table.remove_column(column).replace_schema_metadata(table.schema.metadata), part)
    with pytest.raises(ValueError, match=f"{part.name}: answer-cache part has no logprob column"):
        cache.load()


def test_a_forged_answer_is_a_one_line_error_naming_the_part(tmp_path):
    cache = filled(tmp_path)
    part = sorted(cache.dir.glob("part-*.parquet"))[0]
    forge(part)
    with pytest.raises(ValueError) as err:
        cache.load()
    message = str(err.value)
    assert message.startswith(f"{part}: answer-cache part fails its checksum") and "\n" not in message
    assert "python -m pipeline.llm cache --drop-corrupt" in message


def test_a_part_without_its_checksum_is_refused(tmp_path):
    cache = filled(tmp_path)
    part = sorted(cache.dir.glob("part-*.parquet"))[0]
    pq.write_table(pq.read_table(part).replace_schema_metadata({}), part)
    with pytest.raises(ValueError, match="carries no checksum"):
        cache.load()


def test_a_part_copied_from_another_namespace_is_refused(tmp_path):
    other = filled(tmp_path, {**NS, "decoding": "constrained"})
    cache = AnswerCache(tmp_path, NS)
    part = sorted(other.dir.glob("part-*.parquet"))[0]
    (cache.dir / part.name).write_bytes(part.read_bytes())
    with pytest.raises(ValueError, match=f"{part.name}: answer-cache part fails its checksum"):
        cache.load()


def test_a_truncated_part_is_refused(tmp_path):
    cache = filled(tmp_path)
    part = sorted(cache.dir.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{part.name}: answer-cache part is unreadable"):
        cache.load()


def test_only_drop_corrupt_deletes_a_bad_part_and_the_next_fill_recomputes_it(tmp_path, capsys):
    cache = filled(tmp_path)
    bad, good = sorted(cache.dir.glob("part-*.parquet"))
    forge(bad)
    with pytest.raises(SystemExit, match="parts failed their check"):
        llm_cli.main(["cache", "--root", str(tmp_path)])
    assert f"{bad}: fails its checksum" in capsys.readouterr().out and bad.exists()
    llm_cli.main(["cache", "--root", str(tmp_path), "--drop-corrupt"])
    assert "2 parts checked, 1 failed and deleted" in capsys.readouterr().out
    assert not bad.exists() and good.exists()
    kept = cache.load()
    missing = [p for p in PROMPTS if p not in kept]
    assert 0 < len(missing) < len(PROMPTS)
    kept.update(cache.fill(missing, decode, shard_size=4))
    assert AnswerCache(tmp_path, NS).load() == kept == WANT
    llm_cli.main(["cache", "--root", str(tmp_path)])  # clean again: exits normally


def test_bulk_infer_stops_on_a_forged_part_and_rebuilds_the_same_tables_once_it_is_dropped(world, tmp_path):
    cfg = build(world, tmp_path / "a")
    tables = {p.name: p.read_bytes() for p in Path(cfg.paths.tables).glob("*.parquet")}
    part = sorted(Path(cfg.paths.infer_cache).rglob("part-*.parquet"))[0]
    forge(part, " topic 0, theme 0")
    with pytest.raises(ValueError, match=f"{part}: answer-cache part fails its checksum"):
        build(world, tmp_path / "a")
    assert {p.name: p.read_bytes() for p in Path(cfg.paths.tables).glob("*.parquet")} == tables
    llm_cli.main(["cache", "--root", cfg.paths.infer_cache, "--drop-corrupt"])
    build(world, tmp_path / "a")
    assert {p.name: p.read_bytes() for p in Path(cfg.paths.tables).glob("*.parquet")} == tables
