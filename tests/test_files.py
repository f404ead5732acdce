"""atomic_path: a killed writer leaves its temporary where git ignores it, and the next write of
the same output removes it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config import ROOT
from pipeline.files import MARK, atomic_path, tree_sha256

# A writer killed (SIGKILL: no cleanup runs) in the middle of writing the `tables` folder, as a
# bulk_infer stopped by the OOM killer or `kill -9` would be.
KILLED = textwrap.dedent("""
    import os, signal, sys
    from pipeline.files import MARK, atomic_path, tree_sha256
    with atomic_path(sys.argv[1]) as out:
        out.mkdir()
        (out / "base.parquet").write_text("half written")
        os.kill(os.getpid(), signal.SIGKILL)
""")



def test_a_killed_writer_leaves_a_git_ignored_temporary_that_the_next_write_removes(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path / "tables")], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.glob(".tables.tmp-*")
    assert (left / "base.parquet").exists() and not (tmp_path / "tables").exists()
    # The same name in the repository root (where bulk_infer writes tables/) is ignored by git.
    names = [left.name, "work/extract/.triples.parquet.tmp-7"]
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", *names], capture_output=True,
                             text=True)
    assert ignored.stdout.split() == names
    with atomic_path(tmp_path / "tables") as out:
        out.mkdir()
        (out / "base.parquet").write_text("whole")
    assert not list(tmp_path.glob(".tables.tmp-*")) and (tmp_path / "tables" / "base.parquet").read_text() == "whole"


def test_a_running_writer_keeps_its_temporary(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = tmp_path / f".tables.tmp-{other.pid}"
        running.mkdir()
        unrelated = tmp_path / ".other.tmp-1"
        unrelated.mkdir()
        with atomic_path(tmp_path / "tables") as out:
            out.write_text("x")
        assert running.exists() and unrelated.exists()
    finally:
        other.kill()
        other.wait()
    with atomic_path(tmp_path / "tables") as out:
        out.write_text("y")
    assert not running.exists()


def write_set(target, names, content):
    with atomic_path(target) as out:
        out.mkdir()
        for name in names:
            (out / name).write_text(content)


def test_a_folder_holding_files_the_pipeline_did_not_write_is_refused_and_kept(tmp_path):
    users = tmp_path / "raw"  # outside the repository's work tree, like a path= override pointing anywhere
    users.mkdir()
    (users / "ratings.csv").write_text("mine")
    (users / "LICENSE.txt").write_text("theirs")
    with pytest.raises(ValueError, match=r"raw: holds files the pipeline did not write .*nothing was replaced"):
        write_set(users, ["base.parquet"], "new")
    assert sorted(p.name for p in users.iterdir()) == ["LICENSE.txt", "ratings.csv"]
    # A file among the names the writer owns (what DVC restores of an output, without the mark) is
    # not enough when another file sits beside it.
    (users / "base.parquet").write_text("old")
    with pytest.raises(ValueError, match="holds files"):
        with atomic_path(users, owns=("*.parquet",)):
            pass
    assert (users / "ratings.csv").read_text() == "mine"


def test_a_folder_the_pipeline_wrote_is_replaced_whole(tmp_path):
    write_set(tmp_path / "tables", ["base.parquet", "rag-2024-03-01.parquet"], "old")
    assert (tmp_path / "tables" / MARK).is_file()
    write_set(tmp_path / "tables", ["base.parquet"], "new")
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [MARK, "base.parquet"]
    # An output restored by DVC carries no mark (.dvcignore leaves it out): its owned names suffice.
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "base.parquet").write_text("old")
    with atomic_path(restored, owns=("*.parquet",)) as out:
        out.mkdir()
        (out / "rag-2024-03-02.parquet").write_text("new")
    assert sorted(p.name for p in restored.iterdir()) == [MARK, "rag-2024-03-02.parquet"]
    # The mark is who wrote the folder, not what it holds: the content hash leaves it out.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "rag-2024-03-02.parquet").write_text("new")
    assert tree_sha256(restored) == tree_sha256(plain)


def test_a_file_output_never_replaces_a_folder(tmp_path):
    write_set(tmp_path / "out", ["a"], "x")
    with pytest.raises(ValueError, match="out: is a folder, where this output is a file; nothing was replaced"):
        with atomic_path(tmp_path / "out") as tmp:
            tmp.write_text("file")
    assert (tmp_path / "out" / "a").read_text() == "x"


def test_a_failed_swap_leaves_the_old_complete_set(tmp_path, monkeypatch):
    target = tmp_path / "tables"
    write_set(target, ["a.parquet", "b.parquet", "c.parquet", "d.parquet"], "old")
    real = os.rename

    def new_set_cannot_move_in(src, dst):
        if ".tmp-" in str(src):
            raise PermissionError(13, "Permission denied")
        real(src, dst)

    monkeypatch.setattr(os, "rename", new_set_cannot_move_in)
    with pytest.raises(ValueError, match="tables: cannot be replaced .*the old folder is kept whole"):
        write_set(target, ["a.parquet"], "new")
    monkeypatch.undo()
    assert sorted(p.name for p in target.glob("*.parquet")) == ["a.parquet", "b.parquet", "c.parquet", "d.parquet"]
    assert {p.read_text() for p in target.glob("*.parquet")} == {"old"}
    assert not list(tmp_path.glob(".tables.*"))


def test_an_old_table_that_cannot_be_removed_leaves_the_new_complete_set(tmp_path, monkeypatch, capsys):
    target = tmp_path / "tables"
    write_set(target, ["a.parquet", "b.parquet"], "old")
    real = shutil.rmtree

    def immutable(path, *args, **kwargs):
        if ".old-" in str(path):
            raise PermissionError(1, "Operation not permitted")
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", immutable)
    write_set(target, ["a.parquet", "c.parquet"], "new")
    assert "could not be removed" in capsys.readouterr().err
    assert sorted(p.name for p in target.glob("*.parquet")) == ["a.parquet", "c.parquet"]
    assert {p.read_text() for p in target.glob("*.parquet")} == {"new"}
    (old,) = tmp_path.glob(".tables.old-*")
    assert sorted(p.name for p in old.glob("*.parquet")) == ["a.parquet", "b.parquet"]
    monkeypatch.undo()
    # The old set belongs to this (live) process; another writer's next run removes it once it is gone.
    os.rename(old, tmp_path / ".tables.old-999999999")
    write_set(target, ["a.parquet"], "newer")
    assert not list(tmp_path.glob(".tables.old-*"))


def test_bulk_infer_into_a_folder_of_the_users_files_keeps_them(world, tmp_path):
    from tests.conftest import build

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ratings.csv").write_text("userId,movieId\n")
    (raw / "LICENSE.txt").write_text("licence")
    with pytest.raises(ValueError, match=rf"^{raw}: holds files the pipeline did not write"):
        build(world, tmp_path / "w", f"paths.tables={raw}")
    assert sorted(p.name for p in raw.iterdir()) == ["LICENSE.txt", "ratings.csv"]


def test_bulk_infer_replaces_tables_restored_without_the_mark_and_refuses_before_decoding(world, tmp_path, monkeypatch):
    """`dvc checkout` restores tables/ as its Parquet files alone: bulk_infer replaces them; a
    folder holding anything else is refused before a single prompt is decoded."""
    from pipeline.llm import bulk
    from tests.conftest import build

    cfg = build(world, tmp_path / "w")
    tables = Path(cfg.paths.tables)
    (tables / MARK).unlink()
    before = sorted(p.name for p in tables.iterdir())
    build(world, tmp_path / "w")
    assert (tables / MARK).is_file() and sorted(p.name for p in tables.glob("*.parquet")) == before

    (tables / MARK).unlink()
    (tables / "notes.txt").write_text("mine")
    monkeypatch.setattr(bulk, "scored_answers", lambda *a, **k: pytest.fail("decoded before refusing"))
    with pytest.raises(ValueError, match="holds files the pipeline did not write"):
        build(world, tmp_path / "w", "bulk_infer.max_new_tokens=4")  # another namespace: nothing cached
    assert (tables / "notes.txt").read_text() == "mine"


def test_finetune_refuses_an_adapter_folder_of_the_users_files_before_training(world, tmp_path, monkeypatch):
    from pipeline.llm import lora
    from pipeline.stages import finetune
    from tests.conftest import TINY_WORLD, compose

    mine = tmp_path / "adapter"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    monkeypatch.setattr(lora, "train", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(ValueError, match="holds files the pipeline did not write"):
        finetune.run(compose(world, *TINY_WORLD, f"paths.adapter={mine}"))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_no_path_setting_makes_a_stage_replace_what_it_did_not_write(tmp_path, monkeypatch):
    """A user's file, a git-tracked file, another stage's output, an input, a link: each refused in
    one line by the stage runner before any work (and by `python -m pipeline.config`), and kept."""
    from pipeline import config, lineage
    from tests.conftest import events_frame, run_stage, write_dataset

    write_dataset(tmp_path / "data", events_frame([(1, 100 * (i % 4), 60 * i, 0.9) for i in range(8)]))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert run_stage(monkeypatch, tmp_path, "extract") is None
    triples = tmp_path / "work" / "extract" / "triples.parquet"
    link = tmp_path / "linked"
    (tmp_path / "elsewhere").mkdir()
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "ratings.csv").write_text("userId,movieId\n")
    kept = {p: p.read_bytes() for p in (notes, triples, ROOT / "README.md", tmp_path / "elsewhere" / "ratings.csv")}
    for stage, override, problem in (
            ("extract", f"paths.sequences={notes}", "a file the extract stage did not write"),
            ("evaluate", f"paths.report={ROOT / 'README.md'}", "tracked by git and not an output of the evaluate stage"),
            ("count", f"paths.daily_counts={triples}", "the extract stage's output, not the count stage's"),
            ("finetune", f"paths.adapter={tmp_path / 'tables'}", "an output of the bulk_infer stage"),
            ("extract", f"paths.sequences={tmp_path / 'data' / 'x.parquet'}", "an input of the extract stage"),
            ("bulk_infer", f"paths.tables={link}", "a symbolic link"),
            ("extract", f"paths.sequences={tmp_path / 'elsewhere'}", "holds files the pipeline did not write")):
        cfg = config.compose([f"data.path={tmp_path / 'data'}", f"paths.tables={tmp_path / 'tables'}", override])
        with pytest.raises(ValueError, match=problem):
            lineage.check_paths(cfg, stage)
        with pytest.raises(ValueError, match=problem):
            config.dump([f"data.path={tmp_path / 'data'}", f"paths.tables={tmp_path / 'tables'}", override],
                        tmp_path / "refused.yaml")
        assert not (tmp_path / "refused.yaml").exists()
    # The stage runner refuses before the stage starts, on a params.yaml written past the composition's check.
    from omegaconf import OmegaConf

    from pipeline.__main__ import main
    from tests.conftest import LOAD

    params = tmp_path / "params.yaml"
    paths = {k: tmp_path / v for k, v in config.compose().paths.items()}
    params.write_text(OmegaConf.to_yaml(config.compose([
        f"data.path={tmp_path / 'data'}", *[f"paths.{k}={v}" for k, v in paths.items()],
        f"duckdb.temp_directory={tmp_path / 'duckdb_tmp'}", f"paths.sequences={notes}"])))
    monkeypatch.setattr(config, "load", lambda: LOAD(params))
    with pytest.raises(SystemExit, match="a file the extract stage did not write"):
        main(["extract"])
    assert all(p.read_bytes() == b for p, b in kept.items())
    # Its own outputs, recorded on the first run, it replaces.
    assert run_stage(monkeypatch, tmp_path, "extract") is None
