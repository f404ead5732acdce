"""Bit-for-bit reproduction across machines: the tiny build's adapter and every table's content
must hash to the values committed in tests/golden.json (see tests/golden.py for why and how they
are regenerated). CI machines differ in CPU type, so this test is what keeps the promise."""
from __future__ import annotations

import json

from tests.golden import RECORD, measure


def test_the_tiny_build_reproduces_the_committed_hashes(tmp_path):
    record = json.loads(RECORD.read_text())
    found = measure(tmp_path)
    where = (f"recorded on {record['recorded_on']} ({record['device_class']}), running as {found['device_class']}; "
             "if a change is meant to alter the bits, regenerate with `python -m tests.golden --write`")
    assert found["adapter_sha256"] == record["adapter_sha256"], f"adapter differs: {where}"
    assert found["tables"] == record["tables"], f"tables differ: {where}"
