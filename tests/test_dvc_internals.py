"""Each assumption pipeline/dvc_internals.py makes about DVC's internals, checked against the
installed DVC: an upgrade that breaks one fails the test of that assumption, named, rather than
audit, lookup --rev, the lineage checks or the tables' manifests in silence. In-process DVC on a
scratch repository (no `dvc repro`): a few seconds in all."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import dvc_internals
from tests.conftest import ROOT

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
DVC_YAML = """stages:
  copy:
    cmd: cp ${inputs.dir}/a.txt ${outputs.dir}/b.txt
    deps:
      - ${inputs.dir}/a.txt
      - pipeline/${inputs.code}.py
    params:
      - inputs
      - outputs.dir
    outs:
      - ${outputs.dir}/b.txt
    metrics:
      - ${outputs.dir}/m.json:
          cache: false
"""
# DVC's own calls into pygtrie, on every index it builds: not ours to fix, noise in the output.
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value will soon raise:DeprecationWarning")
PARAMS = {"inputs": {"dir": "in", "code": "copying"}, "outputs": {"dir": "out"}}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=GIT_ENV)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git and DVC repository with one stage, a DVC-tracked file (a.txt) and folder (folder/), a
    git-tracked file (plain.txt), all committed."""
    from dvc.repo import Repo

    root = tmp_path_factory.mktemp("repo")
    git(root, "init", "-q")
    Repo.init(str(root)).close()
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for name, text in {"a.txt": "alpha\n", "folder/x.txt": "x\n", "folder/y.txt": "y\n", "plain.txt": "git\n",
                       "in/a.txt": "input\n", "pipeline/copying.py": ""}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    with Repo(str(root)) as dvc:
        dvc.add([str(root / "a.txt"), str(root / "folder")])
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tracked")
    return root


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_stages_read_the_repositorys_dvc_yaml_as_dvc_itself_collects_it():
    """The one reading of dvc.yaml (lineage's graph, the manifests' deps) fills ${} as `dvc repro`
    does: for every stage, the deps, outs and params keys DVC's own stage loader gives under
    params.yaml."""
    from dvc.dependency import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        theirs = {stage.name: stage for stage in repo.stage.collect(str(ROOT / "dvc.yaml"))}
    ours = dvc_internals.stages()
    assert list(ours) == list(theirs)
    for name, s in ours.items():
        stage = theirs[name]
        params = [d for d in stage.deps if isinstance(d, ParamsDependency)]
        assert s["deps"] == [d.def_path for d in stage.deps if d not in params], name
        assert s["params"] == [key for d in params for key in d.params], name
        assert s["outs"] == [o.def_path for o in stage.outs], name


def test_stages_fill_from_the_values_given_and_name_a_missing_key(repo):
    assert dvc_internals.stages(root=repo) == {"copy": {
        "deps": ["in/a.txt", "pipeline/copying.py"], "outs": ["out/b.txt", "out/m.json"],
        "params": ["inputs", "outputs.dir"]}}
    given = dvc_internals.stages({**PARAMS, "outputs": {"dir": "/elsewhere"}}, root=repo)["copy"]
    assert given["outs"] == ["/elsewhere/b.txt", "/elsewhere/m.json"]
    with pytest.raises(ValueError) as refused:
        dvc_internals.stages({"inputs": PARAMS["inputs"]}, root=repo)
    assert str(refused.value).startswith(f"{repo / 'dvc.yaml'}: stage copy: ") and "outputs.dir" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_default_remote_is_read_from_the_work_trees_config(repo, tmp_path):
    assert dvc_internals.default_remote(repo) == (None, {})
    config = repo / ".dvc" / "config.local"
    config.write_text(f"[core]\n    remote = store\n['remote \"store\"']\n    url = {tmp_path}\n")
    try:
        name, conf = dvc_internals.default_remote(repo)
    finally:
        config.unlink()
    assert (name, conf["url"]) == ("store", str(tmp_path))


