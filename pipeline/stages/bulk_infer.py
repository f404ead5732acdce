"""bulk_infer: decode every ordered pair c1 != c2 into transition tables (paper section 2.3).

One base table (no RAG) and one RAG table per refresh date; a RAG prompt carries the pair's
evidence on its date (pipeline/evidence.py, prompts.evidence): its successor retrieved at least
min_support times (the gate's choice on its held-out days, prompts.min_support unless another gains
clear of noise), else (backoff) its last cluster's recent successor; a pair with neither
gets the base prompt (plus the popular line when prompts.popular_n is on). Each RAG table's hybrid
column serves under the gate's hybrid rule (retrieval.serve_hybrid): pair by pair the LLM's answer,
the count answer (evidence.answers: the same evidence served directly) or the retrieved successor.
Answers come from the content-addressed cache when an identical prompt
was decoded before under the same model, adapter and settings; the rest are decoded in shards of
sorted prompts, each stored as soon as it is done, so a killed run resumes where it stopped and
computes exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from pipeline import evidence, kernels, manifest, retrieval, timing, verdict
from pipeline.data import contract
from pipeline.files import atomic_path, refuse_foreign, tree_sha256, write_metrics
from pipeline.llm import bulk, model, pool, prompts
from pipeline.llm.cache import AnswerCache, namespace
from pipeline.period import refresh_dates

# What bulk_infer writes into paths.tables: what `dvc checkout` restores there without the mark.
TABLE_FILES = ("*.parquet",)


def table_rows(names: dict[int, str], found: pd.DataFrame, days: list, min_support: int,
               popular_line: dict | None = None, last: pd.DataFrame | None = None,
               mode: str = "instance") -> pd.DataFrame:
    """(table, refresh_date, c1, c2, retrieved, last, prompt): every ordered pair, base table first;
    a RAG prompt's lines are evidence.lines' (mode, min_support; `last`: the last clusters'
    successors, needed under backoff), and every RAG table prompt carries popular_line[day] (the
    clusters popular on its date; none when absent)."""
    clusters = sorted(names)
    pairs = pd.DataFrame([(a, b) for a in clusters for b in clusters if a != b], columns=["c1", "c2"])
    none = [[] for _ in range(len(pairs))]
    frames = [pairs.assign(table="base", refresh_date=days[0], retrieved=none, last=none)]
    for day in days:
        got, back = evidence.lines(pairs.assign(day=day), "day", found, last, min_support, mode)
        frames.append(pairs.assign(table=f"rag-{day}", refresh_date=day, retrieved=got, last=back))
    rows = pd.concat(frames, ignore_index=True)
    line = {} if popular_line is None else popular_line
    rows["prompt"] = [prompts.for_pair(names, a, b, got, line.get(day, []) if table != "base" else [], back)
                      for a, b, got, back, day, table in zip(rows.c1, rows.c2, rows.retrieved, rows.last,
                                                             rows.refresh_date, rows.table)]
    return rows


def answer_table(rows: pd.DataFrame, answers: list[tuple[str, float]], names: dict[int, str],
                 popular: dict) -> pd.DataFrame:
    """A table's rows from the model's answers: each pair's c_pred is the model's answer when it
    names a novel cluster, else the evidence its prompt showed (the retrieved successor, else the
    last cluster's), else the first popular cluster of that date that is neither c1 nor c2; the
    column `served` says which of these it came from (llm, retrieved, last, popular, none).
    `answers`: each row's (model output, its log-probability), kept as `output` and `logprob`;
    `last` is kept beside `retrieved` so that each row's prompt can be rebuilt from its table."""
    outputs = [a for a, _ in answers]
    parsed = prompts.parse(outputs, names)
    c_pred, served, valid = [], [], []
    for c1, c2, got, back, day, p in zip(rows.c1, rows.c2, rows.retrieved, rows["last"], rows.refresh_date, parsed):
        ok = p is not None and p not in (c1, c2)
        fallback = retrieval.first_popular(popular.get(day, []), c1, c2)
        pick, how = ((p, "llm") if ok else (got[0], "retrieved") if got else (back[0], "last") if back else
                     (fallback, "popular") if fallback is not None else (None, "none"))
        c_pred.append(pick)
        served.append(how)
        valid.append(ok)
    c_pred = pd.array(c_pred, dtype="Int32")
    return pd.DataFrame({
        "c1": rows.c1.astype("int32").to_numpy(), "c2": rows.c2.astype("int32").to_numpy(), "c_pred": c_pred,
        "description": [names[c] if pd.notna(c) else None for c in c_pred], "valid": valid, "served": served,
        "retrieved": [[int(r) for r in got] for got in rows.retrieved],
        "last": [[int(r) for r in got] for got in rows["last"]], "output": outputs,
        "logprob": [float(x) for _, x in answers]})


def retrieved(cfg: DictConfig, days: list) -> pd.DataFrame:
    """The retrieve stage's successors, refused when they were built for other refresh dates."""
    found = pd.read_parquet(cfg.paths.retrieved)
    stale = set(found.refresh_date.dt.date) - set(days)
    if stale:
        raise ValueError(f"{cfg.paths.retrieved}: refresh dates {sorted(map(str, stale))} are not in this run's "
                         f"{[str(d) for d in days]}; rerun the retrieve stage (dvc repro)")
    return found


class Forecast(AnswerCache):
    """The answer cache that, once the first decoded shard is stored, says in one line how many
    prompts this run decodes and about how long that takes at the first shard's rate (the workers
    start a shard each, so the first back stands for ray.workers of them). Nothing is said when
    one shard was the whole decode. The progress bar and the per-shard resume are cache.fill's."""

    began: float | None = None

    def arm(self, total: int, workers: int) -> None:
        """Start the clock: the next add is the first shard of `total` prompts."""
        self.total, self.workers, self.began = total, workers, time.perf_counter()

    def add(self, prompts: list[str], answers: list[tuple[str, float]]) -> None:
        super().add(prompts, answers)
        if self.began is not None:
            rate = len(prompts) * self.workers / max(time.perf_counter() - self.began, 1e-9)
            self.began = None
            if len(prompts) < self.total:
                print(estimate_line(self.total, rate), flush=True)


def estimate_line(total: int, rate: float) -> str:
    """'bulk_infer: 999,000 prompts to decode; about 3 h 11 min at 87 prompts/s (first shard)'."""
    s = round(total / rate)
    about = f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min" if s >= 60 else f"{s} s"
    return f"bulk_infer: {total:,} prompts to decode; about {about} at {rate:,.0f} prompts/s (first shard)"


def decode(cfg: DictConfig, rows: pd.DataFrame, names: dict[int, str], where: str):
    """Every distinct prompt's (answer, log-probability), from the answer cache or decoded now;
    also the namespace the answers are cached under, the prompts decoded, the decode seconds and
    the tokenizer."""
    inf = cfg.bulk_infer
    tokenizer = model.load_tokenizer(cfg.model)
    trie = bulk.Trie.build(tokenizer, names)
    settings = bulk.Settings(constrained=inf.decoding == "constrained", max_new_tokens=inf.max_new_tokens,
                             batch_size=inf.batch_size[where])
    if settings.constrained and settings.max_new_tokens < trie.tokens_needed():
        raise ValueError(f"params.yaml: bulk_infer.max_new_tokens={settings.max_new_tokens}: constrained decoding needs at "
                         f"least {trie.tokens_needed()} to complete every answer of these clusters' descriptions")
    ns = namespace(cfg.model, cfg.paths.adapter, names, inf.dtype, where, decoding=inf.decoding,
                   max_new_tokens=settings.max_new_tokens)
    cache = Forecast(cfg.paths.infer_cache, ns)
    answers = cache.load()
    unique = rows.drop_duplicates("prompt")
    missing = sorted(p for p in unique.prompt if p not in answers)
    exclude = {p: (int(a), int(b)) for p, a, b in zip(unique.prompt, unique.c1, unique.c2)}
    began = time.perf_counter()
    if missing:  # a build whose answers are all cached never loads the model
        decoder = pool.Decoder.of(cfg.model, cfg.paths.adapter, where, inf.dtype, names, settings, bulk.scored_answers)
        with pool.decoding(decoder, cfg) as decoding:  # in process, or on ray.workers Ray actors
            cache.arm(len(missing), cfg.ray.workers)
            answers.update(decoding.fill(cache, missing, inf.shard_size[where], exclude=exclude))
    return answers, ns, missing, time.perf_counter() - began, tokenizer


def lineage_fields(cfg: DictConfig, ns: dict, where: str, gate: dict, rule: dict) -> dict:
    """The manifest every table of this run carries (its strategy, date and rows are added per table)."""
    code, declared = manifest.stage_deps("bulk_infer")
    fields = {**{k: ns[k] for k in ("base_model_hash", "adapter_hash", "template_hash")}, **kernels.lineage(where),
              "dtype": cfg.bulk_infer.dtype, "period": cfg.period.month, "decoding": cfg.bulk_infer.decoding,
              "data_hash": tree_sha256(cfg.data.path), "params": manifest.params(cfg, declared),
              "code_revision": manifest.code_revision(code), "code_hash": manifest.code_hash(code),
              "packages": manifest.packages(), "gate": gate, "hybrid": rule}
    fields["params_hash"] = manifest.sha256_json(fields["params"])
    return fields


def write_tables(cfg: DictConfig, rows: pd.DataFrame, answers: dict, names: dict[int, str], popular: dict,
                 found: pd.DataFrame, last: pd.DataFrame, rule: dict, min_support: int,
                 fields: dict) -> tuple[dict, int]:
    """Every table into paths.tables; (each table's figures, valid rows over all tables). found,
    last: the retrieve stage's pair and last-cluster successors (the hybrid's count answer, with
    pair lines of at least min_support)."""
    # Only what the tables determine goes into tracked outputs: a table's new prompts are those no
    # earlier table of this run holds, whatever the answer cache held when the run began.
    per_table, seen, valid_rows = {}, set(), 0
    with atomic_path(cfg.paths.tables, owns=TABLE_FILES) as out:
        out.mkdir(parents=True)
        for name, part in rows.groupby("table", sort=False):
            table = answer_table(part, [answers[p] for p in part.prompt], names, popular)
            day = part.refresh_date.iloc[0]
            if name != "base":
                at = part.assign(day=day)
                table["hybrid"] = retrieval.serve_hybrid(rule, table.c_pred, table.logprob, at, found, "day",
                                                         evidence.answers(at, "day", found, last, popular,
                                                                          min_support))
            manifest.write_table(table, out / f"{name}.parquet", {
                **fields, "strategy": "base" if name == "base" else "rag", "refresh_date": str(day),
                "rows": len(table)})
            prompts_here = set(part.prompt)
            new = prompts_here - seen
            seen |= prompts_here
            valid_rows += int(table.valid.sum())
            per_table[name] = {"rows": len(table), "prompts": len(prompts_here), "new_prompts": len(new),
                               "valid_share": round(float(table.valid.mean()), 6),
                               "distinct_answers": int(table.c_pred.nunique()),
                               "served": {k: int(v) for k, v in table.served.value_counts().sort_index().items()}}
    return per_table, valid_rows


def run(cfg: DictConfig) -> None:
    refuse_foreign(cfg.paths.tables, TABLE_FILES)  # before any decoding
    torch.set_num_threads(cfg.torch_threads)
    days = refresh_dates(cfg)
    gate, rule = verdict.read(Path(cfg.paths.metrics) / "gate.json")
    found = retrieved(cfg, days)
    last = pd.read_parquet(cfg.paths.last_successors)
    popular = retrieval.read_popular(cfg.paths.popular)
    names = contract.descriptions(cfg.data.path)
    shown = cfg.prompts.popular_n
    min_support = int(gate["fitted"]["min_support"])  # the gate's choice on its held-out days
    rows = table_rows(names, found, days, min_support, {d: p[:shown] for d, p in popular.items()},
                      last, cfg.prompts.evidence)
    where = kernels.device(cfg.device, "bulk_infer")
    answers, ns, missing, decode_s, tokenizer = decode(cfg, rows, names, where)
    per_table, valid_rows = write_tables(cfg, rows, answers, names, popular, found, last, rule, min_support,
                                         lineage_fields(cfg, ns, where, gate, rule))
    unique = rows.prompt.drop_duplicates()
    rate = len(missing) / decode_s if missing else 0.0
    timing.note(decode_s=round(decode_s, 1), cached_at_start=len(unique) - len(missing), decoded=len(missing),
                prompts_per_s=round(rate, 2))
    write_metrics(cfg.paths.metrics, "bulk_infer", {
        "tables": len(per_table), "pairs": int((rows.table == "base").sum()), "unique_prompts": len(unique),
        "tokens_per_prompt": mean_tokens(tokenizer, unique.tolist()),
        "valid_share": round(valid_rows / len(rows), 6), "distinct_answers": collapse(per_table)},
        {"decoding": cfg.bulk_infer.decoding, "per_table": per_table})
    print(f"bulk_infer: {len(per_table)} tables of {per_table['base']['rows']} pairs; decoded {len(missing)} of "
          f"{len(unique)} distinct prompts ({len(unique) - len(missing)} from the cache) in {decode_s:.1f}s, "
          f"{rate:.1f} prompts/s")


def mean_tokens(tokenizer, texts: list[str], chunk: int = 4096) -> float:
    """Mean tokens per prompt, tokenised in chunks (one call per prompt took minutes at 1,000 clusters)."""
    total = sum(len(ids) for lo in range(0, len(texts), chunk)
                for ids in tokenizer(texts[lo:lo + chunk], add_special_tokens=False).input_ids)
    return round(total / len(texts), 2)


def collapse(per_table: dict) -> dict:
    """How many distinct clusters the tables serve over every pair: the base table's, and the
    fewest and most of any RAG table's (few clusters for many pairs: the model collapsed onto them)."""
    rag = [t["distinct_answers"] for name, t in per_table.items() if name != "base"]
    return {"base": per_table["base"]["distinct_answers"], "rag_min": min(rag, default=None),
            "rag_max": max(rag, default=None)}
