"""gate: greedy free decoding on held-out pairs; halt the pipeline unless both checks pass.

A held-out triple hits as evaluate's events do (pipeline/hits.py), never looking into the month.
On the same held-out days (never on the month the tables serve) it also fits what the tables and
the report use: the hybrid rule and the count twin's smoothing, each moved off its default only
by a gain clear of noise (hits.guarded)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from pipeline import counting, db, evidence, hits, kernels, retrieval, timing
from pipeline.data import contract
from pipeline.files import write_metrics, write_parquet
from pipeline.llm import bulk, model, prompts
from pipeline.period import windows


def held_out_pairs(con, triples: Path, test_start, month_start, max_pairs: int, seed: int) -> pd.DataFrame:
    pairs = con.execute(db.sql("gate_pairs"), {"triples": str(triples), "test_start": test_start,
                                               "month_start": month_start}).df()
    if pairs.empty:
        raise ValueError(f"{triples}: no triples in the held-out days [{test_start}, {month_start})")
    if len(pairs) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False))
        pairs = pairs.iloc[keep].reset_index(drop=True)
    return pairs


def held_out_events(con, cfg: DictConfig, w) -> pd.DataFrame:
    """Every triple of the held-out days [test_start, month_start) with the user's next evaluate.horizon
    clusters seen before month_start (hits.events); too few of them to choose on is one line."""
    found = hits.events(con, cfg.paths.triples, cfg.paths.sequences, w.test_start, w.month_start,
                        cfg.evaluate.horizon, until=w.month_start)
    if len(found) < cfg.gate.min_held_out_triples:
        raise ValueError(f"{cfg.paths.triples}: {len(found)} held-out triples in [{w.test_start}, {w.month_start}) "
                         f"(finetune.test_days={cfg.finetune.test_days}), fewer than gate.min_held_out_triples="
                         f"{cfg.gate.min_held_out_triples}: raise finetune.test_days (and train_days) or lower it")
    return found


def served_hits(events: pd.DataFrame, pairs: pd.DataFrame, c_pred) -> np.ndarray:
    """Per event, whether the cluster its pair is served (c_pred, aligned with `pairs`) hits."""
    served = events[["c1", "c2"]].merge(pairs[["c1", "c2"]].assign(c_pred=pd.array(c_pred, dtype="Int32")),
                                        on=["c1", "c2"], how="left").c_pred
    return hits.hits(pd.DataFrame({"x": served.to_numpy()}), events.future).x.to_numpy()


def count_prior(con, cfg: DictConfig, w, events: pd.DataFrame) -> dict:
    """The count twin's smoothing (counting.count_table's prior) fitted on the held-out events:
    finetune.label_prior (the fine-tune's own labels as a table) unless a candidate of
    gate.count_priors gains on it clear of noise. {"prior", "default", "candidates"}."""
    g = cfg.gate
    rows = counting.training_rows(con, cfg.paths.daily_counts, w)
    pairs = events[["c1", "c2"]].drop_duplicates()
    default = float(cfg.finetune.label_prior)
    candidates = [{"name": p, "prior": p} for p in dict.fromkeys([default, *map(float, g.count_priors)])]
    hit = {c["name"]: served_hits(events, pairs, counting.count_table(rows, pairs, c["prior"]).c_pred)
           for c in candidates}
    pick = hits.guarded(candidates, hit, events.user_id, default, g.bootstrap, g.seed)
    for c in candidates:
        del c["name"]
    return {"prior": pick["prior"], "default": default, "candidates": candidates}


class Scorer:
    """Decode prompts for the evaluated pairs and score them on their held-out events: exact match
    and held-out recall (the share of events hit, hits.hits)."""

    def __init__(self, llm, tokenizer, pairs: pd.DataFrame, events: pd.DataFrame, names: dict[int, str],
                 g: DictConfig, batch_size: int):
        self.llm, self.tokenizer, self.pairs, self.names = llm, tokenizer, pairs, names
        self.events = events.merge(pairs[["c1", "c2"]], on=["c1", "c2"]).sort_values("id", ignore_index=True)
        self.trie = bulk.Trie.build(tokenizer, names)
        self.settings = bulk.Settings(constrained=False, max_new_tokens=g.max_new_tokens,
                                      batch_size=batch_size)

    def __call__(self, retrieved: list[list[int]], popular: list[int] = (),
                 last: list[list[int]] | None = None) -> tuple[list[str], list[str], pd.Series, dict, pd.Series]:
        """(prompts, generated texts, predicted cluster or NA, scores, each answer's log-probability)
        with these retrieved lines, last-cluster lines and popular line."""
        last = [[] for _ in retrieved] if last is None else last
        texts = [prompts.for_pair(self.names, a, b, got, popular, back)
                 for a, b, got, back in zip(self.pairs.c1, self.pairs.c2, retrieved, last)]
        scored = bulk.scored_answers(self.llm, self.tokenizer, texts, self.trie, self.settings)
        outputs = [text for text, _ in scored]
        logprob = pd.Series([x for _, x in scored], index=self.pairs.index)
        c_pred = pd.Series(pd.array(prompts.parse(outputs, self.names), dtype="Int32"), index=self.pairs.index)
        triples, hit = self.hits(c_pred)
        scores = {"exact_match": round(float(c_pred.notna().mean()), 6), "test_recall": recall_of(triples, hit),
                  "test_triples": int(triples), "hits": int(hit)}
        return texts, outputs, c_pred, scores, logprob

    def hit(self, c_pred) -> np.ndarray:
        """Per held-out event of the evaluated pairs, whether serving c_pred hits it."""
        return served_hits(self.events, self.pairs, c_pred)

    def hits(self, c_pred) -> tuple[int, int]:
        """(held-out events of the evaluated pairs, hits) when they are served c_pred."""
        got = self.hit(c_pred)
        return len(got), int(got.sum())


def rag_probe(con, score: Scorer, pairs: pd.DataFrame, cfg: DictConfig, w, base: pd.Series,
              base_logprob: pd.Series) -> tuple[dict, dict, dict]:
    """RAG prompts on the held-out pairs (retrieval as in fine-tuning, dated test_start, with
    prompts.popular_n popular clusters as the tables carry them): (exact match, recall and copy rate
    with lines of the chosen support and for each of gate.min_support_candidates; the support
    chosen among them, guarded by held-out users; the hybrid rule chosen on the answers at that
    support, retrieval.choose_hybrid).
    `base`: the pairs' answers to their base prompts.

    Decoded once with a line wherever anything was retrieved, once with the last cluster's line
    wherever it has one (prompts.evidence=backoff), and once without (when a popular line makes that
    prompt differ from the base prompt); a candidate's answers take the lined answer where its line
    has enough support, else the last cluster's (backoff), else the line-free one: the very prompts
    it would show when finetune.rag_top_n is 1 (with more, a candidate's lines keep every retrieved
    successor)."""
    ft, g = cfg.finetune, cfg.gate
    daily, days = cfg.paths.daily_counts, [w.test_start]
    found = retrieval.successors(con, daily, days, ft.rag_window_days, ft.rag_top_n)
    after = evidence.last_successors(con, daily, days, ft.rag_window_days, cfg.retrieve.fallback_window_days)
    at = pairs.assign(day=w.test_start)
    shown = cfg.prompts.popular_n
    popular = retrieval.popular(con, daily, days, ft.rag_window_days, shown).popular.tolist()[0] if shown else []
    every = retrieval.attach(at, found, "day", 1)
    none = [[] for _ in range(len(pairs))]
    _, _, lined, _, lined_logprob = score(every.tolist(), popular)
    _, _, bare, _, bare_logprob = (score(none, popular) if popular else (None, None, base, None, base_logprob))
    backs = (evidence.last_line(at, "day", after) if cfg.prompts.evidence == "backoff"
             else pd.Series(none, index=pairs.index))
    has_back = backs.map(bool)
    if has_back.any():
        _, _, backed, _, backed_logprob = score(none, popular, backs.tolist())
        bare, bare_logprob = backed.where(has_back, bare), backed_logprob.where(has_back, bare_logprob)

    def at_least(m: int) -> tuple[pd.Series, dict]:
        got = retrieval.attach(at, found, "day", m)
        answers = lined.where(got.map(bool), bare)
        triples, hit = score.hits(answers)
        copied = [not pd.isna(p) and p == line[0] for p, line in zip(answers, got) if line]
        return answers, {"min_support": m, "pairs_with_line": len(copied),
                         "exact_match": round(float(answers.notna().mean()), 6),
                         "test_recall": recall_of(triples, hit),
                         "copy_rate": round(float(np.mean(copied)), 6) if copied else None}

    scored = {m: at_least(m) for m in {cfg.prompts.min_support, *g.min_support_candidates}}
    users = score.events.user_id
    # Which support a line in the tables' prompts needs, chosen as every setting is (guarded,
    # prompts.min_support the default); the hybrid rule is then chosen on the answers to those prompts.
    candidates = [{"name": m, "min_support": m} for m in dict.fromkeys([cfg.prompts.min_support,
                                                                        *g.min_support_candidates])]
    pick = hits.guarded(candidates, {m: score.hit(scored[m][0]) for m in scored}, users, cfg.prompts.min_support,
                        g.bootstrap, g.seed)
    m = pick["min_support"]
    c_pred, rag = scored[m]
    rag = {**rag, "by_min_support": [scored[k][1] for k in g.min_support_candidates]}
    choice = {"min_support": m, "default": cfg.prompts.min_support,
              "candidates": [{k: c[k] for k in ("min_support", "gain", "gain_ci", "clear")} for c in candidates]}
    lined_at = retrieval.attach(at, found, "day", m).map(bool)
    logprob = lined_logprob.where(lined_at, bare_logprob)
    # The count answer as the tables' hybrid column has it (evaluate's backoff), over the same window.
    counts = evidence.answers(at, "day", found, after, evidence.popular_at(con, daily, days, ft.rag_window_days), m)

    def guard(candidates: list[dict], hit: dict) -> dict:
        return hits.guarded(candidates, hit, users, retrieval.DEFAULT_RULE, g.bootstrap, g.seed)

    return rag, choice, retrieval.choose_hybrid(score.hit, guard, c_pred, logprob, at, found, "day", list(g.hybrid_taus),
                                        counts)


def fitted_settings(fitted: dict) -> dict:
    """The settings fitted on the held-out days as the verdict records them (bulk_infer builds the
    tables' prompts and count answers with them and copies them into every table's manifest, where
    evaluate reads them): the chosen values, not the candidates."""
    return {"count_prior": fitted["count_prior"]["prior"], "min_support": fitted["min_support"]["min_support"]}


def recall_of(triples: int, hits: int) -> float:
    """Held-out recall: the share of the held-out triples whose successor the pair is served."""
    return round(hits / max(triples, 1), 6)


def verdict(metrics: dict, g: DictConfig) -> list[str]:
    """The failed checks, in words (empty when the gate passes)."""
    failed = []
    if metrics["exact_match"] < g.min_exact_match:
        failed.append(f"exact match {metrics['exact_match']:.3f} < {g.min_exact_match}")
    if metrics["test_recall"] < g.min_test_recall:
        failed.append(f"test recall {metrics['test_recall']:.4f} < {g.min_test_recall}")
    return failed


def run(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.torch_threads)
    g, w = cfg.gate, windows(cfg)
    con = db.connect(cfg)
    pairs = held_out_pairs(con, Path(cfg.paths.triples), w.test_start, w.month_start, g.max_pairs, g.seed)
    names = contract.descriptions(cfg.data.path)
    where = kernels.device(cfg.device, "gate")
    events = held_out_events(con, cfg, w)
    fitted = {"count_prior": count_prior(con, cfg, w, events)}
    llm, tokenizer = model.load(cfg.model, cfg.paths.adapter if g.use_adapter else None, where, cfg.bulk_infer.dtype)
    score = Scorer(llm, tokenizer, pairs, events, names, g, g.batch_size[where])
    began = time.perf_counter()
    prompt_texts, outputs, c_pred, scores, logprob = score([[] for _ in range(len(pairs))])
    wall = time.perf_counter() - began
    pairs = pairs.assign(prompt=prompt_texts, output=outputs, c_pred=c_pred, valid=c_pred.notna())
    triples = scores["test_triples"]
    metrics = {**scores, "pairs": len(pairs), "decoding": "free", "adapter": g.use_adapter,
               "held_out": [str(w.test_start), str(w.month_start)], "held_out_triples": len(events),
               "fitted": fitted}
    # Not gated, measured: the same pairs with RAG lines retrieved before the held-out days.
    metrics["rag"], fitted["min_support"], metrics["hybrid"] = rag_probe(con, score, pairs, cfg, w, c_pred, logprob)
    failed = verdict(metrics, g)
    metrics.update(passed=not failed, failed_checks=failed, override_reason=g.override_reason,
                   min_exact_match=g.min_exact_match, min_test_recall=g.min_test_recall)
    write_parquet(pairs, cfg.paths.gate_predictions)
    # The verdict and the figures it rests on; bulk_infer reads the verdict and tau from gate.json.
    write_metrics(cfg.paths.metrics, "gate", {
        **{k: metrics[k] for k in ("passed", "exact_match", "test_recall", "failed_checks", "override_reason")},
        "hybrid": {k: metrics["hybrid"][k] for k in ("rule", *retrieval.PARAMETERS)},
        "rag": {"test_recall": metrics["rag"]["test_recall"]}, "fitted": fitted_settings(fitted)}, metrics)
    timing.note(decode_s=round(wall, 1), prompts_per_s=round(len(pairs) / wall, 2))
    print(f"gate: exact match {metrics['exact_match']:.3f} (>= {g.min_exact_match}), test recall "
          f"{metrics['test_recall']:.4f} (>= {g.min_test_recall}) on {len(pairs)} pairs / {triples} triples, "
          f"{len(pairs) / wall:.1f} prompts/s")
    if failed and g.override_reason:
        print(f"gate: FAILED ({'; '.join(failed)}) but overridden: {g.override_reason}", file=sys.stderr)
    elif failed:
        print(f"gate: FAILED: {'; '.join(failed)}. The pipeline stops here; fix the fine-tune, or after a "
              "manual review set gate.override_reason=\"...\"", file=sys.stderr)
        raise SystemExit(1)
