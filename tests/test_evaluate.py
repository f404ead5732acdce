"""evaluate: serving by date, hit definition, bootstrap intervals, drift, and the whole stage on a tiny world."""
from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import counting, db, hits, report, timing
from pipeline.__main__ import STAGES
from pipeline.stages import evaluate
from tests.conftest import TINY_WORLD, build, compose

D1, D3 = date(2024, 3, 1), date(2024, 3, 3)


def table(rows: list[tuple]) -> pd.DataFrame:
    """rows: (c1, c2, c_pred, retrieved[, last]): `last`, the last cluster's line, empty when not given."""
    rows = [(*r, []) if len(r) == 4 else r for r in rows]
    return pd.DataFrame(rows, columns=["c1", "c2", "c_pred", "retrieved", "last"]).assign(served="llm")


def test_each_strategy_serves_its_newest_table_dated_on_or_before_the_day():
    base = table([(0, 1, 5, []), (1, 0, 6, [])])
    # On Mar 3 the pair (0, 1) was followed by 3 only twice: too thin for its prompt's RAG line.
    rag = pd.concat([table([(0, 1, 7, [8]), (1, 0, 9, [])]).assign(refresh_date=D1, hybrid=[8, 9]),
                     table([(0, 1, 2, []), (1, 0, 4, [])]).assign(refresh_date=D3, hybrid=[2, 4])])
    found = pd.DataFrame({"refresh_date": pd.to_datetime([D1, D3]), "c1": [0, 0], "c2": [1, 1],
                          "retrieved": [[8], [3]], "support": [[9], [2]]})
    # what followed c2 alone: on Mar 3, 0 was followed most by 1 (the pair (1, 0)'s own c1), then by 4
    fallback = pd.DataFrame({"refresh_date": pd.to_datetime([D1, D3, D3]), "c2": [1, 0, 1],
                             "successors": [[2, 3], [1, 4], [5]]})
    popular = {D1: [0, 1, 6], D3: [3, 1, 0]}
    events = pd.DataFrame({"day": [D1, date(2024, 3, 2), D3, date(2024, 3, 9), D1], "c1": [0, 0, 0, 1, 1],
                           "c2": [1, 1, 1, 0, 0]})
    lookup = pd.DataFrame({"c1": [1, 0], "c2": [0, 1], "c_pred": pd.array([3, 2], dtype="Int32")})
    counts = pd.DataFrame({"c1": [0, 1], "c2": [1, 0], "c_pred": pd.array([4, 2], dtype="Int32")})
    served = evaluate.serve(events, base, rag, popular, found, fallback, [D1, D3], lookup, counts, 1)
    assert served.fixed.tolist() == [5, 5, 5, 6, 6]
    assert served.rag_refreshed.tolist() == [7, 7, 2, 4, 9]
    assert served.rag_day1.tolist() == [7, 7, 7, 9, 9]
    assert served.hybrid.tolist() == [8, 8, 2, 4, 9]
    # the top-1 baseline serves what retrieval found, thin or not; nothing for (1, 0): popularity
    assert served.retrieved_top1.tolist() == [8, 8, 3, 3, 6]
    # back-off: the pair's own successor first; for (1, 0) on Mar 3 c2's second (its first is c1);
    # on Mar 1 nothing followed 0 at all: popularity
    assert served.backoff.tolist() == [8, 8, 3, 4, 6]
    assert served.popular.tolist() == [6, 6, 3, 3, 6]
    # the training days' lookup is one table held all month, matched on the pair
    assert served.train_top1.tolist() == [2, 2, 2, 3, 3]
    assert served.fixed_counts.tolist() == [4, 4, 4, 2, 2]  # the count twin, also held all month
    with pytest.raises(ValueError, match="before the first refresh date"):
        evaluate.serve(events.assign(day=date(2024, 2, 28)), base, rag, popular, found, fallback, [D1, D3], lookup,
                       counts, 1)


