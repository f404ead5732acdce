"""The gate's verdict, metrics/gate.json, as what comes after the gate reads it: bulk_infer builds
tables only under a verdict that passed or was overridden, and `audit release` releases only
those."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import retrieval

# "fitted": the settings the gate fitted on its held-out days (the count twin's smoothing, the
# support a pair's line needs), which bulk_infer builds with, every table's manifest records and
# evaluate reads there.
VERDICT = ("passed", "exact_match", "test_recall", "override_reason", "failed_checks", "fitted")
FITTED = ("count_prior", "min_support")


def read(path: Path) -> tuple[dict, dict]:
    """(the gate's verdict and figures the tables are built under, its hybrid rule); a failed gate
    without an override stops here. A missing, unreadable or hand-broken gate.json is one line
    naming the file (and the key)."""
    if not path.exists():
        raise ValueError(f"{path}: no gate verdict; run the gate stage first (dvc repro)")
    try:
        g = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable gate verdict ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'empty'}); rerun the gate stage (dvc repro)") from None
    if not isinstance(g, dict):
        raise ValueError(f"{path}: not a gate verdict (a JSON object); rerun the gate stage (dvc repro)")
    lacking = [k for k in (*VERDICT, "hybrid") if k not in g]
    if lacking:
        raise ValueError(f"{path}: key {lacking[0]!r} is missing; rerun the gate stage (dvc repro)")
    fitted = g["fitted"] if isinstance(g["fitted"], dict) else {}
    broken = [k for k in FITTED if isinstance(fitted.get(k), bool) or not isinstance(fitted.get(k), (int, float))]
    if broken:
        raise ValueError(f"{path}: key 'fitted.{broken[0]}' is missing or not a number; rerun the gate stage (dvc repro)")
    if not cleared(g):
        raise ValueError(f"{path}: {failure(g)}; no table is built from this adapter")
    return {k: g[k] for k in VERDICT}, retrieval.hybrid_rule(g["hybrid"], str(path))


def cleared(g: dict) -> bool:
    """Tables may be built and released: the gate passed, or a person overrode it with a reason."""
    return bool(g["passed"] or g["override_reason"])


def failure(g: dict) -> str:
    return f"the gate failed ({'; '.join(map(str, g['failed_checks']))}) and was not overridden"
