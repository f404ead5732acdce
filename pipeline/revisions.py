"""A git revision's pipeline outputs, read as that revision recorded them: git for what git
tracks, DVC's filesystem (`dvc.api.DVCFileSystem`) for the rest, from this machine's DVC cache or
else the default DVC remote, each DVC-tracked file checked against the md5 the revision records.
`audit` and `lookup --rev` both read releases through it."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path, PurePosixPath

import pandas as pd
from omegaconf import OmegaConf

from pipeline import ROOT, config, dvc_internals, manifest


class RevisionError(ValueError):
    pass


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)
    if done.returncode:
        raise RevisionError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def remote() -> tuple[str | None, dict]:
    """The default DVC remote as this work tree configures it (`.dvc/config`, overridden by
    `.dvc/config.local`), its url resolved: every revision is read from it, whichever remote the
    revision's own .dvc/config named (releases made before there was one name none)."""
    return dvc_internals.default_remote()


def remote_text(name: str | None, conf: dict) -> str:
    return f"the DVC remote '{name}' ({conf['url']})" if name else "any DVC remote (none is configured)"


class Version:
    """The pipeline's outputs as a git revision recorded them, read through DVC: from this
    machine's DVC cache, else from the default remote."""

    def __init__(self, rev: str):
        from dvc.api import DVCFileSystem

        try:
            self.commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
        except RevisionError as exc:
            raise RevisionError(f"{rev}: not a revision of this repository (see `python -m pipeline.audit list`)") from exc
        name, conf = remote()
        self.rev, self.remote = rev, remote_text(name, conf)
        self.fs = DVCFileSystem(str(ROOT), rev=self.commit, remote=name, remote_config=conf)
        self.params = OmegaConf.to_container(config.read_yaml(self.text("params.yaml"), f"params.yaml at {rev}",
                                                              "that revision's outputs cannot be read"))
        self.tables_dir = self.params["paths"]["tables"]

    def unavailable(self, path: str, exc: Exception) -> RevisionError:
        """Why this revision cannot give `path`: it is not in the revision at all, or DVC tracks it but
        neither this machine's DVC cache nor the remote holds its data (a fresh clone holds none)."""
        if not dvc_internals.no_storage(exc):
            return RevisionError(f"{path}: not in {self.rev}")
        return RevisionError(f"{path} at {self.rev}: neither this machine's DVC cache nor {self.remote} holds its "
                          "data; push it there from the machine that built it (`python -m pipeline.audit release` "
                          "does for a new release, `dvc push --all-tags` for past ones) or rebuild it here "
                          f"(`git checkout {self.rev} && dvc repro`)")

    def _read(self, path: str, mode: str):
        try:
            with self.fs.open(path, "rb") as fh:
                data = fh.read()
            recorded = dvc_internals.recorded_md5(self.fs, path)
        except dvc_internals.unreadable() as exc:
            raise self.unavailable(path, exc) from exc
        # DVC serves a cache object's bytes as they are: one edited or damaged since must not pass
        # for what the revision recorded.
        if recorded and hashlib.md5(data).hexdigest() != recorded:
            raise RevisionError(f"{path} at {self.rev}: its bytes are not the md5 {recorded} the revision records (the "
                             f"DVC cache object was edited or damaged); delete "
                             f"{dvc_internals.cache_path(recorded).relative_to(ROOT).as_posix()} and fetch it again "
                             "(`dvc fetch --all-tags`)")
        return data.decode("utf-8") if mode == "r" else data

    def text(self, path: str) -> str:
        return self._read(path, "r")

    def json(self, path: str) -> dict:
        return json.loads(self.text(path))

    def blob(self, path: str) -> io.BytesIO:
        return io.BytesIO(self._read(path, "rb"))

    def get(self, path: str, dest: Path) -> None:
        """Copy a file or folder of this revision to dest."""
        try:
            self.fs.get(path, str(dest), recursive=True)
        except dvc_internals.unreadable() as exc:
            raise self.unavailable(path, exc) from exc

    def table_names(self) -> list[str]:
        try:
            return sorted(PurePosixPath(p).name for p in self.fs.ls(self.tables_dir, detail=False)
                          if p.endswith(".parquet"))
        except dvc_internals.unreadable() as exc:
            raise self.unavailable(f"{self.tables_dir}/", exc) from exc

    def table(self, name: str) -> tuple[pd.DataFrame, dict[str, str]]:
        blob = self.blob(f"{self.tables_dir}/{name}")
        return pd.read_parquet(blob), manifest.read(blob)

    def recorded_md5(self, name: str) -> str:
        return dvc_internals.recorded_md5(self.fs, f"{self.tables_dir}/{name}")