def test_the_training_lookup_reads_only_the_fine_tunes_sample_days(tmp_path):
    from pipeline.period import windows
    from tests.test_finetune import daily_frame

    cfg = compose(tmp_path, "period.month=2024-03", "finetune.train_days=28", "finetune.test_days=7")
    w = windows(cfg)  # sample days [Feb 2, Feb 23)
    path = tmp_path / "daily.parquet"
    daily_frame([("2024-02-05", 0, 1, 2, 3), ("2024-02-20", 0, 1, 3, 3),  # a tie: the lower id
                 ("2024-02-06", 0, 1, 0, 9),  # c1 again: never an answer
                 ("2024-02-25", 0, 1, 3, 50),  # held-out days: not training data
                 ("2024-02-01", 1, 0, 4, 50), ("2024-03-02", 1, 0, 4, 99),  # before the window, the month
                 ("2024-02-10", 2, 3, 1, 4), ("2024-02-11", 3, 2, 0, 2)]).to_parquet(path)
    pairs = pd.DataFrame({"c1": [0, 1, 2, 1], "c2": [1, 0, 3, 2]})
    got = evaluate.train_lookup(db.connect(cfg), str(path), w, pairs)
    # reached in the window: 0 eleven times, 1 four, 2 and 3 three each: popular 0, 1, 2
    # (1, 0) and (1, 2) were never seen in the sample days: the first popular cluster not c1/c2
    assert got.c_pred.tolist() == [2, 2, 1, 0]


def test_events_fall_in_the_bucket_of_their_pairs_support_at_the_active_refresh_date():
    found = pd.DataFrame({"refresh_date": pd.to_datetime([D1, D3, D3]), "c1": [0, 0, 1], "c2": [1, 1, 0],
                          "pair_support": [4, 30, 5]})
    events = pd.DataFrame({"day": [D1, date(2024, 3, 2), D3, D1, date(2024, 3, 4)], "c1": [0, 0, 0, 1, 1],
                           "c2": [1, 1, 1, 0, 0]})
    bounds = {"cold": 0, "tail": 1, "torso": 5, "head": 30}
    got = evaluate.support_buckets(events, found, [D1, D3], bounds)
    assert got.tolist() == ["tail", "tail", "head", "cold", "torso"]
    hit = pd.DataFrame({"fixed": [True, False, True, False, True], "backoff": [True, True, False, False, True]})
    out = evaluate.by_support(hit, pd.Series([1, 1, 2, 3, 3]), got, bounds, 50, seed=1)
    assert out["tail"]["events"] == 2 and out["tail"]["share"] == 0.4 and out["cold"]["share"] == 0.2
    assert out["tail"]["strategies"]["fixed"]["hit_rate"] == 0.5 and out["tail"]["strategies"]["backoff"]["hit_rate"] == 1
    assert out["head"]["strategies"]["backoff"]["hit_rate"] == 0 and out["torso"]["min_support"] == 5
    assert evaluate.by_support(hit, pd.Series([1, 1, 2, 3, 3]), got, {**bounds, "huge": 100}, 50, 1)["huge"] == {
        "min_support": 100, "events": 0, "share": 0.0, "strategies": None}


