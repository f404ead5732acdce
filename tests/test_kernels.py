"""The kernel pin and the device policy: what decides the bits besides code and inputs."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import kernels
from pipeline.llm import model
from tests.conftest import ROOT, compose


def capability(mode: str) -> str:
    code = f"from pipeline import kernels; kernels.pin({mode!r}); import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the AVX2 pin is for x86-64 CPUs")
def test_portable_pins_torch_to_avx2_kernels_before_it_is_imported():
    assert capability("portable") == "AVX2"
    # this test process, pinned by conftest; the vendor names MKL's code path
    assert kernels.device_class() == f"cpu-avx2-{kernels.cpu_vendor()}"
    with pytest.raises(RuntimeError, match="after torch was imported"):
        kernels.pin("native")


@pytest.mark.parametrize("vendor_id, named", [("GenuineIntel", "intel"), ("AuthenticAMD", "amd"),
                                              ("HygonGenuine", "hygongenuine"), (None, platform.machine().lower())])
def test_the_device_class_names_the_cpu_vendor(tmp_path, vendor_id, named):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + (f"vendor_id\t: {vendor_id}\n" if vendor_id else "") + "flags\t\t: fpu\n")
    assert kernels.cpu_vendor(info) == named


def test_auto_picks_the_cpu_when_cuda_is_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels.device("auto") == "cpu" and kernels.device("cpu") == "cpu"
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match=r"^params.yaml: device is 'cuda' but torch \S+ sees no CUDA GPU \(a CPU build: "
                                         r"install the CUDA wheel \(docs/gpu.md\)\); use device=auto or cpu$"):
        kernels.device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(ValueError, match=r"built for CUDA 12.8, but no GPU or driver is visible"):
        kernels.device("cuda")


def test_a_stage_says_which_device_it_runs_on(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert kernels.device("auto", "gate") == "cpu"
    line = capsys.readouterr().err
    assert line == (f"gate: device cpu ({kernels.device_class()}, torch {torch.__version__}, device=auto found no GPU: "
                    "torch is a CPU build)\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert kernels.device("auto", "bulk_infer") == "cuda"
    assert capsys.readouterr().err == (f"bulk_infer: device cuda (cuda-NVIDIA H100 80GB HBM3, torch {torch.__version__}, "
                                       "CUDA 12.8, device=auto)\n")


def test_inference_dtype_is_a_setting_and_is_checked():
    cfg = compose(Path("/nonexistent"), "model=tiny_random", f"model.cache_dir={ROOT / 'models'}")
    llm, _ = model.load(cfg.model, device="cpu", dtype="bfloat16")
    assert llm.dtype == torch.bfloat16 and llm.device.type == "cpu"


def test_a_bad_setting_stops_a_stage_with_one_line(monkeypatch, tmp_path):
    from pipeline import __main__ as entry, config

    params = tmp_path / "params.yaml"
    params.write_text(config.PARAMS.read_text().replace("kernels: portable", "kernels: fast"))
    load = config.load
    monkeypatch.delenv("PIPELINE_DEBUG", raising=False)
    monkeypatch.setattr(config, "load", lambda: load(params))
    with pytest.raises(SystemExit) as stopped:
        entry.main(["extract"])
    assert str(stopped.value) == f"extract: {params}: kernels: Invalid value 'fast', expected one of [portable, native]"
