"""The gate: the adapter's held-out exact match and recall halt the tables unless overridden, the
RAG probe at each candidate support, and the hybrid rule chosen on the held-out days."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.llm import lora, model
from pipeline.stages import gate
from tests.conftest import compose
from tests.test_finetune import TINY


def test_gate_halts_on_a_failing_adapter_and_an_override_is_recorded(tmp_path):
    from pipeline.stages import count, extract
    from tests.conftest import events_frame, write_dataset

    cfg = compose(tmp_path, *TINY, "count.min_support=1")
    # users browse c0 c1 c2 c3 on Jan 30 and in the held-out days (Feb 25)
    events = [(u, 100 * c, day * 86400 + 60 * c, 0.9) for u in (1, 2) for day in (20, 46) for c in range(4)]
    write_dataset(tmp_path / "data", events_frame(events), n_clusters=4)
    extract.run(cfg)
    count.run(cfg)
    Path(cfg.paths.adapter).mkdir(parents=True)
    base, _ = model.load(cfg.model)
    lora.wrap(base, cfg.finetune.lora).save_pretrained(cfg.paths.adapter)
    with pytest.raises(SystemExit) as stop:
        gate.run(cfg)
    assert stop.value.code == 1
    metrics = json.loads((tmp_path / "metrics" / "gate.json").read_text())
    assert metrics["passed"] is False and metrics["exact_match"] < 0.9 and "exact match" in metrics["failed_checks"][0]
    detail = json.loads((tmp_path / "metrics" / "gate" / "detail.json").read_text())
    assert len(pd.read_parquet(cfg.paths.gate_predictions)) == detail["pairs"] > 0
    gate.run(compose(tmp_path, *TINY, "count.min_support=1", "gate.override_reason='reviewed by hand'"))
    metrics = json.loads((tmp_path / "metrics" / "gate.json").read_text())
    assert metrics["passed"] is False and metrics["override_reason"] == "reviewed by hand"


def test_gate_measures_rag_lines_at_each_candidate_support(world):
    """The RAG probe's candidates: the configured prompts.min_support is the headline; a candidate
    no line reaches answers every pair line-free, i.e. exactly the base answers' recall."""
    from tests.conftest import TINY_WORLD

    cfg = compose(world, *TINY_WORLD)
    detail = json.loads((world / "metrics" / "gate" / "detail.json").read_text())
    rag = detail["rag"]
    by_m = {c["min_support"]: c for c in rag["by_min_support"]}
    assert sorted(by_m) == sorted(cfg.gate.min_support_candidates)
    lines = [by_m[m]["pairs_with_line"] for m in sorted(by_m)]
    assert lines == sorted(lines, reverse=True) and lines[0] > 0
    assert {k: rag[k] for k in by_m[cfg.prompts.min_support]} == by_m[cfg.prompts.min_support]
    found = pd.read_parquet(cfg.paths.daily_counts)
    beyond = int(found.n.sum()) + 1  # more support than any pair can have
    only = compose(world, *TINY_WORLD, f"gate.min_support_candidates=[1,{beyond}]", f"prompts.min_support={beyond}")
    gate.run(only)
    rerun = json.loads((world / "metrics" / "gate" / "detail.json").read_text())
    assert rerun["rag"]["pairs_with_line"] == 0 and rerun["rag"]["copy_rate"] is None
    assert rerun["rag"]["test_recall"] == rerun["test_recall"] and rerun["rag"]["exact_match"] == rerun["exact_match"]
    assert rerun["rag"]["by_min_support"][0]["pairs_with_line"] == lines[0]
    gate.run(cfg)  # the session's world as the other tests expect it



def test_the_gate_records_the_hybrid_rule_it_chose_on_held_out_recall(world):
    """Both rules are candidates (support at each tau, confidence at log-probability deciles), and
    the verdict's rule is the candidate of best held-out recall, as bulk_infer reads it."""
    from tests.conftest import TINY_WORLD

    cfg = compose(world, *TINY_WORLD)
    verdict = json.loads((world / "metrics" / "gate.json").read_text())["hybrid"]
    detail = json.loads((world / "metrics" / "gate" / "detail.json").read_text())["hybrid"]
    assert set(verdict) == {"rule", "tau", "min_logprob"}
    candidates = detail["candidates"]
    # Confidence thresholds come from the held-out answers that name a cluster (the tiny random
    # model's may name none).
    valid = json.loads((world / "metrics" / "gate" / "detail.json").read_text())["rag"]["exact_match"] > 0
    assert {c["rule"] for c in candidates} == ({"support", "confidence"} if valid else {"support"})
    assert sorted(c["tau"] for c in candidates if c["rule"] == "support") == sorted(cfg.gate.hybrid_taus)
    best = max(c["test_recall"] for c in candidates)
    chosen = next(c for c in candidates if c["rule"] == verdict["rule"]
                  and c.get("tau") == verdict["tau"] and c.get("min_logprob") == verdict["min_logprob"])
    assert chosen["test_recall"] == best


def test_recall_is_the_share_of_held_out_triples_served_their_successor():
    assert gate.recall_of(3, 2) == 0.666667 and gate.recall_of(0, 0) == 0.0