def test_each_overlap_share_is_over_the_answers_it_concerns():
    base = table([(0, 1, 5, []), (1, 0, 6, []), (0, 2, 7, []), (2, 0, 8, [])]).assign(
        served=["llm", "llm", "llm", "popular"])
    rag = pd.concat([
        table([(0, 1, 3, [3]), (1, 0, 6, [4]), (0, 2, 7, []), (2, 0, 9, [1])]).assign(refresh_date=D1),
        table([(0, 1, 5, [4]), (1, 0, 9, [2]), (0, 2, 7, []), (2, 0, 1, [1])]).assign(
            refresh_date=D3, served=["llm", "llm", "llm", "llm"])])
    names = {c: f"topic {c}" for c in range(10)}
    got = evaluate.overlap(base, rag, (["topic 1", "topic 2"], ["topic 1", "x"]), names)
    # evidence in 6 of the 8 RAG prompts, every one a pair line of its own
    assert got["rag_prompts_with_evidence"] == got["rag_prompts_with_pair_line"] == 0.75
    # (2, 0) has no model answer in the base table: never compared. Lined: (0, 1) and (1, 0) on both
    # dates; one copies its line, two equal the no-RAG answer, one is neither.
    assert (got["lined_answers"], got["unlined_answers"], got["answers_compared"]) == (4, 2, 6)
    assert got["rag_copies_retrieved"] == 0.25 and got["rag_identical_to_base"] == 0.5
    assert got["rag_differs_from_both"] == 0.25 and got["unlined_identical_to_base"] == 1.0
    assert got["all_identical_to_base"] == round(4 / 6, 6)
    assert got["rag_identical_to_base_by_date"] == {str(D1): 0.5, str(D3): 0.5}
    assert got["base_repeats_identical"] == 0.5 and got["base_repeats_valid"] == 0.75 and got["repeat_prompts"] == 2
    # the last cluster's line is evidence too: (0, 2) on Mar 3 shown 7 copies it
    rag.loc[(rag.c1 == 0) & (rag.c2 == 2) & (rag.refresh_date == D3), "last"] = pd.Series([[7]], index=[2]).values
    got = evaluate.overlap(base, rag, (["topic 1"], ["topic 1"]), names)
    assert (got["rag_prompts_with_evidence"], got["rag_prompts_with_pair_line"]) == (0.875, 0.75)
    assert (got["lined_answers"], got["rag_copies_retrieved"]) == (5, 0.4)


def test_paired_differences_come_from_the_same_resamples():
    rng = np.random.default_rng(3)
    users = pd.Series(np.repeat(np.arange(200), 4))
    base = rng.random(800) < 0.3
    hit = pd.DataFrame({"fixed": base, "hybrid": base | (rng.random(800) < 0.1), "backoff": base})
    out = evaluate.bootstrap(hit, users, 300, seed=2, paired=(("hybrid", "backoff"),))
    assert out["hybrid"]["diff_vs_backoff"] == out["hybrid"]["diff_vs_fixed"] > 0
    assert out["hybrid"]["diff_vs_backoff_ci"] == out["hybrid"]["diff_ci"]  # backoff equals fixed here
    assert "diff_vs_backoff" not in out["fixed"]


def test_the_support_figure_draws_an_interval_that_misses_its_estimate(tmp_path):
    # evaluate.bootstrap=1: the one resample's rate is the whole "interval", often away from the estimate
    entry = {"hit_rate": 0.3, "hit_rate_ci": [0.32, 0.32]}
    m = {"strategies": {"fixed": entry, "backoff": {"hit_rate": 0.2, "hit_rate_ci": [0.1, 0.15]}},
         "by_support": {"cold": {"min_support": 0, "share": 1.0, "strategies": {"fixed": entry, "backoff": entry}}}}
    report.support_figure(m, ["fixed", "backoff"], tmp_path)
    assert (tmp_path / "hit_rate_by_support.png").stat().st_size > 1000


def test_a_table_without_its_hybrid_rule_is_one_line(tmp_path):
    from pipeline import manifest

    path = tmp_path / "rag-2024-03-01.parquet"
    manifest.write_table(table([(0, 1, 5, [])]), path, {"hybrid_tau": 3})
    with pytest.raises(ValueError, match="rag-2024-03-01.parquet: its manifest records no hybrid rule"):
        evaluate.hybrid_rule(path)
    manifest.write_table(table([(0, 1, 5, [])]), path, {"hybrid": {"rule": "support", "tau": 3, "min_logprob": None}})
    assert evaluate.hybrid_rule(path) == {"rule": "support", "tau": 3, "min_logprob": None}


def test_the_repeat_sample_is_seeded_and_keeps_the_prompt_order():
    texts = [f"prompt {i:03d}" for i in range(50)]
    sample = evaluate.repeat_sample(texts, 10, seed=7)
    assert len(set(sample)) == 10 and sample == sorted(sample) and sample == evaluate.repeat_sample(texts, 10, 7)
    assert sample != evaluate.repeat_sample(texts, 10, 8)
    assert evaluate.repeat_sample(texts, None, 7) == texts == evaluate.repeat_sample(texts, 50, 7)


