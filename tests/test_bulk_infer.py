"""Bulk decoding (exact against plain greedy), the answer cache, resumption and table manifests."""
from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline import kernels, manifest, retrieval, timing, verdict
from pipeline.data import contract
from pipeline.llm import bulk, model, prompts
from pipeline.llm.cache import AnswerCache
from pipeline.stages import bulk_infer
from tests.conftest import ROOT, build, compose

NAMES = {c: contract.description([f"topic {c}", f"theme {c}"]) for c in range(5)}


@pytest.fixture(scope="module")
def tiny():
    cfg = compose(Path("/nonexistent"), "model=tiny_random", f"model.cache_dir={ROOT / 'models'}")
    return model.load(cfg.model)


def rag_prompts(tokenizer) -> list[list[int]]:
    """Every pair's base prompt and two RAG variants: prefixes shared at several depths."""
    texts = [prompts.for_pair(NAMES, a, b, got) for a in NAMES for b in NAMES if a != b
             for got in ([], [(a + b) % 5], [(a + 2) % 5])]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def plain_greedy(llm, tokenizer, tokens: list[int], max_new: int) -> tuple[int, ...]:
    out = llm.generate(input_ids=torch.tensor([tokens]), max_new_tokens=max_new, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)[0, len(tokens):]
    ids = out.tolist()
    return tuple(ids[:ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ids else ids)


@torch.inference_mode()
def logprob(llm, prompt: list[int], answer: tuple[int, ...]) -> float:
    """The model's log-probability of answer after prompt, one plain forward pass."""
    logits = llm(input_ids=torch.tensor([prompt + list(answer)])).logits[0, len(prompt) - 1:-1]
    return float(logits.float().log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).sum())


def test_radix_tree_rebuilds_every_prompt_and_shares_prefixes(tiny):
    _, tokenizer = tiny
    tokens = rag_prompts(tokenizer) + [[7, 8, 9], [7, 8], [7, 8, 9]]  # a prefix of another, and a duplicate
    tree = bulk._Tree.build(tokens)
    for i, t in enumerate(tokens):
        chain = [tok for node in tree.chain(tree.leaf_parent[i]) for tok in tree.node_tokens[node]]
        assert chain + tree.leaf_tokens[i] == t and tree.leaf_tokens[i]
    run_once = sum(map(len, tree.node_tokens)) + sum(map(len, tree.leaf_tokens))
    assert run_once < 0.6 * sum(map(len, tokens))


@pytest.mark.parametrize("batch_size", [3, 64])
def test_free_decoding_equals_plain_greedy_with_drafts_kept_and_rejected(tiny, batch_size):
    llm, tokenizer = tiny
    tokens = rag_prompts(tokenizer)
    reference = [plain_greedy(llm, tokenizer, t, 6) for t in tokens]
    eos = tokenizer.eos_token_id
    # Answers the model really gives (drafts kept to the end), and ones that leave it after two
    # tokens (drafts rejected midway), so both verification paths run.
    paths = {i: r + (eos,) for i, r in enumerate(sorted(set(reference))[::2])}
    paths.update({1000 + i: r[:2] + (eos - 1, eos) for i, r in enumerate(sorted(set(reference))[1::2])})
    trie = bulk.Trie.from_paths(paths, eos)
    scored = bulk.decode_scored(llm, tokens, trie, bulk.Settings(False, 6, batch_size), tokenizer.pad_token_id)
    assert [ids for ids, _ in scored] == reference
    assert bulk.decode(llm, tokens, trie, bulk.Settings(False, 6, batch_size), tokenizer.pad_token_id) == reference
    # Each answer's log-probability: its tokens', EOS included where it ended the answer.
    for t, (ids, got) in zip(tokens, scored):
        ended = ids + (eos,) if len(ids) < 6 else ids
        assert got == pytest.approx(logprob(llm, t, ended), abs=1e-4) and got < 0