def test_status_is_empty_when_current_names_a_changed_stage_and_raises_ours(repo, monkeypatch):
    """Asked from outside the repository too: a stage is named by root/dvc.yaml, not the working folder's."""
    from dvc.repo import Repo

    assert dvc_internals.status(["copy"], with_deps=True, root=repo)  # never built: no dvc.lock
    out = repo / "out"
    out.mkdir()
    (out / "b.txt").write_text("input\n")
    (out / "m.json").write_text("{}\n")
    with monkeypatch.context() as inside, Repo(str(repo)) as dvc:
        inside.chdir(repo)  # DVC's stage cache wants it
        dvc.commit("copy", force=True)  # dvc.lock records what is there, as a run would have
    try:
        assert dvc_internals.status(["copy"], with_deps=True, root=repo) == {}
        assert dvc_internals.status(root=repo) == {}
        (out / "b.txt").write_text("edited\n")
        assert list(dvc_internals.status(["copy"], with_deps=True, root=repo)) == ["copy"]
        with pytest.raises(dvc_internals.DvcError, match="nope"):
            dvc_internals.status(["nope"], with_deps=True, root=repo)
    finally:
        shutil.rmtree(out)
        (repo / "dvc.lock").unlink()


def test_push_sends_the_cache_to_the_default_remote_and_raises_ours_without_one(repo, tmp_path):
    with pytest.raises(dvc_internals.DvcError, match="no remote"):
        dvc_internals.push(repo)
    config = repo / ".dvc" / "config.local"
    config.write_text(f"[core]\n    remote = store\n['remote \"store\"']\n    url = {tmp_path}\n")
    try:
        dvc_internals.push(repo)
    finally:
        config.unlink()
    digest = md5(b"alpha\n")
    assert (tmp_path / "files" / "md5" / digest[:2] / digest[2:]).read_bytes() == b"alpha\n"


def test_the_cache_layout_and_a_folders_listing(repo):
    from dvc.api import DVCFileSystem

    digest = md5(b"alpha\n")
    assert dvc_internals.cache_path(digest, repo).read_bytes() == b"alpha\n"
    listing = DVCFileSystem(str(repo), rev="HEAD").info("folder")["md5"]
    assert listing.endswith(".dir")
    assert dvc_internals.folder_listing(listing, repo) == {"x.txt": md5(b"x\n"), "y.txt": md5(b"y\n")}
    assert dvc_internals.folder_listing("0" * 32 + ".dir", repo) is None


def test_the_recorded_md5_of_a_revisions_file(repo):
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(repo), rev="HEAD")
    assert dvc_internals.recorded_md5(fs, "a.txt") == md5(b"alpha\n")
    assert dvc_internals.recorded_md5(fs, "plain.txt") is None  # git's, not DVC's


def test_what_dvcs_filesystem_raises_for_a_path_it_cannot_give(repo, tmp_path):
    """Not in the revision: FileNotFoundError, not no_storage. Tracked, but its data in no storage
    (a fresh clone): no_storage, for a file and for a folder and a file inside it."""
    from dvc.api import DVCFileSystem

    copy = tmp_path / "clone"
    shutil.copytree(repo, copy)
    shutil.rmtree(copy / ".dvc" / "cache")
    fs = DVCFileSystem(str(copy), rev="HEAD")
    with pytest.raises(dvc_internals.unreadable()) as absent:
        fs.open("absent.txt", "rb")
    assert isinstance(absent.value, FileNotFoundError) and not dvc_internals.no_storage(absent.value)
    for read in (lambda: fs.open("a.txt", "rb").read(), lambda: fs.ls("folder", detail=False),
                 lambda: fs.open("folder/x.txt", "rb").read(),
                 lambda: fs.get("folder", str(tmp_path / "got"), recursive=True)):
        with pytest.raises(dvc_internals.unreadable()) as missing:
            read()
        assert dvc_internals.no_storage(missing.value), repr(missing.value)
