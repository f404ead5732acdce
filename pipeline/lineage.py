"""Which data and settings built each stage output, checked before a stage reads it.

`python -m pipeline STAGE` (which `dvc repro` runs) checks the stage's inputs before it starts and
records its outputs' lineage when it is done. The record of an output is `.<name>.lineage` beside it
(git-ignored, never a DVC output, so the outputs keep their bytes): the stage, the settings it
declares in dvc.yaml as they were, the output's file stamp and sha256, and the sha256 of each input.

check() refuses, in one line, an input of another stage that is missing ("run the S stage (dvc
repro)"), and, in a direct run, an input or an input behind it whose record says it was built under
other settings than params.yaml's or from other files than those there now ("run dvc repro"). An
output with no record, or whose files changed after its record was written (restored by `dvc
checkout`, copied in), is not judged: only what this machine built and recorded is. Under `dvc
repro` DVC's own dvc.lock decides what is stale, so records are written but not judged.
"""
from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline import ROOT
from pipeline.files import MARK, tree_sha256, write_json



def _resolve(text: str, cfg: DictConfig) -> str:
    """A dvc.yaml path with its ${key} interpolations filled from cfg (as DVC fills them from params.yaml)."""
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(OmegaConf.select(cfg, m.group(1), throw_on_missing=True)), text)


@cache
def _spec() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def graph(cfg: DictConfig) -> dict[str, dict]:
    """Per stage of dvc.yaml: its data inputs (code under pipeline/ left out), outputs and params keys."""
    found = {}
    for name, s in _spec().items():
        outs = [o if isinstance(o, str) else next(iter(o)) for kind in ("outs", "metrics", "plots")
                for o in s.get(kind, [])]
        found[name] = {"deps": [_resolve(d, cfg) for d in s.get("deps", []) if not d.startswith("pipeline/")],
                       "outs": [_resolve(o, cfg) for o in outs], "params": list(s.get("params", []))}
    return found


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


def _read(path: Path) -> dict | None:
    """The record of `path`, if one was written for the files there now."""
    record = _record_path(path)
    if not (path.exists() and record.is_file()):
        return None
    try:
        found = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if found.get("stamp") == _stamp(path) else None


class _Hashes:
    """sha256 of paths, from their record where it is current, else computed once."""

    def __init__(self):
        self.known: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.known:
            found = _read(Path(path))
            self.known[path] = found["sha256"] if found else tree_sha256(path)
        return self.known[path]


def check(cfg: DictConfig, stage: str) -> None:
    """Refuse to run `stage` on missing inputs, or on inputs built from other data or settings."""
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
    sha, seen = _Hashes(), set()

    def walk(path: str, behind: str) -> None:
        if path in seen:
            return
        seen.add(path)
        record = _read(Path(path))
        if record is None or record.get("stage") not in stages:
            return
        where = path if path == behind else f"{path} (behind {behind})"
        built = stages[record["stage"]]
        now = _settings(cfg, built["params"])
        for key in sorted(set(now) | set(record["params"])):
            if now.get(key) != record["params"].get(key):
                raise ValueError(f"{where}: built with {key}={json.dumps(record['params'].get(key))}, but params.yaml "
                                 f"has {json.dumps(now.get(key))}; run dvc repro")
        inputs = record["inputs"]
        for dep in built["deps"]:
            if dep not in inputs:
                other = " ".join(sorted(set(inputs) - set(built["deps"])))
                what = f"from {other}, not {dep}" if other else f"without {dep}"
                raise ValueError(f"{where}: built {what}; run dvc repro")
            if Path(dep).exists() and sha(dep) != inputs[dep]:
                raise ValueError(f"{where}: built from another {dep} than the one there now; run dvc repro")
        # Only then the inputs' own records: the line names the mismatch nearest to this stage.
        for dep in built["deps"]:
            walk(dep, behind)

    for dep in direct:
        walk(dep, dep)


def check_outputs(cfg: DictConfig, stage: str) -> None:
    """Under `dvc repro` (DVC names its work tree in DVC_ROOT), refuse outputs outside the work tree
    before the stage runs: DVC tracks none there, and would refuse them only after the stage wrote
    them. A direct run may write anywhere that holds nothing foreign (files.atomic_path)."""
    root = os.environ.get("DVC_ROOT")
    if not root:
        return
    for out in graph(cfg)[stage]["outs"]:
        if not Path(out).resolve().is_relative_to(Path(root).resolve()):
            raise ValueError(f"{out}: outside the repository's work tree ({root}), where dvc repro tracks no output; "
                             "set the paths.* setting to a path inside it")


def record(cfg: DictConfig, stage: str) -> None:
    """Write the lineage record of each output of `stage`, just built from its inputs under cfg."""
    s = graph(cfg)[stage]
    sha = _Hashes()
    inputs = {dep: sha(dep) for dep in s["deps"] if Path(dep).exists()}
    params = _settings(cfg, s["params"])
    for out in map(Path, s["outs"]):
        if out.exists():
            write_json(_record_path(out), {"stage": stage, "params": params, "inputs": inputs, "stamp": _stamp(out),
                                           "sha256": tree_sha256(out)})
