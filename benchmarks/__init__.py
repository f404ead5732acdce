"""Benchmarks: run on demand, never in CI; each prints the CPU its figures belong to."""
from __future__ import annotations

from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name as lscpu shows it (figures are only comparable on the same one)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