def test_a_hit_is_membership_and_a_missing_prediction_never_hits():
    served = pd.DataFrame({"a": [1, 2, None], "b": pd.array([pd.NA, 3, 4], dtype="Int32")})
    got = hits.hits(served, pd.Series([[1, 2], [3], [4, 5]]))
    assert got.a.tolist() == [True, False, False] and got.b.tolist() == [False, True, True]


def test_bootstrap_intervals_are_zero_for_a_copy_and_exclude_zero_for_a_clear_gain():
    rng = np.random.default_rng(0)
    users = pd.Series(np.repeat(np.arange(300), 5))
    fixed = rng.random(1500) < 0.2
    hit = pd.DataFrame({"fixed": fixed, "same": fixed, "better": fixed | (rng.random(1500) < 0.2)})
    out = evaluate.bootstrap(hit, users, 400, seed=1)
    assert out["same"]["diff_vs_fixed"] == 0 and out["same"]["diff_ci"] == [0, 0]
    assert 0 < out["better"]["diff_ci"][0] < out["better"]["diff_vs_fixed"] < out["better"]["diff_ci"][1]
    assert out["fixed"]["hit_rate_ci"][0] < out["fixed"]["hit_rate"] < out["fixed"]["hit_rate_ci"][1]
    assert evaluate.bootstrap(hit, users, 400, seed=1) == out


def test_eval_events_list_the_next_distinct_novel_clusters_from_c_next_on(tmp_path):
    cfg = compose(tmp_path)
    t = pd.Timestamp("2024-03-02 10:00", tz="UTC")
    visits = [(1, t + pd.Timedelta(minutes=m), c) for m, c in enumerate([0, 1, 2, 0, 3, 2, 4, 5])]
    seq = pd.DataFrame(visits, columns=["user_id", "ts", "cluster_id"]).assign(seq=0, pos=range(8))
    triples = pd.DataFrame([(1, t + pd.Timedelta(minutes=2), 0, 1, 2),
                            (1, t - pd.Timedelta(days=2), 0, 1, 2)],  # February: not evaluated
                           columns=["user_id", "ts", "c1", "c2", "c_next"])
    seq.to_parquet(tmp_path / "seq.parquet")
    triples.to_parquet(tmp_path / "triples.parquet")
    con = db.connect(cfg)
    got = hits.events(con, tmp_path / "triples.parquet", tmp_path / "seq.parquet", date(2024, 3, 1),
                      date(2024, 4, 1), 3)
    assert len(got) == 1 and list(got.future[0]) == [2, 3, 4]  # 0 and 1 are the history; 2 repeats
    # The gate's held-out days never look past month_start: `until` cuts the future there.
    cut = hits.events(con, tmp_path / "triples.parquet", tmp_path / "seq.parquet", date(2024, 3, 1), date(2024, 4, 1),
                      3, until=t + pd.Timedelta(minutes=5))
    assert list(cut.future[0]) == [2, 3]


def test_drift_is_one_at_the_first_date_and_falls_when_successors_change(tmp_path):
    cfg = compose(tmp_path)
    rows = [("2024-02-28", 0, 1, 2, 9), ("2024-02-28", 0, 1, 3, 1), ("2024-03-02", 0, 1, 3, 30),
            ("2024-02-28", 1, 0, 2, 5), ("2024-03-02", 1, 0, 2, 5)]
    daily = pd.DataFrame(rows, columns=["day", "c1", "c2", "c_next", "n"])
    daily["day"] = pd.to_datetime(daily.day).dt.date
    daily["n"] = daily.n.astype("int64")
    daily.to_parquet(tmp_path / "daily.parquet")
    out = evaluate.drift(db.connect(cfg), str(tmp_path / "daily.parquet"), [D1, D3], 7, [1, 2])
    assert out.top1.tolist() == [1.0, 0.5] and out.top2.tolist() == [1.0, 1.0]


