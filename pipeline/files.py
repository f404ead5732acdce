"""Writing outputs so that a crash never leaves a half-written file behind."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Rows per Parquet row group, fixed for every writer: a writer left to choose batches rows by how
# its threads happened to run, and the bytes (not the content) then differ from run to run.
ROW_GROUP_SIZE = 122_880


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; it replaces `target` only if the block succeeds.

    The sibling is `.<name>.tmp-<pid>`: on the same filesystem, so the replace is atomic, and
    git-ignored (.gitignore: `.*.tmp-*`). A process killed inside the block cannot clean up after
    itself, so every call first removes the temporaries of `target` whose process is gone."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        pid = stale.name.rpartition("-")[2]
        if not (pid.isdigit() and _alive(int(pid))):
            _remove(stale)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _remove(target)
        os.replace(tmp, target)
    finally:
        _remove(tmp)


def _alive(pid: int) -> bool:
    """Whether a process with this id runs (another user's counts: its temporary is not ours to remove)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: Path | str, payload: dict) -> None:
    """Sorted, indented JSON: stable bytes for DVC metrics and diffs."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_metrics(metrics: Path | str, stage: str, headline: dict, record: dict) -> None:
    """A stage's measurements in two files. metrics/<stage>.json holds the few headline figures a
    person compares across experiments (DVC metrics: `dvc metrics show` puts every key of every
    metrics file in one table row, so per-table or per-date detail there makes it unreadable);
    metrics/<stage>/detail.json holds the record behind them: breakdowns per table, date, bucket
    or candidate, settings and lineage (a plain DVC output, for the report and for reading)."""
    write_json(Path(metrics) / stage / "detail.json", record)
    write_json(Path(metrics) / f"{stage}.json", headline)


def write_parquet(frame, path: Path | str) -> None:
    """A pandas frame as Parquet, atomically, in fixed row groups."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, row_group_size=ROW_GROUP_SIZE)


def write_annotated(frame, path: Path | str, metadata: dict[bytes, bytes]) -> None:
    """A pandas frame as Parquet carrying key-value metadata, atomically, in fixed row groups: the
    metadata lands in the same file as the rows it describes, so neither exists without the other."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)


def sha256(path: Path | str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def tree_sha256(path: Path | str) -> str:
    """A file's sha256, or a directory's: over its files' relative paths and hashes, in sorted order."""
    path = Path(path)
    if path.is_file():
        return sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256(file)}\n".encode())
    return digest.hexdigest()
