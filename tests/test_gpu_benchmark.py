"""benchmarks/gpu/run.py runs its whole path on the CPU (CI has no GPU): a small world, short budgets."""
from __future__ import annotations

import pytest

from benchmarks.gpu import run


@pytest.mark.slow  # a model built and decoded twice
def test_the_gpu_benchmark_runs_on_the_cpu(capsys):
    names = run.world(1000)
    assert len(set(names.values())) == 1000 and all(2 <= len(d.split(", ")) <= 3 for d in names.values())
    run.main(["--device", "cpu", "--clusters", "12", "--budget-s", "1", "--sample", "40", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert "cpu-avx2" in out or "cpu-native" in out
    for row in ("bulk free", "bulk constrained", "plain generate (sample)", "bulk/plain at batch 128"):
        assert f"      12  {row}" in out
    assert "greedy agreement" in out
