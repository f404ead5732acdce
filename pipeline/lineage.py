"""Which data and settings built each stage output, checked before a stage reads it or writes.

`python -m pipeline STAGE` (which `dvc repro` runs) checks the stage's inputs and outputs before it
starts and records its outputs' lineage when it is done (or stops, for the outputs it wrote). The
record of an output is `.<name>.lineage` beside it (git-ignored, never a DVC output, so the outputs
keep their bytes): the stage, the settings it declares in dvc.yaml as they were, the output's file
stamp, its sha256 and each of its files', and the sha256 of each input.

check() refuses, in one line, an input of another stage that is missing ("run the S stage (dvc
repro)"). In a direct run it refuses an input, or an input behind it, that its record does not
vouch for: no record, an unreadable one or another stage's; files changed since the record was
written (a hand-edited table or gate verdict, another run's adapter); built under other settings
than params.yaml's or from other files than those there now. dvc.lock stands in for a record that
does not vouch (a fresh clone, `dvc checkout`): when it lists the output at this path and `dvc
status` finds the stage and everything upstream unchanged, the input is what DVC built. Under `dvc
repro` DVC's own dvc.lock decides what is stale, so records are written but not judged.

check_outputs() refuses, before any work, an output path that a stage may not replace: one shared
with another output or an input, a symbolic link, or a file or folder there now that another stage
wrote, that git tracks, or that no record or dvc.lock names as this stage's (a folder: unless empty
or marked by files.atomic_path).
verify_file() is what a reader outside the stages (lookup) checks one table against.
"""
from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline import ROOT, dvc_internals
from pipeline.files import MARK, file_hashes, refuse_foreign, refuse_link, sha256, tree_sha256, write_json


def graph(cfg: DictConfig) -> dict[str, dict]:
    """Per stage of dvc.yaml, its paths filled from cfg as DVC fills them from params.yaml: its data
    inputs (code under pipeline/ left out), outputs and params keys."""
    found = dvc_internals.stages(OmegaConf.to_container(cfg, resolve=True))
    return {name: {**s, "deps": [d for d in s["deps"] if not d.startswith("pipeline/")]} for name, s in found.items()}


def _settings(cfg: DictConfig, keys: list[str]) -> dict:
    """The declared settings as JSON values (so a record read back compares equal)."""
    values = {k: OmegaConf.select(cfg, k) for k in keys}
    values = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in values.items()}
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def _record_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lineage")


