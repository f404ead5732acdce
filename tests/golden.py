"""The determinism record: content hashes of a tiny build (tiny random model, small world), committed
in tests/golden.json and compared by tests/test_golden.py on every CI run, on whatever CPU it gets.

Records are kept per CPU vendor and device class ("GenuineIntel/cpu-avx2"): the portable kernels
give the same bits on every Intel CPU, but Intel MKL takes a code path of its own on AMD CPUs
(README: "The reproduction guarantee"), so AMD machines need a record of their own. A machine of
a kind with a record must reproduce it exactly; a kind without one fails until one is added.

Writing a record is deliberate: for a new kind of machine, or after a change that is meant to change
the bits (new training or decoding code, new pinned versions), never to make a failing machine pass:

    .venv/bin/python -m tests.golden --write    # then commit tests/golden.json, saying why
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks import cpu
from tests.conftest import build, make_world  # pins the portable kernels before torch is imported

RECORD = Path(__file__).with_name("golden.json")
# The settings the record was built with, where the project's defaults have moved since: the record
# keeps testing the same code paths bit for bit, and a record of one vendor cannot be rewritten on
# another vendor's machine (a new default that changes training or decoding gets its old value here).
PINS: tuple[str, ...] = ()


def kind() -> str:
    from pipeline import kernels

    return f"{cpu('vendor_id')}/{kernels.device_class()}"


def measure(root: Path) -> dict:
    """Build the tiny world in root (finetune .. bulk_infer) and hash what it made."""
    from pipeline import manifest
    from pipeline.files import sha256

    cfg = build(make_world(root / "world", *PINS), root / "tables", *PINS)
    tables = sorted(Path(cfg.paths.tables).glob("*.parquet"))
    return {"adapter_sha256": sha256(Path(cfg.paths.adapter) / "adapter_model.safetensors"),
            "tables": {t.name: manifest.content_sha256(t) for t in tables}}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="store this machine's hashes as its kind's record")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = {**measure(Path(tmp)), "recorded_on": cpu("model name")}
    print(kind(), json.dumps(found, indent=2))
    if args.write:
        records = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        RECORD.write_text(json.dumps({**records, kind(): found}, indent=2, sort_keys=True) + "\n")
        print(f"wrote {kind()} into {RECORD}")


if __name__ == "__main__":
    main()
