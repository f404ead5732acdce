"""atomic_path: a killed writer leaves its temporary where git ignores it, and the next write of
the same output removes it."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from pipeline.config import ROOT
from pipeline.files import atomic_path

# A writer killed (SIGKILL: no cleanup runs) in the middle of writing the `tables` folder, as a
# bulk_infer stopped by the OOM killer or `kill -9` would be.
KILLED = textwrap.dedent("""
    import os, signal, sys
    from pipeline.files import atomic_path
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