def test_the_stage_writes_metrics_plots_and_a_report_and_is_deterministic(world, tmp_path):
    cfg = build(world, tmp_path / "a")
    cfg = compose(tmp_path / "a", *TINY_WORLD, "evaluate.bootstrap=200")
    evaluate.run(cfg)
    files = [Path(cfg.paths.metrics) / "evaluate.json", Path(cfg.paths.metrics) / "evaluate" / "detail.json"]
    headline, m = (json.loads(f.read_text()) for f in files)
    assert set(m["strategies"]) == set(evaluate.STRATEGIES) and m["events"] > 100
    assert "train_top1" in evaluate.STRATEGIES
    clusters = 5  # the tiny world's
    assert set(m["distinct_clusters"]["served"]) == set(evaluate.STRATEGIES)
    assert all(1 <= n <= clusters for d in m["distinct_clusters"].values() for n in d.values())
    assert m["distinct_clusters"]["tables"]["fixed"] == pd.read_parquet(
        Path(cfg.paths.tables) / "base.parquet").c_pred.nunique()
    # The headline, what `dvc metrics show` prints: overall figures only, no per-bucket or per-date keys.
    assert headline == evaluate.headline(m) and set(headline) == {
        "hit_rate", "fixed_vs_fixed_counts", "rag_refreshed_vs_backoff", "rag_refreshed_vs_fixed", "rag_prompts"}
    assert headline["rag_prompts"]["with_evidence"] == m["overlap"]["rag_prompts_with_evidence"]
    assert set(headline["hit_rate"]) == {"fixed", "fixed_counts", "rag_refreshed", "backoff", "hybrid"}
    assert sum(len(v) for v in headline.values()) <= 12
    # Each LLM table against its twin, overall and per bucket, with the verdict its interval allows.
    twins = {(t["llm"], t["twin"]): t for t in m["twins"]}
    assert set(twins) == {("fixed", "fixed_counts"), ("rag_refreshed", "backoff")}
    for (a, b), t in twins.items():
        low, high = m["strategies"][a][f"diff_vs_{b}_ci"]
        assert t["all"]["diff_ci"] == [low, high] and headline[f"{a}_vs_{b}"] == {"ci_low": low, "ci_high": high}
        assert t["all"]["verdict"] == ("above" if low > 0 else "below" if high < 0 else "includes 0")
        assert set(t["by_support"]) == set(m["by_support"])
    gate_json = json.loads((Path(cfg.paths.metrics) / "gate.json").read_text())
    assert m["fitted"] == gate_json["fitted"]  # read back from the tables' manifests
    hybrid = m["strategies"]["hybrid"]
    assert hybrid["diff_vs_backoff"] == pytest.approx(hybrid["hit_rate"] - m["strategies"]["backoff"]["hit_rate"],
                                                      abs=2e-6)
    assert hybrid["diff_vs_backoff_ci"][0] <= hybrid["diff_vs_backoff_ci"][1]
    assert headline["hit_rate"]["backoff"] == m["strategies"]["backoff"]["hit_rate"]
    buckets = m["by_support"]
    assert set(buckets) == {"cold", "tail", "torso", "head"}
    assert sum(b["events"] for b in buckets.values()) == m["events"]
    assert abs(sum(b["share"] for b in buckets.values()) - 1) < 1e-5 and 0 <= m["unseen_in_training"] <= 1
    assert all(set(b["strategies"]) == set(evaluate.STRATEGIES) for b in buckets.values() if b["events"])
    assert m["hybrid"]["tau"] == json.loads((Path(cfg.paths.metrics) / "gate.json").read_text())["hybrid"]["tau"]
    # Every overlap share states the answers it is over: lined and unlined make up all.
    study = m["overlap"]
    assert study["lined_answers"] + study["unlined_answers"] == study["answers_compared"]
    by_support = pd.read_csv(Path(cfg.paths.plots) / "hit_rate_by_support.csv")
    assert by_support.bucket.tolist() == ["cold", "tail", "torso", "head"]
    assert by_support.min_support.tolist() == [0, 1, 5, 30]
    assert (Path(cfg.paths.plots) / "hit_rate_by_support.png").stat().st_size > 1000
    assert 0 <= m["overlap"]["base_repeats_identical"] <= 1 and m["overlap"]["repeat_prompts"] == 20
    by_day = pd.read_csv(Path(cfg.paths.plots) / "hit_rate_by_day.csv")
    assert list(by_day.columns) == ["day", *evaluate.STRATEGIES] and len(by_day) == m["days"]
    topk = pd.read_csv(Path(cfg.paths.plots) / "topk_overlap.csv")
    assert topk.top1.iloc[0] == 1.0 and len(topk) == 3
    assert (Path(cfg.paths.plots) / "hit_rate_by_day.png").stat().st_size > 1000
    text = Path(cfg.paths.report).read_text()
    # The report's first table sets each LLM table against its twin.
    assert text.index("| --- |") > text.index("## Does the LLM beat counting its own evidence?")
    assert "| pairs | fixed | fixed_counts | fixed - fixed_counts, points (95 % CI) | rag_refreshed | backoff |" in text
    for section in ("## Setup", "## Hit rate by strategy", "## Hit rate by pair support", "| backoff |", "| hybrid |",
                    "cold (0) | tail (1-4) | torso (5-29) | head (>= 30)", "## How RAG changes the answers", "## Successor drift",
                    "## Cost and agility", "## Findings", "## The fixed table against its no-LLM comparators",
                    "| pairs | fixed | train_top1 | popular | backoff | fixed - train_top1, points (95 % CI) |"):
        assert section in text
    assert f"{100 * m['strategies']['rag_refreshed']['hit_rate']:.2f} %" in text
    assert f"| unlined, {study['unlined_answers']:,} |" in text and f"| all, {study['answers_compared']:,} |" in text
    assert f"| lined, {study['lined_answers']:,} | {report._pct(study['rag_identical_to_base'])} | 7.8 % |" in text
    # Figures linked from the report's folder to paths.plots; wall times are a run record, not the report's.
    assert f"![top-k overlap]({os.path.relpath(Path(cfg.paths.plots), Path(cfg.paths.report).parent)}/" in text
    assert "wall" not in text.lower() and text.endswith(".\n")
    first = [f.read_bytes() for f in files]
    with pytest.MonkeyPatch.context() as patch:  # the sampled repeats now come from the answer cache
        patch.setattr(evaluate.pool.model, "load", lambda *a, **k: pytest.fail("loaded the model with every answer cached"))
        evaluate.run(cfg)
    assert [f.read_bytes() for f in files] == first
    # What python -m pipeline writes after each stage: evaluate's record holds its refresh estimate
    # at bulk_infer's rate, and the wall-time record lists every stage run, evaluate included.
    timing.take()
    timing.note(prompts_per_s=4.0)
    timing.write(cfg.paths.metrics, "bulk_infer", 2.0, STAGES)
    evaluate.note_refresh_estimate(Path(cfg.paths.metrics), m["cost"]["refresh"]["prompts"])
    timing.write(cfg.paths.metrics, "evaluate", 12.34, STAGES)
    record = (Path(cfg.paths.metrics) / "timing" / "wall_times.md").read_text()
    assert record.index("| bulk_infer | 2.0 |") < record.index("| evaluate | 12.3 |")
    assert f"one RAG refresh {m['cost']['refresh']['prompts'] / 4:.0f} s (est. at 4.0 prompts/s)" in record


