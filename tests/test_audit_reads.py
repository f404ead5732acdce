"""What audit and `lookup --rev` read from a revision is what that revision recorded: a DVC cache
object whose bytes are not the md5 dvc.lock (or a .dvc file) records is refused, and so is a
params.yaml that is not YAML, each in one line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import lookup, manifest
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # a scratch DVC repository in other processes

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
       "DVC_NO_ANALYTICS": "1"}
TABLE = "tables/rag-2024-03-01.parquet"
PARAMS = "paths:\n  tables: tables\n  metrics: metrics\ndata:\n  path: data\nperiod:\n  month: 2024-03\n"


def run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=repo, env=ENV, capture_output=True, text=True)


def table(c_pred: int) -> pd.DataFrame:
    return pd.DataFrame({"c1": [1, 2], "c2": [2, 1], "c_pred": pd.array([c_pred, 4], "Int32"),
                         "description": ["c, d", "e, f"], "valid": [True, True], "served": ["llm", "llm"],
                         "retrieved": [[3], []], "output": [" c, d", " e, f"]})


FIELDS = {**{k: "x" for k in lookup.LINEAGE}, "gate": {"passed": True}, "packages": {}, "params": {}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A repository with one DVC-tracked table, committed; the code under test copied in."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "tables").mkdir()
    manifest.write_table(table(3), repo / TABLE, FIELDS)
    for args in (("git", "init", "-q"), (sys.executable, "-m", "dvc", "init", "-q"),
                 (sys.executable, "-m", "dvc", "add", "-q", "tables"), ("git", "add", "-A"),
                 ("git", "commit", "-qm", "release")):
        assert run(repo, *args).returncode == 0, args
    return repo


def test_an_edited_cache_object_is_not_served_under_the_revisions_lineage(repo):
    served = run(repo, sys.executable, "-m", "pipeline.lookup", "1", "2", "--rev", "HEAD", "--table", TABLE)
    assert served.returncode == 0 and "(1, 2) -> 3" in served.stdout, served.stderr
    md5 = run(repo, sys.executable, "-c", f"from dvc.api import DVCFileSystem; "
                                          f"print(DVCFileSystem('.', rev='HEAD').info('{TABLE}')['md5'])").stdout.strip()
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cached.chmod(0o644)
    manifest.write_table(table(5), cached, FIELDS)  # one prediction changed, the manifest kept
    for args, prog in ((("pipeline.lookup", "1", "2", "--rev", "HEAD", "--table", TABLE), "lookup"),
                       (("pipeline.lookup", "1", "2", "--rev", "HEAD"), "lookup"),
                       (("pipeline.audit", "show", "HEAD"), "audit")):
        done = run(repo, sys.executable, "-m", *args)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, (args, done.stdout, done.stderr)
        assert done.stderr.startswith(f"{prog}: {TABLE} at HEAD: its bytes are not the md5 {md5} the revision "
                                      "records"), done.stderr


def test_a_revision_whose_params_yaml_is_not_yaml_is_named(repo):
    (repo / "params.yaml").write_text(PARAMS + "  bad: [1, 2\nmore: x\n")
    assert run(repo, "git", "commit", "-qam", "broken params").returncode == 0
    for args, prog in ((("pipeline.lookup", "1", "2", "--rev", "HEAD"), "lookup"),
                       (("pipeline.audit", "show", "HEAD"), "audit")):
        done = run(repo, sys.executable, "-m", *args)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, (args, done.stderr)
        assert done.stderr.startswith(f"{prog}: params.yaml at HEAD: line 9: not valid YAML ("), done.stderr
