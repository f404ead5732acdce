"""Every use the pipeline makes of DVC beyond its public Python API (`dvc.api`), each behind one
named function: how dvc.yaml is interpolated, the repository's remote and status, and what
DVCFileSystem raises and records. tests/test_dvc_internals.py checks each assumption against the
installed DVC, so an upgrade that breaks one fails there, by name, instead of here in silence.

DVC is imported inside the functions: importing it takes a noticeable part of a second, which a
stage that never asks DVC should not pay."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import yaml

from pipeline import ROOT

# What dvc_data's filesystem says, as the strerror of a FileNotFoundError, of a path that DVC
# tracks but whose data neither the cache nor the remote holds.
NO_STORAGE = "No storage files available"


class DvcError(RuntimeError):
    """DVC refused an operation (its DvcException, in one line)."""


def stages(values: dict | None = None, root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """The stages of root/dvc.yaml as DVC reads it: every ${key} filled by DVC's own interpolation
    from `values` (the settings in use; by default params.yaml's, as `dvc repro` fills them). Per
    stage: its deps, its outs (outs, metrics and plots, in that order) and its params keys."""
    if values is None:
        values = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    # DVC's parser takes some 25 ms over dvc.yaml (AMD EPYC family 26, 2 shared cores), and a stage's
    # checks read it several times: once per distinct set of values.
    return json.loads(_stages(json.dumps(values, sort_keys=True, default=str), root))


@cache
def _stages(values: str, root: Path) -> str:
    from dvc.exceptions import DvcException
    from dvc.parsing.context import Context

    context = Context(json.loads(values))
    found = {}
    for name, definition in yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"].items():
        try:
            s = context.resolve(definition)
        except DvcException as exc:
            raise ValueError(f"{root / 'dvc.yaml'}: stage {name}: {exc}") from None
        outs = [o if isinstance(o, str) else next(iter(o)) for kind in ("outs", "metrics", "plots")
                for o in s.get(kind) or []]
        found[name] = {"deps": list(map(str, s.get("deps") or [])), "outs": list(map(str, outs)),
                       "params": list(map(str, s.get("params") or []))}
    return json.dumps(found)


def default_remote(root: Path = ROOT) -> tuple[str | None, dict]:
    """The default DVC remote as the work tree configures it (`.dvc/config`, overridden by
    `.dvc/config.local`): its name (None when none is set) and its settings, url resolved."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        return name, dict(repo.config["remote"].get(name, {}))


def status(stages: list[str] | None = None, with_deps: bool = False, root: Path = ROOT) -> dict:
    """What `dvc status` finds changed in the named stages of root/dvc.yaml (every stage and .dvc
    file by default; with_deps: and upstream of them), by stage name or .dvc file: empty when
    dvc.lock is current."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    # By dvc.yaml's full path: DVC looks a bare stage name up in the working folder's dvc.yaml.
    targets = None if stages is None else [f"{root / 'dvc.yaml'}:{name}" for name in stages]
    try:
        with Repo(str(root)) as repo:
            found = repo.status(targets=targets, with_deps=with_deps)
    except DvcException as exc:
        raise DvcError(str(exc)) from exc
    # DVC names a stage of a dvc.yaml outside the working folder by that file's relative path too.
    return {key.rpartition("dvc.yaml:")[2]: value for key, value in found.items()}


def push(root: Path = ROOT) -> None:
    """`dvc push`: every output dvc.lock and the .dvc files pin, to the default remote."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            repo.push()
    except DvcException as exc:
        raise DvcError(str(exc)) from exc


def unreadable() -> tuple[type[Exception], ...]:
    """What DVCFileSystem raises for a path it cannot give: FileNotFoundError (not in the revision,
    or tracked with no data: see no_storage), or dvc_data's DataIndexError (a tracked folder whose
    listing no storage holds)."""
    from dvc_data.index import DataIndexError

    return FileNotFoundError, DataIndexError


def no_storage(exc: Exception) -> bool:
    """Whether `exc` (one of unreadable()) says that DVC tracks the path but neither this machine's
    cache nor the remote holds its data, rather than that the revision has no such path."""
    return not isinstance(exc, FileNotFoundError) or exc.strerror == NO_STORAGE


def recorded_md5(fs, path: str) -> str | None:
    """The md5 a revision records for a DVC-tracked file, from DVCFileSystem.info; None for a file
    git tracks."""
    return fs.info(path).get("md5")


def cache_path(md5: str, root: Path = ROOT) -> Path:
    """Where the repository's DVC cache holds the object of this md5 (a folder's listing: "….dir")."""
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def folder_listing(md5: str, root: Path = ROOT) -> dict[str, str] | None:
    """The md5 of each file of a DVC-tracked folder, by its path inside it, as the cache's listing
    object of the folder's md5 ("….dir") records; None when the cache lacks it or it is unreadable."""
    try:
        entries = json.loads(cache_path(md5, root).read_text(encoding="utf-8"))
        return {e["relpath"]: e["md5"] for e in entries}
    except (OSError, ValueError, KeyError, TypeError):
        return None