def test_constrained_decoding_equals_a_step_by_step_reference(tiny):
    llm, tokenizer = tiny
    trie = bulk.Trie.build(tokenizer, NAMES)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    tokens = [tokenizer(prompts.for_pair(NAMES, a, b), add_special_tokens=False).input_ids for a, b in pairs]
    got = bulk.decode(llm, tokens, trie, bulk.Settings(True, 24, 4), tokenizer.pad_token_id, exclude=pairs)

    def reference(prompt, exclude):
        generated = ()
        while len(trie.clusters(generated, exclude)) > 1:
            logits = llm(input_ids=torch.tensor([prompt + list(generated)])).logits[0, -1]
            allowed = sorted({trie.paths[c][len(generated)] for c in trie.clusters(generated, exclude)})
            generated += (allowed[int(logits[allowed].argmax())],)
        return trie.paths[trie.clusters(generated, exclude)[0]][:-1]

    with torch.inference_mode():
        assert got == [reference(t, pair) for t, pair in zip(tokens, pairs)]
    # constrained answers score the tokens decoding chose: at most the whole answer's log-probability
    for t, (ids, logp) in zip(tokens, bulk.decode_scored(llm, tokens, trie, bulk.Settings(True, 24, 4),
                                                         tokenizer.pad_token_id, exclude=pairs)):
        assert logprob(llm, t, ids + (tokenizer.eos_token_id,)) - 1e-4 <= logp < 0
    assert all(prompts.parse([tokenizer.decode(g)], NAMES)[0] not in pair for g, pair in zip(got, pairs))


def test_trie_refuses_clusters_it_cannot_tell_apart(tiny):
    with pytest.raises(ValueError, match="clusters 0 and 1 have the same description"):
        bulk.Trie.build(tiny[1], {0: "chess, go", 1: "chess, go"})


def tables(cfg) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(cfg.paths.tables).glob("*.parquet"))}


METRICS = ("bulk_infer.json", "bulk_infer/detail.json")  # the headline and the per-table record


def metrics(cfg) -> dict:
    return {k: v for name in METRICS for k, v in json.loads((Path(cfg.paths.metrics) / name).read_text()).items()}


def metrics_bytes(cfg) -> bytes:
    return b"".join((Path(cfg.paths.metrics) / name).read_bytes() for name in METRICS)


