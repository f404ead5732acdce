"""The gate: the adapter's held-out exact match and recall halt the tables unless overridden, the
RAG probe at each candidate support, and the hybrid rule chosen on the held-out days."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.llm import lora, model
from pipeline.stages import gate
from tests.conftest import compose
from tests.test_finetune import TINY


def test_gate_halts_on_a_failing_adapter_and_an_override_is_recorded(tmp_path):
    from pipeline.stages import count, extract
    from tests.conftest import events_frame, write_dataset

    cfg = compose(tmp_path, *TINY, "count.min_support=1", "gate.min_held_out_triples=1")
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
    gate.run(compose(tmp_path, *TINY, "count.min_support=1", "gate.min_held_out_triples=1",
                     "gate.override_reason='reviewed by hand'"))
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
    chosen = detail["fitted"]["min_support"]["min_support"]  # the headline figures are the chosen support's
    assert {k: rag[k] for k in by_m[chosen]} == by_m[chosen]
    found = pd.read_parquet(cfg.paths.daily_counts)
    beyond = int(found.n.sum()) + 1  # more support than any pair can have
    only = compose(world, *TINY_WORLD, f"gate.min_support_candidates=[1,{beyond}]", f"prompts.min_support={beyond}")
    gate.run(only)
    rerun = json.loads((world / "metrics" / "gate" / "detail.json").read_text())
    by_m = {c["min_support"]: c for c in rerun["rag"]["by_min_support"]}
    assert by_m[beyond]["pairs_with_line"] == 0 and by_m[beyond]["copy_rate"] is None
    assert by_m[beyond]["test_recall"] == rerun["test_recall"] and by_m[beyond]["exact_match"] == rerun["exact_match"]
    assert by_m[1]["pairs_with_line"] == lines[0]
    # The guarded choice among the candidates: the default unless a gain is clear of noise; the
    # verdict carries it (bulk_infer builds the tables' prompts with it).
    choice = rerun["fitted"]["min_support"]
    assert choice["default"] == beyond and [c["min_support"] for c in choice["candidates"]] == [beyond, 1]
    assert choice["min_support"] == (1 if choice["candidates"][1]["clear"] else beyond)
    assert {k: rerun["rag"][k] for k in by_m[choice["min_support"]]} == by_m[choice["min_support"]]
    verdict = json.loads((world / "metrics" / "gate.json").read_text())
    assert verdict["fitted"]["min_support"] == choice["min_support"]
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
    assert {c["rule"] for c in candidates} == {"counts", "model", "support"} | ({"confidence"} if valid else set())
    assert sorted(c["tau"] for c in candidates if c["rule"] == "support") == sorted(cfg.gate.hybrid_taus)
    # The count answer unless a rule's held-out gain is clear of noise; then the best of those.
    clear = [c for c in candidates if c["clear"]]
    assert all(c["gain_ci"][0] > 0 for c in clear) and candidates[0]["rule"] == "counts"
    want = max(clear, key=lambda c: c["test_recall"]) if clear else candidates[0]
    chosen = next(c for c in candidates if c["rule"] == verdict["rule"]
                  and c.get("tau") == verdict["tau"] and c.get("min_logprob") == verdict["min_logprob"])
    assert chosen == want
    assert verdict == json.loads((world / "metrics" / "gate.json").read_text())["hybrid"]
    fitted = json.loads((world / "metrics" / "gate" / "detail.json").read_text())["fitted"]["count_prior"]
    assert json.loads((world / "metrics" / "gate.json").read_text())["fitted"] == {
        "count_prior": fitted["prior"], "min_support": json.loads((world / "metrics" / "gate" / "detail.json").read_text())[
            "fitted"]["min_support"]["min_support"]}
    assert [c["prior"] for c in fitted["candidates"]][0] == cfg.finetune.label_prior


def test_recall_is_the_share_of_held_out_triples_served_their_successor():
    assert gate.recall_of(3, 2) == 0.666667 and gate.recall_of(0, 0) == 0.0


def test_a_choice_leaves_its_default_only_on_a_gain_clear_of_noise():
    from pipeline import hits

    users = np.repeat(np.arange(200), 3)
    default = np.zeros(600, dtype=bool)
    clear = np.tile([True, False, False], 200)  # a third more hits, every user
    noisy = np.zeros(600, dtype=bool)
    noisy[:3] = True  # one user's luck
    candidates = [{"name": "default"}, {"name": "noisy"}]
    pick = hits.guarded(candidates, {"default": default, "noisy": noisy}, users, "default", 500, 1)
    assert pick["name"] == "default" and candidates[1]["gain"] > 0 and candidates[1]["gain_ci"][0] <= 0
    candidates = [{"name": "default"}, {"name": "noisy"}, {"name": "clear"}]
    pick = hits.guarded(candidates, {"default": default, "noisy": noisy, "clear": clear}, users, "default", 500, 1)
    assert pick["name"] == "clear" and candidates[2]["clear"] and not candidates[0]["clear"]


def test_the_twins_smoothing_is_fitted_on_held_out_days_and_guarded(tmp_path):
    from pipeline.period import windows
    from tests.test_finetune import daily_frame

    cfg = compose(tmp_path, "period.month=2024-03", "finetune.train_days=28", "finetune.test_days=7",
                  "finetune.label_prior=0", "gate.count_priors=[0,1,5,50]", "gate.bootstrap=300")
    w = windows(cfg)  # sample days [Feb 2, Feb 23), held-out days [Feb 23, Mar 1)
    Path(cfg.paths.daily_counts).parent.mkdir(parents=True)
    # (0, 1) was followed by 2 once; anything ending in 1 leads to 3; held-out days: never a count
    daily_frame([("2024-02-05", 0, 1, 2, 1), ("2024-02-06", 5, 1, 3, 50), ("2024-02-24", 0, 1, 2, 500)]).to_parquet(
        cfg.paths.daily_counts)

    def events(wins: int, losses: int) -> pd.DataFrame:
        """held-out events of (0, 1), one per user: `wins` go on to 3, `losses` to 2."""
        future = [[3, 6]] * wins + [[2, 6]] * losses
        return pd.DataFrame({"user_id": range(len(future)), "c1": 0, "c2": 1, "future": future})

    from pipeline import db

    con = db.connect(cfg)
    got = gate.count_prior(con, cfg, w, events(150, 20))
    # pooling 5 or more pseudo-counts serves 3 (1 still serves 2): a clear gain, the first such kept
    assert got["default"] == 0 and got["prior"] == 5
    assert [c["prior"] for c in got["candidates"]] == [0, 1, 5, 50]
    assert [c["clear"] for c in got["candidates"]] == [False, False, True, True]
    # nearly as many held-out users went on to 2: the gain is noise and the default stays
    got = gate.count_prior(con, cfg, w, events(11, 9))
    assert got["prior"] == 0 and got["candidates"][2]["gain"] > 0 and not got["candidates"][2]["clear"]
