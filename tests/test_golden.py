"""Bit-for-bit reproduction across machines: the tiny build's adapter and every table's content
must hash to the record committed in tests/golden.json for this kind of machine (see
tests/golden.py for why records are kept per CPU vendor and device class, and how one is added).
CI machines differ in CPU type, so this test is what keeps the promise."""
from __future__ import annotations

import json

from tests.golden import RECORD, kind, measure


def test_the_tiny_build_reproduces_the_committed_hashes(tmp_path):
    records = json.loads(RECORD.read_text())
    here = kind()
    assert here in records, (f"tests/golden.json has no record for {here} (it has {sorted(records)}); on a new kind "
                             "of machine, add one deliberately: python -m tests.golden --write")
    record, found = records[here], measure(tmp_path)
    where = (f"{here}: recorded on {record['recorded_on']}; if a change is meant to alter the bits, "
             "regenerate with `python -m tests.golden --write`")
    assert found["adapter_sha256"] == record["adapter_sha256"], f"adapter differs: {where}"
    assert found["tables"] == record["tables"], f"tables differ: {where}"
