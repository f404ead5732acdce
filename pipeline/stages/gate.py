"""gate: greedy free decoding on held-out pairs; halt the pipeline unless both checks pass.

It also chooses the hybrid's tau on the same held-out days (never on the month the tables serve)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from pipeline import db, kernels, retrieval, timing
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


def held_out_recall(con, c_pred: pd.Series, pairs: pd.DataFrame, params: dict) -> tuple[int, int]:
    """(held-out triples of the evaluated pairs, hits) for the predictions c_pred."""
    con.register("predictions", pd.DataFrame({"c1": pairs.c1, "c2": pairs.c2, "c_pred": c_pred}))
    try:
        return con.execute(db.sql("gate_recall"), params).fetchall()[0]
    finally:
        con.unregister("predictions")


class Scorer:
    """Decode prompts for the evaluated pairs and score them: exact match and held-out recall."""

    def __init__(self, con, llm, tokenizer, pairs: pd.DataFrame, names: dict[int, str], g: DictConfig, recall: dict,
                 batch_size: int):
        self.con, self.llm, self.tokenizer, self.pairs, self.names, self.recall = (
            con, llm, tokenizer, pairs, names, recall)
        self.trie = bulk.Trie.build(tokenizer, names)
        self.settings = bulk.Settings(constrained=False, max_new_tokens=g.max_new_tokens,
                                      batch_size=batch_size)

    def __call__(self, retrieved: list[list[int]], popular: list[int] = ()) -> tuple[list[str], list[str], pd.Series,
                                                                                 dict, pd.Series]:
        """(prompts, generated texts, predicted cluster or NA, scores, each answer's log-probability)
        with these retrieved lines and popular line."""
        texts = [prompts.for_pair(self.names, a, b, got, popular)
                 for a, b, got in zip(self.pairs.c1, self.pairs.c2, retrieved)]
        scored = bulk.scored_answers(self.llm, self.tokenizer, texts, self.trie, self.settings)
        outputs = [text for text, _ in scored]
        logprob = pd.Series([x for _, x in scored], index=self.pairs.index)
        c_pred = pd.Series(pd.array(prompts.parse(outputs, self.names), dtype="Int32"), index=self.pairs.index)
        triples, hits = self.hits(c_pred)
        scores = {"exact_match": round(float(c_pred.notna().mean()), 6), "test_recall": recall_of(triples, hits),
                  "test_triples": int(triples), "hits": int(hits)}
        return texts, outputs, c_pred, scores, logprob

    def hits(self, c_pred) -> tuple[int, int]:
        """(held-out triples of the evaluated pairs, hits) when they are served c_pred."""
        return held_out_recall(self.con, c_pred, self.pairs, self.recall)


def rag_probe(con, score: Scorer, pairs: pd.DataFrame, cfg: DictConfig, w, base: pd.Series,
              base_logprob: pd.Series) -> tuple[dict, dict]:
    """RAG prompts on the held-out pairs (retrieval as in fine-tuning, dated test_start, with
    prompts.popular_n popular clusters as the tables carry them): exact match, recall and copy rate
    with lines of at least prompts.min_support, the same for each of gate.min_support_candidates,
    and the hybrid's tau chosen on them. `base`: the pairs' answers to their base prompts.

    Decoded once with a line wherever anything was retrieved (and once without, when a popular line
    makes that prompt differ from the base prompt); a candidate's answers take the lined answer where
    its line has enough support, else the line-free one: the very prompts it would show when
    finetune.rag_top_n is 1 (with more, a candidate's lines keep every retrieved successor)."""
    ft, g = cfg.finetune, cfg.gate
    found = retrieval.successors(con, cfg.paths.daily_counts, [w.test_start], ft.rag_window_days, ft.rag_top_n)
    at = pairs.assign(day=w.test_start)
    shown = cfg.prompts.popular_n
    popular = (retrieval.popular(con, cfg.paths.daily_counts, [w.test_start], ft.rag_window_days, shown)
               .popular.tolist()[0] if shown else [])
    every = retrieval.attach(at, found, "day", 1)
    _, _, lined, _, lined_logprob = score(every.tolist(), popular)
    _, _, bare, _, bare_logprob = (score([[] for _ in range(len(pairs))], popular) if popular else
                                   (None, None, base, None, base_logprob))

    def at_least(m: int) -> tuple[pd.Series, dict]:
        got = retrieval.attach(at, found, "day", m)
        answers = lined.where(got.map(bool), bare)
        triples, hits = score.hits(answers)
        copied = [not pd.isna(p) and p == line[0] for p, line in zip(answers, got) if line]
        return answers, {"min_support": m, "pairs_with_line": len(copied),
                         "exact_match": round(float(answers.notna().mean()), 6),
                         "test_recall": recall_of(triples, hits),
                         "copy_rate": round(float(np.mean(copied)), 6) if copied else None}

    scored = {m: at_least(m) for m in {cfg.prompts.min_support, *g.min_support_candidates}}
    c_pred, rag = scored[cfg.prompts.min_support]
    rag = {**rag, "by_min_support": [scored[m][1] for m in g.min_support_candidates]}
    lined_at = retrieval.attach(at, found, "day", cfg.prompts.min_support).map(bool)
    logprob = lined_logprob.where(lined_at, bare_logprob)
    return rag, retrieval.choose_hybrid(lambda served: recall_of(*score.hits(served)), c_pred, logprob, at, found,
                                        "day", list(g.hybrid_taus))


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
    llm, tokenizer = model.load(cfg.model, cfg.paths.adapter if g.use_adapter else None, where, cfg.infer.dtype)
    recall = {"triples": cfg.paths.triples, "sequences": cfg.paths.sequences, "test_start": w.test_start,
              "month_start": w.month_start, "horizon_days": g.horizon_days}
    score = Scorer(con, llm, tokenizer, pairs, names, g, recall, g.batch_size[where])
    began = time.perf_counter()
    prompt_texts, outputs, c_pred, scores, logprob = score([[] for _ in range(len(pairs))])
    wall = time.perf_counter() - began
    pairs = pairs.assign(prompt=prompt_texts, output=outputs, c_pred=c_pred, valid=c_pred.notna())
    triples = scores["test_triples"]
    metrics = {**scores, "pairs": len(pairs), "decoding": "free", "adapter": g.use_adapter,
               "held_out": [str(w.test_start), str(w.month_start)]}
    # Not gated, measured: the same pairs with RAG lines retrieved before the held-out days.
    metrics["rag"], metrics["hybrid"] = rag_probe(con, score, pairs, cfg, w, c_pred, logprob)
    failed = verdict(metrics, g)
    metrics.update(passed=not failed, failed_checks=failed, override_reason=g.override_reason,
                   min_exact_match=g.min_exact_match, min_test_recall=g.min_test_recall)
    write_parquet(pairs, cfg.paths.gate_predictions)
    # The verdict and the figures it rests on; bulk_infer reads the verdict and tau from gate.json.
    write_metrics(cfg.paths.metrics, "gate", {
        **{k: metrics[k] for k in ("passed", "exact_match", "test_recall", "failed_checks", "override_reason")},
        "hybrid": {k: metrics["hybrid"][k] for k in ("rule", "tau", "min_logprob")}, "rag": {"test_recall": metrics["rag"]["test_recall"]}}, metrics)
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