def test_the_count_twin_backs_off_from_the_pair_to_its_last_cluster_to_popular_never_c1_or_c2():
    from tests.test_finetune import daily_frame

    rows = daily_frame([("2024-02-05", 0, 1, 2, 3), ("2024-02-05", 0, 1, 0, 1),  # c1 again: never its answer
                        ("2024-02-06", 5, 1, 3, 4), ("2024-02-06", 5, 1, 4, 1),  # what follows c2=1 alone
                        ("2024-02-07", 6, 7, 4, 8)])  # 4 is reached most overall, then 3
    pairs = pd.DataFrame({"c1": [0, 2, 3, 8, 4], "c2": [1, 1, 1, 9, 7]})
    got = counting.count_table(rows, pairs, 0)
    # (0, 1): its own successor; (2, 1): 1's top, 3; (3, 1): 1's top is its own c1: the next, 2;
    # (8, 9): 9 was never a last cluster: popular 4; (4, 7): 7 led only to 4, its c1: popular
    # is 4 (c1 again) and then 3
    assert got.c_pred.tolist() == [2, 3, 2, 4, 3]
    # 50 pseudo-counts of Q(. | 1), itself smoothed toward the popular 4, outweigh (0, 1)'s own 3 triples of 2.
    assert counting.count_table(rows, pairs, 50).c_pred.tolist()[0] == 4
    # The pairs the fine-tune is taught are served their very labels.
    taught = counting.top_labels(rows, 50)
    assert counting.count_table(rows, taught[["c1", "c2"]], 50).c_pred.tolist() == taught.c_next.tolist()
    for prior in (0, 5, 1000):
        served = counting.count_table(rows, pairs, prior)
        assert served.c_pred.notna().all() and not ((served.c_pred == served.c1) | (served.c_pred == served.c2)).any()
    assert counting.count_table(rows.iloc[:0], pairs, 5).c_pred.isna().all()


