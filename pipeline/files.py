"""Writing outputs so that a crash never leaves a half-written file behind."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Rows per Parquet row group, fixed for every writer: a writer left to choose batches rows by how
# its threads happened to run, and the bytes (not the content) then differ from run to run.
ROW_GROUP_SIZE = 122_880


# Left in every folder atomic_path writes: the mark that the pipeline made it, so a later write
# may replace it. .dvcignore leaves it out of DVC's hashes, tree_sha256 out of ours, so outputs and
# the manifests that hash them keep their bytes.
MARK = ".pipeline-output"
MARK_TEXT = "Written by the transition-tables pipeline: its next write of this folder replaces it whole.\n"


@contextmanager
def atomic_path(target: Path | str, owns: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; it replaces `target` only if the block succeeds.

    The sibling is `.<name>.tmp-<pid>`: on the same filesystem, so the replace is atomic, and
    git-ignored (.gitignore: `.*.tmp-*`). A process killed inside the block cannot clean up after
    itself, so every call first removes the temporaries of `target` whose process is gone.

    Nothing that is not ours is replaced: an existing folder is replaced only when it is empty,
    carries MARK (a folder this function wrote), or holds nothing but files matching `owns` (the
    names the caller writes there: what DVC restores of an output without the mark); a file
    output never replaces a folder. Anything else is refused before the block runs. The old folder
    is renamed aside before the new one moves in, so a failed swap leaves the old complete set."""
    target = Path(target)
    refuse_foreign(target, owns)
    target.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (".{}.tmp-*", ".{}.old-*"):
        for stale in target.parent.glob(pattern.format(glob.escape(target.name))):
            pid = stale.name.rpartition("-")[2]
            if not (pid.isdigit() and _alive(int(pid))):
                _remove(stale)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir():
            (tmp / MARK).write_text(MARK_TEXT, encoding="utf-8")
        _swap(tmp, target)
    finally:
        _remove(tmp)


def refuse_foreign(target: Path | str, owns: tuple[str, ...] = ()) -> None:
    """Raise unless atomic_path may replace `target` (see there); writers whose work takes long
    call it first, so a refusal comes before the work."""
    target = Path(target)
    refuse_link(target)
    if not target.exists():
        return
    if target.is_dir():
        files = [p for p in target.rglob("*") if not p.is_dir()]
        if not files or (target / MARK).is_file():
            return
        foreign = [p for p in files if not any(p.relative_to(target).match(g) for g in owns)]
        if not foreign:
            return
        raise ValueError(f"{target}: holds files the pipeline did not write (e.g. {foreign[0].relative_to(target)}); "
                         f"nothing was replaced: choose an empty or new folder, or move them away")


def refuse_link(path: Path | str) -> None:
    """Raise when `path` is a symbolic link: replacing it would write wherever it points."""
    if Path(path).is_symlink():
        raise ValueError(f"{path}: a symbolic link (to {os.readlink(path)}); the pipeline replaces only files and "
                         "folders it wrote, never a link: remove the link, or set the paths.* setting to its target")


def _swap(tmp: Path, target: Path) -> None:
    """Move tmp to target. An old folder is renamed aside first (one rename, whatever its files'
    permissions), so a failure before the new one is in place puts it back whole."""
    folder = target.is_dir() and not target.is_symlink()
    if (target.exists() or target.is_symlink()) and folder != tmp.is_dir():
        raise ValueError(f"{target}: is a {'folder' if folder else 'file'}, where this output is a "
                         f"{'file' if folder else 'folder'}; nothing was replaced")
    if not folder:
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise ValueError(f"{target}: cannot be replaced ({exc.strerror or exc}); the old file is kept") from None
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        os.rename(target, old)
    except OSError as exc:
        raise ValueError(f"{target}: cannot be replaced ({exc.strerror or exc}); the old folder is kept whole") from None
    try:
        os.rename(tmp, target)
    except OSError as exc:
        os.rename(old, target)
        raise ValueError(f"{target}: cannot be replaced ({exc.strerror or exc}); the old folder is kept whole") from None
    try:
        _remove(old)
    except OSError as exc:
        # The new set is complete and in place; the old one waits for the next write to remove it.
        print(f"{target}: written; the previous version could not be removed ({exc}) and is kept as {old}",
              file=sys.stderr)


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


def file_hashes(path: Path | str) -> dict[str, str]:
    """sha256 of each file of a folder by its relative path, in sorted order (atomic_path's MARK
    left out: it says who wrote the folder, not what it holds); of a file, under the key ""."""
    path = Path(path)
    if path.is_file():
        return {"": sha256(path)}
    return {f.relative_to(path).as_posix(): sha256(f)
            for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MARK)}


def tree_sha256(path: Path | str, hashes: dict[str, str] | None = None) -> str:
    """A file's sha256, or a directory's: over its files' relative paths and hashes (file_hashes,
    or `hashes` when the caller has them already), in sorted order."""
    path = Path(path)
    hashes = file_hashes(path) if hashes is None else hashes
    if path.is_file():
        return hashes[""]
    digest = hashlib.sha256()
    for name, value in sorted(hashes.items()):
        digest.update(f"{name}\0{value}\n".encode())
    return digest.hexdigest()
