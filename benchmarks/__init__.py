"""Benchmarks: run on demand, never in CI; each prints the CPU its figures belong to."""
from __future__ import annotations

from pathlib import Path


def cpu(field: str = "model name") -> str:
    """A field of /proc/cpuinfo ("model name" as lscpu shows it, "vendor_id", ...): figures and
    determinism records are only comparable on the same CPU."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(field)), "unknown")