def test_tables_cover_every_pair_and_carry_their_manifest(world, tmp_path):
    cfg = build(world, tmp_path / "a")
    assert sorted(tables(cfg)) == ["base.parquet", "rag-2024-03-01.parquet", "rag-2024-03-03.parquet",
                                   "rag-2024-03-05.parquet"]
    rule = retrieval.hybrid_rule(json.loads((Path(cfg.paths.metrics) / "gate.json").read_text())["hybrid"], "gate")
    found = pd.read_parquet(cfg.paths.retrieved)
    for path in sorted(Path(cfg.paths.tables).glob("*.parquet")):
        table = pd.read_parquet(path)
        columns = ["c1", "c2", "c_pred", "description", "valid", "served", "retrieved", "last", "output", "logprob"]
        assert list(table.columns) == columns + (["hybrid"] if path.name.startswith("rag") else [])
        assert len(table) == 20 and (table.c1 != table.c2).all()
        assert table[["c1", "c2"]].drop_duplicates().shape[0] == 20
        assert not ((table.c_pred == table.c1) | (table.c_pred == table.c2)).any()
        assert set(table.served) <= {"llm", "retrieved", "last", "popular"}
        llm_rows = table[table.served == "llm"]
        assert llm_rows.valid.all() and (table[table.served == "retrieved"].c_pred ==
                                         table[table.served == "retrieved"].retrieved.str[0]).all()
        meta = manifest.read(path)
        assert {"period", "refresh_date", "strategy", "data_hash", "base_model_hash", "adapter_hash",
                "template_hash", "params_hash", "code_revision", "code_hash", "packages", "decoding",
                "gate"} <= set(meta)
        assert meta["period"] == "2024-03" and meta["template_hash"] == prompts.TEMPLATE_HASH
        assert json.loads(meta["gate"])["override_reason"] == "tiny random model"
        assert set(json.loads(meta["params"])) == set(manifest.stage_deps("bulk_infer")[1])
        assert meta["device_class"] == f"cpu-avx2-{kernels.cpu_vendor()}" and meta["torch_version"] == torch.__version__
        assert json.loads(meta["hybrid"]) == rule
        assert table.logprob.dtype == "float64" and (table.logprob < 0).all()
        if path.name.startswith("rag"):
            assert meta["strategy"] == "rag" and path.name == f"rag-{meta['refresh_date']}.parquet"
            assert table.retrieved.map(len).sum() > 0
            # hybrid, by support: the top successor where its window support reaches tau, else the
            # table's answer; else the answer where the rule trusts the model (model; confidence
            # where its log-probability reaches the threshold), else the count answer: the top
            # successor where it followed the pair at least the gate's fitted min_support times (the
            # prompts' evidence), else a cluster that is neither c1 nor c2
            day = found[found.refresh_date == pd.Timestamp(meta["refresh_date"])]
            top = {(a, b): (r[0], n[0]) for a, b, r, n in zip(day.c1, day.c2, day.retrieved, day.support) if len(r)}
            pairs = list(zip(table.c1, table.c2))
            if rule["rule"] == "support":
                want = [top[p][0] if p in top and top[p][1] >= rule["tau"] else c for p, c in zip(pairs, table.c_pred)]
                assert table.hybrid.tolist() == want
            for p, c, h, lp in zip(pairs, table.c_pred, table.hybrid, table.logprob):
                if rule["rule"] == "model" or (rule["rule"] == "confidence" and lp >= rule["min_logprob"]):
                    assert h == c
                elif rule["rule"] != "support":
                    trusted = p in top and top[p][1] >= json.loads(meta["gate"])["fitted"]["min_support"]
                    assert h == top[p][0] if trusted else pd.notna(h) and h not in p
        else:
            assert table.retrieved.map(len).sum() == 0
    run, m = timing.take(), metrics(cfg)
    assert run["decoded"] == m["unique_prompts"] > 20 and run["cached_at_start"] == 0
    valid = pd.concat([pd.read_parquet(path).valid for path in Path(cfg.paths.tables).glob("*.parquet")])
    assert m["valid_share"] == round(valid.mean(), 6) and m["tables"] == len(m["per_table"]) == 4
    distinct = {p.stem: pd.read_parquet(p).c_pred.nunique() for p in Path(cfg.paths.tables).glob("*.parquet")}
    rag = [n for name, n in distinct.items() if name != "base"]
    assert m["distinct_answers"] == {"base": distinct["base"], "rag_min": min(rag), "rag_max": max(rag)}
    assert all(m["per_table"][name]["distinct_answers"] == n for name, n in distinct.items())


def test_the_tables_lines_need_the_support_the_gate_fitted_not_the_default(world, tmp_path):
    """prompts.min_support is the gate's default; the tables follow the gate's choice (fitted.min_support)."""
    where = tmp_path / "fitted"
    shutil.copytree(world, where, ignore=shutil.ignore_patterns("tables", ".infer_cache"))
    g = json.loads((where / "metrics/gate.json").read_text())
    g["fitted"]["min_support"] = 10 ** 9  # more than any pair's support
    (where / "metrics/gate.json").write_text(json.dumps(g))
    cfg = build(world, where)
    rag = [pd.read_parquet(p) for p in Path(cfg.paths.tables).glob("rag-*.parquet")]
    assert rag and all(t.retrieved.map(len).sum() == 0 for t in rag)
    assert json.loads(manifest.read(next(Path(cfg.paths.tables).glob("rag-*.parquet")))["gate"])["fitted"] == g["fitted"]
    del g["fitted"]["min_support"]
    (where / "metrics/gate.json").write_text(json.dumps(g))
    with pytest.raises(ValueError, match=r"gate.json: key 'fitted.min_support' is missing or not a number; rerun the gate"):
        build(world, where)


