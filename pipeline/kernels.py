"""Which numeric kernels torch runs, fixed at process start so float32 work has the same bits on
every machine of one device class.

Torch picks its vectorised ATen kernels by the CPU's instruction set and Intel MKL picks its GEMM
code path the same way; each choice changes the reduction order and so the low bits of every
result. `kernels: portable` (the default) pins both to AVX2 through environment variables that the
libraries read once, when torch is imported, which is why `pin` must run first in every entry
point (and in tests/conftest.py). `native` lets them use the CPU's best kernels (AVX-512, AMX):
faster there, not reproducible elsewhere. Measured with a determinism probe (docs/reproduction.md): only these two
variables change the result; oneDNN is not on torch's float32 path (ONEDNN_MAX_CPU_ISA changed
nothing). MKL's conditional reproducibility holds across Intel CPUs; on AMD CPUs MKL takes a
code path of its own, so the device class names the CPU vendor too (docs/reproduction.md).

On CUDA the same discipline is torch's deterministic algorithms plus the cuBLAS workspace setting.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}
# cuBLAS needs a fixed workspace for deterministic GEMMs (torch.use_deterministic_algorithms).
CUBLAS = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def pin(mode: str) -> None:
    """Set the kernel environment for `mode` (portable or native); must run before torch is imported."""
    wanted = PORTABLE if mode == "portable" and platform.machine().lower() in ("x86_64", "amd64") else {}
    if "torch" in sys.modules:
        if any(os.environ.get(k) != wanted.get(k) for k in PORTABLE):
            raise RuntimeError(f"kernels.pin({mode!r}) after torch was imported; call it first")
        return
    for key in PORTABLE:
        os.environ.pop(key, None)
    os.environ.update(wanted)
    for key, value in CUBLAS.items():
        os.environ.setdefault(key, value)
    # Spin-waiting OpenMP threads make torch and BLAS far slower on a shared CPU.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def device(policy: str, stage: str | None = None) -> str:
    """The device a `device:` policy (auto, cpu or cuda) names here: auto takes CUDA when torch sees a GPU.
    With `stage`, one line on stderr says where that stage runs and why (auto on a CPU build of
    torch would otherwise fall back to the CPU without a word)."""
    import torch

    if policy == "cuda" and not torch.cuda.is_available():
        why = ("a CPU build: install the CUDA wheel (docs/gpu.md)" if torch.version.cuda is None
               else f"built for CUDA {torch.version.cuda}, but no GPU or driver is visible")
        raise ValueError(f"params.yaml: device is 'cuda' but torch {torch.__version__} sees no CUDA GPU ({why}); "
                         "use device=auto or cpu")
    where = "cuda" if policy == "cuda" or (policy == "auto" and torch.cuda.is_available()) else "cpu"
    if stage:
        print(f"{stage}: device {where} ({describe(policy, where)})", file=sys.stderr)
    return where


def describe(policy: str, where: str) -> str:
    """What runs a stage, in words: the GPU's name, or the CPU's device class, and the torch build."""
    import torch

    if where == "cuda":
        return f"{device_class(where)}, torch {torch.__version__}, CUDA {torch.version.cuda}, device={policy}"
    missing = (" found no GPU: torch is a CPU build" if torch.version.cuda is None
               else " found no GPU that torch can use") if policy == "auto" else ""
    return f"{device_class(where)}, torch {torch.__version__}, device={policy}{missing}"


# The weights' dtypes inference takes (schema.Dtype's values), here where nothing needs omegaconf.
DTYPES = ("float32", "bfloat16", "float16")


def dtype(name: str):
    import torch

    return getattr(torch, name)


def deterministic() -> None:
    """Deterministic algorithms on every device (torch raises where an op has none)."""
    import torch

    torch.use_deterministic_algorithms(True)


# MKL's code path per CPU vendor (vendor_id in /proc/cpuinfo).
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


def cpu_vendor(info: Path = Path("/proc/cpuinfo")) -> str:
    """intel, amd, or the vendor (else the machine type) as the OS names it: with the ISA pinned,
    MKL still takes one code path on Intel CPUs and another on AMD CPUs, which differ in the low
    bits (measured: docs/reproduction.md), so the vendor is part of what decides the bits."""
    lines = info.read_text().splitlines() if info.exists() else []
    vendor = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), "")
    return VENDORS.get(vendor, (vendor or platform.machine() or "unknown").lower())


def device_class(device: str = "cpu") -> str:
    """What decides the bits besides the code and inputs: "cpu-avx2-<vendor>" when pinned (the ISA
    pin plus the BLAS vendor path: cpu-avx2-intel, cpu-avx2-amd), "cpu-native-<isa>-<vendor>"
    otherwise, "cuda-<GPU name>" on a GPU. Outputs of one class are byte-identical."""
    import torch

    if device.startswith("cuda"):
        return f"cuda-{torch.cuda.get_device_name(torch.device(device))}"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    pinned = all(os.environ.get(k) == v for k, v in PORTABLE.items())
    return f"cpu-{capability}-{cpu_vendor()}" if pinned else f"cpu-native-{capability}-{cpu_vendor()}"


def lineage(device: str = "cpu") -> dict:
    """The device fields every table and adapter record."""
    import torch

    return {"device_class": device_class(device), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda if device.startswith("cuda") else None}