def test_the_gate_and_evaluate_count_the_same_hits_on_the_same_served_clusters(tmp_path):
    """One hit definition: the next evaluate.horizon distinct clusters, not the gate's old 7 days."""
    from pipeline.period import windows
    from pipeline.stages import gate

    cfg = compose(tmp_path, "period.month=2024-03", "finetune.train_days=28", "finetune.test_days=14",
                  "gate.min_held_out_triples=1", "evaluate.horizon=3")
    w = windows(cfg)  # held-out days [Feb 16, Mar 1)

    def user(uid, start, clusters, late):
        """clusters a minute apart from `start`, then `late` nine days later: (visits, the triple (0, 1, 2))."""
        visits = [(uid, start + pd.Timedelta(minutes=m), c) for m, c in enumerate(clusters)]
        visits.append((uid, start + pd.Timedelta(days=9), late))
        return visits, (uid, start + pd.Timedelta(minutes=2), 0, 1, 2)

    visits, triples = [], []
    for shift, base in ((0, 0), (14, 10)):  # the held-out days, and the same users again in the month
        start = pd.Timestamp("2024-02-16 10:00", tz="UTC") + pd.Timedelta(days=shift)
        for uid, clusters, late in ((1, [0, 1, 2, 3], 9), (2, [0, 1, 2, 3, 4, 5], 6)):
            v, t = user(base + uid, start, clusters, late)
            visits += v
            triples.append(t)
    seq = pd.DataFrame(visits, columns=["user_id", "ts", "cluster_id"]).assign(seq=0)
    seq["pos"] = seq.groupby("user_id").cumcount()
    for frame, path in ((seq, cfg.paths.sequences), (pd.DataFrame(triples, columns=[
            "user_id", "ts", "c1", "c2", "c_next"]), cfg.paths.triples)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path)
    con = db.connect(cfg)
    held_out, month = gate.held_out_events(con, cfg, w), evaluate.month_events(cfg, con, w)
    pairs = pd.DataFrame({"c1": [0], "c2": [1]})
    for served in (9, 5, 3):
        at_gate = gate.served_hits(held_out, pairs, [served]).tolist()
        in_month = hits.hits(pd.DataFrame({"x": [served] * len(month)}), month.future).x.tolist()
        assert at_gate == in_month
    # 9 comes nine days on but third: a hit; 5 within minutes but fifth: none (the old gate: the reverse)
    assert gate.served_hits(held_out, pairs, [9]).tolist() == [True, False]
    assert gate.served_hits(held_out, pairs, [5]).tolist() == [False, False]
    with pytest.raises(ValueError, match=r"2 held-out triples .* fewer than gate.min_held_out_triples=3: raise"):
        gate.held_out_events(con, compose(tmp_path, "period.month=2024-03", "finetune.train_days=28",
                                          "finetune.test_days=14", "gate.min_held_out_triples=3"), w)