def test_the_cache_serves_every_prompt_again_and_never_changes_a_result(world, tmp_path):
    cfg = build(world, tmp_path / "a")
    first, cold = tables(cfg), metrics_bytes(cfg)
    timing.take()
    build(world, tmp_path / "a")
    assert timing.take()["decoded"] == 0 and tables(cfg) == first
    # What a warm cache saved is a run record, not an output: the metrics keep their bytes.
    assert metrics_bytes(cfg) == cold
    shutil.rmtree(cfg.paths.infer_cache)
    build(world, tmp_path / "a")
    assert timing.take()["decoded"] > 0 and tables(cfg) == first


def test_a_killed_run_resumes_to_byte_identical_tables(world, tmp_path, monkeypatch):
    cfg = build(world, tmp_path / "a")
    whole = tables(cfg)
    shutil.rmtree(cfg.paths.tables)
    shutil.rmtree(cfg.paths.infer_cache)
    real_answer, real_add = bulk._answer, AnswerCache.add
    stored = []

    def killed(*args, **kwargs):  # dies in the middle of the second shard
        if stored:
            raise KeyboardInterrupt
        return real_answer(*args, **kwargs)

    def add(self, *args):
        real_add(self, *args)
        stored.append(1)

    monkeypatch.setattr(bulk, "_answer", killed)
    monkeypatch.setattr(AnswerCache, "add", add)
    with pytest.raises(KeyboardInterrupt):
        build(world, tmp_path / "a")
    monkeypatch.setattr(bulk, "_answer", real_answer)
    assert not Path(cfg.paths.tables).exists() and len(list(Path(cfg.paths.infer_cache).rglob("part-*"))) == 1
    timing.take()
    build(world, tmp_path / "a")
    assert 0 < timing.take()["cached_at_start"] < metrics(cfg)["unique_prompts"] and tables(cfg) == whole


def test_a_later_refresh_only_decodes_its_new_prompts(world, tmp_path):
    cfg = build(world, tmp_path / "a", "refresh.until=2024-03-03", retrieval=True)
    before = {name: pd.read_parquet(Path(cfg.paths.tables) / name) for name in tables(cfg)}
    timing.take()
    cfg = build(world, tmp_path / "a", "refresh.until=2024-03-05", retrieval=True)
    assert timing.take()["decoded"] == metrics(cfg)["per_table"]["rag-2024-03-05"]["new_prompts"] > 0
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(Path(cfg.paths.tables) / name), frame)


def test_constrained_tables_are_always_valid(world, tmp_path):
    cfg = build(world, tmp_path / "a", "bulk_infer.decoding=constrained")
    for path in Path(cfg.paths.tables).glob("*.parquet"):
        table = pd.read_parquet(path)
        assert table.valid.all() and (table.served == "llm").all()
        assert manifest.read(path)["decoding"] == "constrained"


