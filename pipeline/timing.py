"""Run records: wall times, rates, answer-cache hits, anything that depends on the machine or on
what an earlier run left behind. They are kept apart from stage outputs and metrics, which must
be byte-identical between runs (DVC records their hashes); a stopwatch or a warm cache never is.

A stage notes what it measured; `python -m pipeline <stage>` adds the stage's wall time and writes
metrics/timing/<stage>.json, which DVC does not track (it is git-ignored)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.files import write_json

_noted: dict = {}


def note(**fields) -> None:
    _noted.update(fields)


def take() -> dict:
    """What was noted since the last take (for callers that run a stage in-process)."""
    noted = dict(_noted)
    _noted.clear()
    return noted


def write(metrics: Path | str, stage: str, wall_s: float) -> None:
    write_json(Path(metrics) / "timing" / f"{stage}.json", {**_noted, "wall_s": round(wall_s, 1)})


def read(metrics: Path | str, stage: str) -> dict:
    """A stage's last timings; empty when it has not run through `python -m pipeline` here."""
    path = Path(metrics) / "timing" / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else {}
