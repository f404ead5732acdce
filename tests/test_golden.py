"""Bit-for-bit reproduction across machines: the tiny build's tables must have the content of the
cross-vendor record in tests/golden.json on every machine, and its adapter the bytes of the record
of this machine's device class (tests/golden.py says why the two differ). CI machines differ in CPU
vendor, so this test is what keeps the promise."""
from __future__ import annotations

import json

import pytest

from tests.golden import RECORD, differences, kind, measure


@pytest.mark.slow
def test_the_tiny_build_reproduces_the_committed_hashes(tmp_path):
    problems = differences(json.loads(RECORD.read_text()), kind(), measure(tmp_path))
    assert not problems, "; ".join(problems) + (" (if a change is meant to alter the bits: python -m tests.golden "
                                                "--write, on a machine of every class the change touches)")


def test_a_difference_names_the_record_and_the_part():
    record = json.loads(RECORD.read_text())
    amd, intel = record["adapter_sha256"]["cpu-avx2-amd"], record["adapter_sha256"]["cpu-avx2-intel"]
    assert amd["sha256"] != intel["sha256"]  # the vendors' weights differ in their low bits
    found = {"adapter_sha256": amd["sha256"], "tables": dict(record["tables"])}
    assert differences(record, "cpu-avx2-amd", found) == []

    # Intel's adapter bytes on an AMD machine: the AMD record names the difference.
    (problem,) = differences(record, "cpu-avx2-amd", {**found, "adapter_sha256": intel["sha256"]})
    assert problem.startswith("adapter bytes differ from the cpu-avx2-amd record (recorded on AMD EPYC")
    # One table's content moved: the same cross-vendor record fails on either vendor, naming the table.
    moved = {**found, "tables": {**found["tables"], "rag-2024-03-03.parquet": "0" * 64}}
    for here, adapter in (("cpu-avx2-amd", amd), ("cpu-avx2-intel", intel)):
        (problem,) = differences(record, here, {**moved, "adapter_sha256": adapter["sha256"]})
        assert problem.startswith("table content differs from the cross-vendor record in rag-2024-03-03.parquet")
    # A class without a record fails until one is written deliberately.
    (problem,) = differences(record, "cpu-native-avx512-amd", found)
    assert "no adapter record for cpu-native-avx512-amd" in problem
