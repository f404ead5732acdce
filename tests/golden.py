"""The determinism record: content hashes of a tiny build (tiny random model, small world), committed
in tests/golden.json and compared by tests/test_golden.py on every CI run, on whatever CPU it gets.

Regenerating the record is deliberate: only after a change that is meant to change the bits (new
training or decoding code, new pinned versions), never to make a failing machine pass:

    .venv/bin/python -m tests.golden --write    # then commit tests/golden.json, saying why
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

from tests.conftest import build, make_world  # pins the portable kernels before torch is imported

RECORD = Path(__file__).with_name("golden.json")


def measure(root: Path) -> dict:
    """Build the tiny world in root (finetune .. bulk_infer) and hash what it made."""
    from pipeline import kernels, manifest
    from pipeline.files import sha256

    cfg = build(make_world(root / "world"), root / "tables")
    tables = sorted(Path(cfg.paths.tables).glob("*.parquet"))
    return {"adapter_sha256": sha256(Path(cfg.paths.adapter) / "adapter_model.safetensors"),
            "tables": {t.name: manifest.content_sha256(t) for t in tables},
            "device_class": kernels.device_class()}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="overwrite tests/golden.json with this machine's hashes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = measure(Path(tmp))
    found["recorded_on"] = f"{platform.processor() or platform.machine()}, {_cpu_model()}"
    print(json.dumps(found, indent=2))
    if args.write:
        RECORD.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
        print(f"wrote {RECORD}")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
