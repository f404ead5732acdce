"""Lineage of a table (docs/design.md, "Versions and audit"), written into each table Parquet as key-value metadata."""
from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from pipeline import ROOT, dvc_internals
from pipeline.files import write_annotated

PACKAGES = ("torch", "transformers", "peft", "lightning", "duckdb", "pyarrow", "pandas", "numpy", "dvc")


def stage_deps(stage: str) -> tuple[list[str], tuple[str, ...]]:
    """(pipeline sources, params keys) that the stage declares in dvc.yaml, as DVC reads it under
    params.yaml: the code its outputs depend on and the settings they are computed under."""
    found = dvc_internals.stages()[stage]
    return sorted(d for d in found["deps"] if d.startswith("pipeline/")), tuple(found["params"])


def code_revision(files: list[str]) -> str:
    """The newest commit that touched `files`, "+dirty" when they differ from it; "unknown" outside git.

    Not HEAD: a commit elsewhere in the repository does not change what these files compute, and
    must not change the bytes of the outputs that record it."""
    try:
        git = ["git", "-C", str(ROOT)]
        rev = subprocess.run([*git, "log", "-1", "--format=%H", "--", *files], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", *files], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return (rev or "uncommitted") + ("+dirty" if dirty else "")


def code_hash(files: list[str]) -> str:
    """sha256 over the files' paths and bytes: what actually ran, committed or not."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()


def packages() -> dict[str, str]:
    return {name: metadata.version(name) for name in PACKAGES}


def params(cfg: DictConfig, keys: tuple[str, ...]) -> dict:
    """The resolved settings under keys: the ones the stage declares in dvc.yaml."""
    full = OmegaConf.to_container(cfg, resolve=True)
    return {k: full[k] for k in keys}


def sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def encode(fields: dict) -> dict[bytes, bytes]:
    """Metadata values as text: strings as they are, everything else as sorted JSON."""
    return {k.encode(): (v if isinstance(v, str) else json.dumps(v, sort_keys=True)).encode()
            for k, v in sorted(fields.items())}


def write_table(frame, path: Path | str, fields: dict) -> None:
    write_annotated(frame, path, encode(fields))


def content_sha256(source) -> str:
    """sha256 of a table's rows alone (its manifest left out): equal for equal predictions, whatever
    the code revision or machine recorded beside them."""
    rows = pq.read_table(source).to_pylist()
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def read(source) -> dict[str, str]:
    """A table's manifest fields (the pandas schema entry left out); source: a path or an open file."""
    meta = pq.read_schema(source).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k != b"pandas"}


def check_table(path: Path | str, strategy: str, refresh_date, clusters: set[int]) -> None:
    """Refuse, in one line, a table that is not the one a reader expects at `path`: no manifest of
    this strategy and refresh date, no hybrid column (a RAG table), or other clusters than the
    data's (a table swapped in from another build)."""
    path = Path(path)
    meta = read(path)
    wanted = {"strategy": strategy, "refresh_date": str(refresh_date)} if strategy == "rag" else {"strategy": strategy}
    for key, value in wanted.items():
        if meta.get(key) != value:
            raise ValueError(f"{path}: a table of {key} {meta.get(key)}, not {value} (swapped in from another "
                             "build?); rebuild the tables: dvc repro")
    names = pq.read_schema(path).names
    lacking = [c for c in ("c1", "c2", "c_pred", *(("hybrid",) if strategy == "rag" else ())) if c not in names]
    if lacking:
        raise ValueError(f"{path}: no column {lacking[0]!r} (written by another build); rebuild the tables: dvc repro")
    other = set(map(int, pq.read_table(path, columns=["c1"]).column("c1").to_pylist())) ^ set(clusters)
    if other:
        raise ValueError(f"{path}: its clusters are not the data's (e.g. {min(other)}); it was built from other "
                         "data: rebuild the tables: dvc repro")