def _stamp(path: Path) -> list:
    """Sizes and modification times: what tells a record's output from one put there since."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name != MARK)
    return [[p.relative_to(path).as_posix() if p != path else "", p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


def _load(path: Path) -> dict | None:
    """The record beside `path`, whatever files are there now; None when there is none or it is
    unreadable."""
    record = _record_path(path)
    if not (path.exists() and record.is_file()):
        return None
    try:
        found = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _read(path: Path) -> dict | None:
    """The record of `path`, if one was written for the files there now."""
    found = _load(path)
    return found if found and found.get("stamp") == _stamp(path) else None


class _Hashes:
    """sha256 of paths, from their record where it is current, else computed once."""

    def __init__(self):
        self.known: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.known:
            found = _read(Path(path))
            self.known[path] = found["sha256"] if found else tree_sha256(path)
        return self.known[path]


def _difference(key: str, was, now) -> tuple[str, object, object]:
    """The first setting under `key` that differs: a nested one by its dotted name, so a line names
    data.synth.n_users=800, not all of data."""
    if isinstance(was, dict) and isinstance(now, dict):
        for sub in sorted(set(was) | set(now)):
            if was.get(sub) != now.get(sub):
                return _difference(f"{key}.{sub}", was.get(sub), now.get(sub))
    return key, was, now


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _disagrees(record: dict, built: dict, cfg: DictConfig, sha) -> str | None:
    """Why a current record does not vouch for its output under cfg and the inputs there now."""
    now, then = _settings(cfg, built["params"]), record.get("params") or {}
    for key in sorted(set(now) | set(then)):
        if now.get(key) != then.get(key):
            name, was, is_ = _difference(key, then.get(key), now.get(key))
            return f"built with {name}={_short(was)}, but params.yaml has {_short(is_)}"
    inputs = record.get("inputs") or {}
    for dep in built["deps"]:
        if dep not in inputs:
            other = " ".join(sorted(set(inputs) - set(built["deps"])))
            return f"built from {other}, not {dep}" if other else f"built without {dep}"
        if Path(dep).exists() and sha(dep) != inputs[dep]:
            return f"built from another {dep} than the one there now"
    return None


def _vouch(path: Path, producer: str) -> str | None:
    """Why the record beside `path` does not vouch for the files there now (None when it does)."""
    found = _load(path)
    if found is None and _record_path(path).exists():
        return "its lineage record is unreadable"
    if found is None:
        return "no lineage record describes it (copied in, restored, or its record was removed)"
    if found.get("stage") != producer:
        return f"its lineage record is the {found.get('stage')!r} stage's, not the {producer} stage's"
    if found.get("stamp") != _stamp(path) and tree_sha256(path) != found.get("sha256"):
        return f"changed since the {producer} stage wrote it"
    return None


@cache
def _locked() -> dict[str, frozenset[Path]]:
    """Each stage's outputs as the repository's dvc.lock lists them (resolved paths)."""
    try:
        stages = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"]
        return {name: frozenset((ROOT / o["path"]).resolve() for o in s.get("outs", [])) for name, s in stages.items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}


def _dvc_vouches(cfg: DictConfig, stage: str) -> bool:
    """dvc.lock vouches for `stage`'s outputs: it lists them at the paths cfg names, and `dvc status`
    finds nothing changed in the stage or upstream (data, settings, code, outputs)."""
    outs = {Path(o).resolve() for o in graph(cfg)[stage]["outs"]}
    if not outs or not outs <= _locked().get(stage, frozenset()):
        return False
    try:
        return not dvc_internals.status([stage], with_deps=True)
    except (dvc_internals.DvcError, OSError):
        return False


def check(cfg: DictConfig, stage: str) -> None:
    """Refuse to run `stage` on missing inputs, or on inputs that neither their record nor dvc.lock
    vouches for under this data and these settings."""
    stages = graph(cfg)
    producer = {out: name for name, s in stages.items() for out in s["outs"]}
    direct = [d for d in stages[stage]["deps"] if d in producer]
    for dep in direct:
        if not Path(dep).exists():
            raise FileNotFoundError(f"{dep}: missing; run the {producer[dep]} stage (dvc repro)")
    if os.environ.get("DVC_ROOT"):
        # Under dvc repro, DVC has rerun every stale input in order; its dvc.lock, not our records,
        # decides. (An output whose bytes are the same under two settings keeps the record of the
        # last build, and git or DVC leave it untouched when switching back: judged here, it would
        # be stale forever.)
        return
    sha, seen, vouched = _Hashes(), set(), {}

    def walk(path: str, behind: str) -> None:
        if path in seen or path not in producer:
            return
        seen.add(path)
        built = stages[producer[path]]
        problem = _vouch(Path(path), producer[path]) if Path(path).exists() else None
        if problem is None and Path(path).exists():
            problem = _disagrees(_load(Path(path)), built, cfg, sha)
        if problem is not None:
            if producer[path] not in vouched:
                vouched[producer[path]] = _dvc_vouches(cfg, producer[path])
            if vouched[producer[path]]:
                return  # what dvc.lock records, upstream included
            where = path if path == behind else f"{path} (behind {behind})"
            raise ValueError(f"{where}: {problem}; run dvc repro")
        # Only then the inputs' own records: the line names the mismatch nearest to this stage.
        for dep in built["deps"]:
            walk(dep, behind)

    for dep in direct:
        walk(dep, dep)


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _owner(path: Path) -> str | None:
    """The stage that wrote `path`, by its record, else by dvc.lock; None when neither says."""
    found = _load(path)
    if found and isinstance(found.get("stage"), str):
        return found["stage"]
    where = path.resolve()
    return next((name for name, outs in sorted(_locked().items()) if where in outs), None)


def _tracked(path: Path) -> bool:
    """Whether git tracks `path` (a file, or any file under a folder) in the repository."""
    where = path.resolve()
    if not where.is_relative_to(ROOT.resolve()):
        return False
    try:
        found = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", str(where)], capture_output=True,
                               check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return bool(found)


def setting(cfg: DictConfig, path: str) -> str:
    """The paths.* (or data.path) setting that names `path`, or the folder it is in, for the line."""
    where = Path(path).resolve()
    keys = {f"paths.{k}": v for k, v in cfg.paths.items()} | {"data.path": cfg.data.path}
    found = [(len(Path(v).resolve().parts), k) for k, v in keys.items()
             if Path(v).resolve() == where or Path(v).resolve() in where.parents]
    deepest = max(found, default=(0, ""))[0]
    return f" ({', '.join(sorted(k for n, k in found if n == deepest))})" if found else ""


def check_outputs(cfg: DictConfig, stage: str) -> None:
    """Refuse, before `stage` runs, any output path it may not replace (see the module's doc).
    Under `dvc repro` (DVC names its work tree in DVC_ROOT), also outputs outside the work tree:
    DVC tracks none there, and would refuse them only after the stage wrote them."""
    root = os.environ.get("DVC_ROOT")
    for out in graph(cfg)[stage]["outs"] if root else ():
        if not Path(out).resolve().is_relative_to(Path(root).resolve()):
            raise ValueError(f"{out}: outside the repository's work tree ({root}), where dvc repro tracks no output; "
                             "set the paths.* setting to a path inside it")
    check_paths(cfg, stage)


def check_every_path(cfg: DictConfig) -> None:
    """check_paths for every stage: what a composition must pass before it is written or used."""
    for stage in graph(cfg):
        check_paths(cfg, stage)


def check_paths(cfg: DictConfig, stage: str) -> None:
    """Refuse the output paths of `stage` that it may not replace (check_outputs, wherever it runs)."""
    stages = graph(cfg)
    produced = {o for s in stages.values() for o in s["outs"]}
    for out in stages[stage]["outs"]:
        here = Path(out).resolve()
        for other, s in stages.items():
            for o in s["outs"]:
                if (other, o) != (stage, out) and _overlaps(here, Path(o).resolve()):
                    whose = "another output of this stage" if other == stage else f"an output of the {other} stage"
                    raise ValueError(f"{out}{setting(cfg, out)}: the same path as, or nested with, {o}"
                                     f"{setting(cfg, o)}, {whose}; nothing was written: "
                                     "give each paths.* setting a path of its own")
            for d in s["deps"]:
                if d not in produced and _overlaps(here, Path(d).resolve()):
                    raise ValueError(f"{out}{setting(cfg, out)}: the same path as, or nested with, {d}, an input of "
                                     f"the {other} stage; "
                                     "nothing was written: set the paths.* setting elsewhere")
        path = Path(out)
        refuse_link(out)
        if not path.exists():
            continue
        owner = _owner(path)
        if owner is not None and owner != stage:
            raise ValueError(f"{out}: the {owner} stage's output, not the {stage} stage's; nothing was replaced: "
                             "give each paths.* setting a path of its own")
        if owner is None and _tracked(path):
            raise ValueError(f"{out}: tracked by git and not an output of the {stage} stage; nothing was replaced: "
                             "set the paths.* setting to a new path")
        if owner is None and path.is_dir():
            # No stage's, unmarked, and not empty: refused here as atomic_path would refuse it (DVC
            # removes a stage's outputs before the stage runs, so the composition must refuse it too).
            refuse_foreign(path)
        if owner is None and path.is_file():
            raise ValueError(f"{out}: a file the {stage} stage did not write (no lineage record, not in dvc.lock); "
                             "nothing was replaced: move it away, or set the paths.* setting to a new path")


# `dvc exp run -S paths.X=...` composes conf/ in DVC's own process, then checks the stage outputs
# out with force, which deletes what lies at a declared output path before any stage runs. So the
# composition itself checks them: conf/config.yaml routes one setting through this resolver
# (registered by hydra_plugins/), which DVC calls while it resolves the composition.
_CHECKING = ContextVar("checking_outputs", default=False)


def outputs_checked(value, _root_: DictConfig):
    """Resolver `outputs_checked`: `value` itself, once every stage's output paths in the composition
    pass check_paths (reading the composition resolves this node again: then it is just `value`)."""
    if _CHECKING.get():
        return value
    token = _CHECKING.set(True)
    try:
        check_every_path(_root_)
    finally:
        _CHECKING.reset(token)
    return value


@contextmanager
def unchecked():
    """Compose without the resolver's check (config.compose: the stages and config.dump check)."""
    token = _CHECKING.set(True)
    try:
        yield
    finally:
        _CHECKING.reset(token)


def record(cfg: DictConfig, stage: str, since_ns: int | None = None) -> None:
    """Write the lineage record of each output of `stage`, just built from its inputs under cfg;
    with `since_ns`, only of those written since then (a stage that stopped part way records what
    it wrote, so its next run knows those files as its own)."""
    s = graph(cfg)[stage]
    sha = _Hashes()
    inputs = {dep: sha(dep) for dep in s["deps"] if Path(dep).exists()}
    params = _settings(cfg, s["params"])
    for out in map(Path, s["outs"]):
        if not out.exists() or out.is_symlink():
            continue
        stamp = _stamp(out)
        if since_ns is not None and not any(mtime >= since_ns for _, _, mtime in stamp):
            continue
        hashes = file_hashes(out)
        write_json(_record_path(out), {"stage": stage, "params": params, "inputs": inputs, "stamp": stamp,
                                       "sha256": tree_sha256(out, hashes), "files": hashes})


def verify_file(path: Path | str, unknown: bool = False) -> None:
    """Refuse a file of a stage output (a table of paths.tables) whose bytes neither the output's
    lineage record nor dvc.lock vouches for: edited since it was written, or (unless `unknown` is
    allowed: a file the user names) of unknown origin."""
    path = Path(path)
    for out in (path, path.parent):
        found = _load(out)
        if found is None:
            continue
        name = "" if out == path else path.name
        known = (found.get("files") or {}).get(name)
        if known is not None and sha256(path) == known:
            return
        raise ValueError(f"{path}: changed since the {found.get('stage')} stage wrote it (its sha256 is not the one "
                         "its lineage record holds); rebuild it: dvc repro")
    if _dvc_file(path) or unknown:
        return
    raise ValueError(f"{path}: no lineage record or dvc.lock entry vouches for its bytes (copied in, or its record "
                     "was removed); rebuild it: dvc repro")


def _dvc_file(path: Path) -> bool:
    """Whether the file's md5 is the one dvc.lock's output (or the listing of the folder it is in)
    records: the bytes DVC built or restored."""
    import hashlib

    try:
        stages = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False
    where = path.resolve()
    with open(path, "rb") as fh:
        md5 = hashlib.file_digest(fh, "md5").hexdigest()
    for s in stages.values():
        for o in s.get("outs", []):
            out, digest = (ROOT / o["path"]).resolve(), str(o.get("md5", ""))
            if out == where:
                return digest == md5
            if where.parent == out and digest.endswith(".dir"):
                return (dvc_internals.folder_listing(digest) or {}).get(path.name) == md5
    return False