def test_a_failed_gate_stops_with_a_clear_error(world, tmp_path):
    shutil.copytree(world, tmp_path / "a", ignore=shutil.ignore_patterns("tables", ".infer_cache"))
    gate = tmp_path / "a" / "metrics" / "gate.json"
    failed = {**json.loads(gate.read_text()), "override_reason": None}
    gate.write_text(json.dumps(failed))
    with pytest.raises(ValueError, match="gate.json: the gate failed .* not overridden"):
        build(world, tmp_path / "a")
    assert not (tmp_path / "a" / "tables").exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "gate.json: not a readable gate verdict (JSONDecodeError"),
    ("[]", "gate.json: not a gate verdict"),
    ({"drop": "override_reason"}, "gate.json: key 'override_reason' is missing"),
    ({"drop": "hybrid"}, "gate.json: key 'hybrid' is missing"),
    ({"hybrid": {}}, "gate.json: key 'hybrid.tau' is missing or not a number"),
    ({"hybrid": {"rule": "confidence", "tau": 3}}, "gate.json: key 'hybrid.min_logprob' is missing"),
    ({"hybrid": {"rule": "vibes"}}, "gate.json: key 'hybrid.rule' is 'vibes'"),
])
def test_a_broken_gate_verdict_is_one_line_naming_the_file_and_key(world, tmp_path, content, message):
    path = tmp_path / "gate.json"
    if isinstance(content, str):
        path.write_text(content)
    else:
        gate = json.loads((world / "metrics" / "gate.json").read_text())
        gate.pop(content.get("drop"), None)
        gate.update({k: v for k, v in content.items() if k != "drop"})
        path.write_text(json.dumps(gate))
    with pytest.raises(ValueError) as err:
        verdict.read(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_a_verdict_is_cleared_when_the_gate_passed_or_was_overridden():
    base = {"failed_checks": ["test_recall 0.1 < 0.5"]}
    assert verdict.cleared({**base, "passed": True, "override_reason": None})
    assert verdict.cleared({**base, "passed": False, "override_reason": "tiny random model in CI"})
    assert not verdict.cleared({**base, "passed": False, "override_reason": ""})
    assert verdict.failure(base) == "the gate failed (test_recall 0.1 < 0.5) and was not overridden"


def test_the_gate_verdicts_hybrid_rule_is_read_as_recorded(world, tmp_path):
    gate = json.loads((world / "metrics" / "gate.json").read_text())
    path = tmp_path / "gate.json"
    path.write_text(json.dumps({**gate, "hybrid": {"rule": "confidence", "tau": None, "min_logprob": -1.5}}))
    assert verdict.read(path)[1] == {"rule": "confidence", "tau": None, "min_logprob": -1.5}


def test_lookup_serves_a_pair_with_its_lineage_and_names_bad_input(world, tmp_path):
    from pipeline import lookup

    cfg = build(world, tmp_path / "a")
    newest = Path(cfg.paths.tables) / "rag-2024-03-05.parquet"
    found = lookup.lookup(1, 3, table=str(newest))
    row = pd.read_parquet(newest).query("c1 == 1 and c2 == 3").iloc[0]
    assert found["c_pred"] == row.c_pred and found["description"] == row.description and found["served"] == row.served
    assert found["lineage"]["refresh_date"] == "2024-03-05" and found["lineage"]["strategy"] == "rag"
    assert found["lineage"]["adapter_hash"] == manifest.read(newest)["adapter_hash"]
    assert "(1, 3) -> " in lookup.render(found)
    with pytest.raises(lookup.LookupFailed, match="c2=9 is not a cluster of .*rag-2024-03-05.parquet"):
        lookup.lookup(1, 9, table=str(newest))
    with pytest.raises(lookup.LookupFailed, match="c1 and c2 are both 2"):
        lookup.lookup(2, 2, table=str(newest))
    names = ["base.parquet", "rag-2024-03-01.parquet", "rag-2024-03-03.parquet"]
    assert lookup.choose(names, "rag", "2024-03-02") == "rag-2024-03-01.parquet"
    assert lookup.choose(names, "rag", None) == "rag-2024-03-03.parquet"
    assert lookup.choose(names, "base", None) == "base.parquet"
    with pytest.raises(lookup.LookupFailed, match="no RAG table dated on or before 2024-02-28"):
        lookup.choose(names, "rag", "2024-02-28")


def test_a_thin_rag_line_leaves_the_pair_its_base_prompt():
    days = [date(2024, 3, 1)]
    found = pd.DataFrame({"refresh_date": pd.to_datetime(days * 2), "c1": [0, 1], "c2": [1, 0],
                          "retrieved": [[2], [3]], "support": [[5], [4]]})
    rows = bulk_infer.table_rows(NAMES, found, days, min_support=5).set_index(["table", "c1", "c2"])
    base, rag = rows.loc["base"], rows.loc["rag-2024-03-01"]
    assert rag.loc[(0, 1), "retrieved"] == [2] and NAMES[2] in rag.loc[(0, 1), "prompt"]
    assert rag.loc[(1, 0), "retrieved"] == [] and rag.loc[(1, 0), "prompt"] == base.loc[(1, 0), "prompt"]
    assert bulk_infer.table_rows(NAMES, found, days, min_support=4).set_index(["table", "c1", "c2"]).loc[
        ("rag-2024-03-01", 1, 0), "retrieved"] == [3]


def test_the_popular_line_goes_into_rag_prompts_only_when_asked():
    days = [date(2024, 3, 1)]
    found = pd.DataFrame({"refresh_date": pd.to_datetime(days), "c1": [0], "c2": [1], "retrieved": [[2]],
                          "support": [[5]]})
    today = bulk_infer.table_rows(NAMES, found, days, min_support=5)
    # popular_n = 0 keeps every prompt byte for byte
    assert bulk_infer.table_rows(NAMES, found, days, 5, {days[0]: []}).prompt.tolist() == today.prompt.tolist()
    assert today.prompt.tolist() == [prompts.for_pair(NAMES, a, b, got) for a, b, got in
                                     zip(today.c1, today.c2, today.retrieved)]
    rows = bulk_infer.table_rows(NAMES, found, days, 5, {days[0]: [3, 4]}).set_index(["table", "c1", "c2"])
    line = f"Popular now: {NAMES[3]}; {NAMES[4]}\n"
    assert rows.loc[("rag-2024-03-01", 0, 1), "prompt"].endswith(
        f"Recently followed by: {NAMES[2]}\n{line}{prompts.ASK}")
    assert line in rows.loc[("rag-2024-03-01", 1, 0), "prompt"]  # nothing retrieved: the popular line alone
    assert not rows.loc["base"].prompt.str.contains("Popular now").any()


def test_hybrid_serves_a_trusted_successor_else_the_answer():
    got = retrieval.hybrid(pd.array([5, pd.NA, 7], dtype="Int32"), [[2], [3], []])
    assert got.tolist() == [2, 3, 7]
    assert retrieval.hybrid(pd.array([5, pd.NA], dtype="Int32"), [[], []]).tolist() == [5, pd.NA]


def test_hybrid_by_confidence_serves_the_answer_only_where_the_model_is_sure_enough():
    serve = retrieval.confident(pd.array([5, pd.NA, 7, 8], dtype="Int32"), [-0.1, -0.2, -3.0, -3.0],
                                pd.array([2, 3, 4, pd.NA], dtype="Int32"))
    assert serve(-1.0).tolist() == [5, 3, 4, 8]  # unsure of 7: the count answer 4; no count answer for 8
    assert serve(-5.0).tolist() == [5, 3, 7, 8]  # an invalid answer is never trusted


def test_constrained_decoding_needs_the_tokens_of_the_longest_answer():
    eos = 0
    # 3 is decided at its third token and needs a fourth for the check; 4 only by its EOS.
    trie = bulk.Trie.from_paths({3: (5, 6, 7, 8, eos), 4: (5, 6, eos), 5: (5, 6, 9, eos), 6: (1, eos)}, eos)
    assert trie.tokens_needed() == 4


def test_constrained_decoding_completes_every_answer_with_the_tokens_needed():
    """The bound is tight: at trie.tokens_needed() every constrained answer is a whole description
    (here descriptions begin one another and differ only in their last keyword); one token fewer
    cuts some (the seeded tiny model takes the long ones)."""
    cfg = compose(Path("/nonexistent"), "model=tiny_random", f"model.cache_dir={ROOT / 'models'}")
    llm, tokenizer = model.load(cfg.model)
    names = {0: "street food, night market", 1: "street food, night market, travel vlog",
             2: "street food, night market, travel diary", 3: "chess, endgame studies", 4: "chess, openings"}
    trie = bulk.Trie.build(tokenizer, names)
    pairs = [(a, b) for a in names for b in names if a != b]
    texts = [prompts.for_pair(names, a, b) for a, b in pairs]

    def invalid(max_new_tokens: int) -> int:
        settings = bulk.Settings(constrained=True, max_new_tokens=max_new_tokens, batch_size=8)
        return prompts.parse(bulk.answers(llm, tokenizer, texts, trie, settings, exclude=pairs), names).count(None)

    assert invalid(trie.tokens_needed()) == 0 and invalid(trie.tokens_needed() - 1) > 0


def test_bulk_infer_refuses_a_constrained_budget_below_what_the_trie_needs(world, tmp_path):
    with pytest.raises(ValueError, match=r"params.yaml: bulk_infer.max_new_tokens=1: constrained decoding needs at least \d+"):
        build(world, tmp_path / "a", "bulk_infer.decoding=constrained", "bulk_infer.max_new_tokens=1")
