"""The determinism record: hashes of a tiny build (tiny random model, small world), committed in
tests/golden.json and compared by tests/test_golden.py on every CI run, on whatever CPU it gets.

Two parts, because of what decides the bits (docs/reproduction.md):
- the adapter's bytes, one record per device class (`kernels.device_class()`, e.g. cpu-avx2-intel,
  cpu-avx2-amd): with the ISA pinned, Intel MKL still takes a code path of its own on AMD CPUs, so
  the trained weights differ in their low bits between vendors;
- the tables' content, one record for every machine: the predictions agree across vendors, so
  every machine must reproduce them, whatever its vendor. Columns whose floats carry the vendor's
  low bits (VENDOR_BITS) are left out of it.
A machine must reproduce the tables record and its class's adapter record; a class without an
adapter record fails until one is added.

Writing a record is deliberate: for a new device class, or after a change that is meant to change
the bits (new training or decoding code, new pinned versions), never to make a failing machine pass.
A change of the adapter's bits makes every other class's record stale, and they can only be written
on such a machine: keep the golden build's settings in conf/experiment/golden.yaml where a default moves.

    .venv/bin/python -m tests.golden --write    # then commit tests/golden.json, saying why
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import cpu
from tests.conftest import build, make_world  # pins the portable kernels before torch is imported

RECORD = Path(__file__).with_name("golden.json")
# The settings the record was built with, where the project's defaults have moved since: the preset
# conf/experiment/golden.yaml (a record of one vendor cannot be rewritten on another vendor's
# machine, so a new default that changes training or decoding keeps its old value there).
PINS: tuple[str, ...] = ("experiment=golden",)
# Table columns holding floats computed from the weights: equal within a device class only.
VENDOR_BITS = ("logprob",)


def kind() -> str:
    from pipeline import kernels

    return kernels.device_class()


def predictions_sha256(path: Path) -> str:
    """The table's content hash (manifest.content_sha256) over every column but VENDOR_BITS."""
    from pipeline import manifest

    table = pq.read_table(path)
    table = table.drop_columns([c for c in VENDOR_BITS if c in table.column_names])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return manifest.content_sha256(pa.BufferReader(sink.getvalue()))


def measure(root: Path) -> dict:
    """Build the tiny world in root (finetune .. bulk_infer) and hash what it made."""
    from pipeline.files import sha256

    cfg = build(make_world(root / "world", *PINS), root / "tables", *PINS)
    tables = sorted(Path(cfg.paths.tables).glob("*.parquet"))
    return {"adapter_sha256": sha256(Path(cfg.paths.adapter) / "adapter_model.safetensors"),
            "tables": {t.name: predictions_sha256(t) for t in tables}}


def differences(record: dict, here: str, found: dict) -> list[str]:
    """What of `found` (measure's hashes on a machine of device class `here`) the record does not
    hold, each naming the record it was compared with and the part that differs."""
    problems = []
    expected = record["tables"]
    changed = sorted(n for n in expected.keys() | found["tables"].keys()
                     if expected.get(n) != found["tables"].get(n))
    if changed:
        problems.append(f"table content differs from the cross-vendor record in {', '.join(changed)} "
                        f"(on {here}; every vendor must reproduce it)")
    adapters = record["adapter_sha256"]
    if here not in adapters:
        problems.append(f"tests/golden.json has no adapter record for {here} (it has {sorted(adapters)}); on a "
                        "new device class, add one deliberately: python -m tests.golden --write")
    elif found["adapter_sha256"] != adapters[here]["sha256"]:
        problems.append(f"adapter bytes differ from the {here} record (recorded on {adapters[here]['recorded_on']}): "
                        f"{found['adapter_sha256'][:16]}... against {adapters[here]['sha256'][:16]}...")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true",
                    help="store this machine's adapter hash as its device class's record, and the tables record")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = measure(Path(tmp))
    here = kind()
    print(here, json.dumps(found, indent=2))
    if args.write:
        record = json.loads(RECORD.read_text()) if RECORD.exists() else {"adapter_sha256": {}}
        record["adapter_sha256"][here] = {"sha256": found["adapter_sha256"], "recorded_on": cpu("model name")}
        record["tables"] = found["tables"]
        RECORD.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        print(f"wrote the {here} adapter record and the tables record into {RECORD}")


if __name__ == "__main__":
    main()
