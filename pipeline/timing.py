"""Run records: wall times, rates, answer-cache hits, anything that depends on the machine or on
what an earlier run left behind. They are kept apart from stage outputs and metrics, which must
be byte-identical between runs (DVC records their hashes); a stopwatch or a warm cache never is.

A stage notes what it measured; `python -m pipeline <stage>` adds the stage's wall time, writes
metrics/timing/<stage>.json and redraws metrics/timing/wall_times.md, every stage's last wall time
(the stage just run included). DVC does not track metrics/timing/ (it is git-ignored)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.files import atomic_path, write_json

_noted: dict = {}


def note(**fields) -> None:
    _noted.update(fields)


def take() -> dict:
    """What was noted since the last take (for callers that run a stage in-process)."""
    noted = dict(_noted)
    _noted.clear()
    return noted


def write(metrics: Path | str, stage: str, wall_s: float, stages: tuple[str, ...]) -> None:
    """The stage's record, then the wall-time record over `stages` (in pipeline order)."""
    write_json(Path(metrics) / "timing" / f"{stage}.json", {**take(), "wall_s": round(wall_s, 1)})
    with atomic_path(Path(metrics) / "timing" / "wall_times.md") as tmp:
        tmp.write_text(wall_times(metrics, stages), encoding="utf-8")


def read(metrics: Path | str, stage: str) -> dict:
    """A stage's last timings; empty when it has not run through `python -m pipeline` here."""
    path = Path(metrics) / "timing" / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wall_times(metrics: Path | str, stages: tuple[str, ...]) -> str:
    """Each stage's last wall time on this machine, and the last fine-tune's training time against
    evaluate's estimate of one RAG refresh, as markdown."""
    train_s = read(metrics, "finetune").get("train_s")
    refresh = read(metrics, "evaluate")
    refresh_s = (f"{refresh['refresh_est_s']:.0f} s (est. at {refresh['refresh_est_prompts_per_s']} prompts/s)"
                 if refresh.get("refresh_est_s") is not None else "n/a")
    lines = ["# Wall times (this machine, the last run of each stage)", "",
             f"Fine-tune {f'{train_s:.0f} s' if train_s else 'n/a'} against one RAG refresh {refresh_s}.", "",
             "| stage | wall s |", "| --- | ---: |"]
    lines += [f"| {stage} | {t['wall_s']:.1f} |" for stage in stages if (t := read(metrics, stage))]
    return "\n".join(lines) + "\n"
