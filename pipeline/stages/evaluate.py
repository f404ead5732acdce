"""evaluate: the paper's offline study (section 3.1) replayed over the days of the month.

Every triple of the month is a user with history (c1, c2) on day t; each strategy serves the
cluster its newest table dated <= t holds for (c1, c2), and hits when that cluster is among the
user's next evaluate.horizon distinct clusters (pipeline/hits.py, the gate's definition too), overall
and per bucket of the pair's support in the retrieval window. Each LLM table stands beside its
no-LLM twin, the same evidence counted and served directly: fixed beside fixed_counts (a count
table of the fine-tune's own days), rag_refreshed beside backoff (the refreshed retrieval). Then
the overlap study, successor drift and cost.
"""
from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from pipeline import counting, db, evidence, hits, kernels, manifest, report, retrieval, timing, verdict
from pipeline.buckets import bucket_of, month_pairs, of_events
from pipeline.data import contract
from pipeline.files import atomic_path, write_metrics
from pipeline.llm import bulk, pool, prompts
from pipeline.llm.cache import AnswerCache, namespace
from pipeline.period import refresh_dates, windows

STRATEGIES = {
    "fixed": "fine-tuned model, no RAG (base table all month)",
    "fixed_counts": "no LLM, the fixed table's twin: a count table of the fine-tune's own sample days served all "
                    "month: the pair's successor (with the last cluster's pooled in, smoothing fitted on the held-out "
                    "days), else the last cluster's top successor, else popular",
    "rag_refreshed": "RAG table refreshed every refresh.every_days",
    "rag_day1": "RAG table of the month's first day, held fixed",
    "hybrid": "RAG table's hybrid column under the rule the gate chose on its held-out days (counts unless another "
              "gained clear of noise there): backoff's count answer; or the LLM's RAG answer; or the retrieved "
              "successor where its window support reaches tau, else the LLM's answer; or the LLM's answer where its "
              "log-probability reaches a threshold, else the count answer",
    "retrieved_top1": "no LLM: the retrieved top-1 successor served directly",
    "backoff": "no LLM, the RAG table's twin: the RAG prompts' evidence served directly: the pair's top retrieved "
               "successor where it has the support the gate fitted, else the top successor of c2 alone over the same "
               "window (or the longer retrieve.fallback_window_days), else popular",
    "popular": "no LLM: the most popular recent cluster that is neither c1 nor c2",
    "train_top1": "no LLM: the pair's most frequent successor in the fine-tune's sample days, else their most "
                  "popular cluster (a lookup of what the fixed table was trained on)",
}
# Each LLM table and its no-LLM twin (the same evidence, counted and served directly).
TWINS = (("fixed", "fixed_counts"), ("rag_refreshed", "backoff"))
# Paired differences (a, b) reported as a - b with their interval, beside each strategy's against fixed.
PAIRED = (*TWINS, ("hybrid", "backoff"), ("hybrid", "fixed_counts"))
# The strategies whose hit rate the headline (metrics/evaluate.json) carries.
HEADLINE = ("fixed", "fixed_counts", "rag_refreshed", "backoff", "hybrid")
# The fixed table's honest comparators: what it was trained on, served as a lookup, and the no-LLM
# strategies it competes with during the month.
COMPARATORS = ("train_top1", "popular", "backoff")


def load_tables(tables: Path, days: list[date], clusters: set[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(base table, all RAG tables stacked with their refresh_date); a table that is not what this
    build wrote there (manifest.check_table) is refused in one line."""
    manifest.check_table(tables / "base.parquet", "base", days[0], clusters)
    base = pd.read_parquet(tables / "base.parquet")
    rag = []
    for d in days:
        path = tables / f"rag-{d}.parquet"
        if not path.exists():
            raise ValueError(f"{path}: missing; the tables do not match refresh dates {[str(x) for x in days]} "
                             "(rerun bulk_infer: dvc repro)")
        manifest.check_table(path, "rag", d, clusters)
        rag.append(pd.read_parquet(path).assign(refresh_date=d))
    return base, pd.concat(rag, ignore_index=True)


def active_dates(events: pd.DataFrame, days: list[date]) -> list[date]:
    """Each event's active refresh date: the newest dated on or before its day."""
    stamps = np.array(days, dtype="datetime64[D]")
    on = np.array(events.day.tolist(), dtype="datetime64[D]")
    if (on < stamps[0]).any():
        raise ValueError(f"events before the first refresh date {days[0]}")
    return [days[i] for i in np.searchsorted(stamps, on, side="right") - 1]


def serve(events: pd.DataFrame, base: pd.DataFrame, rag: pd.DataFrame, popular: dict, found: pd.DataFrame,
          last: pd.DataFrame, days: list[date], lookup: pd.DataFrame, counts: pd.DataFrame,
          min_support: int) -> pd.DataFrame:
    """The cluster each strategy serves to each event, from the newest table dated <= its day.

    retrieved_top1 serves the top successor `found` holds for that date however thin its support:
    the no-LLM baseline does not depend on which lines the prompts carry (prompts.min_support).
    backoff serves the RAG prompts' evidence directly (evidence.answers): the pair's successor where
    it followed the pair at least min_support times, else c2's top successor other than c1 (`last`:
    evidence.last_successors), else popular. train_top1 serves `lookup` (train_lookup) and
    fixed_counts `counts` (counting.count_table), tables of every pair held all month like the base
    table."""
    active = active_dates(events, days)
    keyed = events[["c1", "c2"]].assign(active=active, first=days[0])
    table = rag.set_index(["refresh_date", "c1", "c2"])
    now = table.reindex(pd.MultiIndex.from_frame(keyed[["active", "c1", "c2"]]))
    day1 = table.reindex(pd.MultiIndex.from_frame(keyed[["first", "c1", "c2"]]))
    pairs = pd.MultiIndex.from_frame(keyed[["c1", "c2"]])
    fixed = base.set_index(["c1", "c2"]).reindex(pairs)
    trained = lookup.set_index(["c1", "c2"]).reindex(pairs)
    counted = counts.set_index(["c1", "c2"]).reindex(pairs)
    pop = [retrieval.first_popular(popular.get(d, []), a, b) for d, a, b in zip(active, events.c1, events.c2)]
    retrieved = retrieval.attach(keyed, found, "active")
    top1 = [got[0] if got else p for got, p in zip(retrieved, pop)]
    back = evidence.answers(keyed, "active", found, last, popular, min_support)
    return pd.DataFrame({"fixed": fixed.c_pred.to_numpy(), "fixed_counts": counted.c_pred.to_numpy(),
                         "rag_refreshed": now.c_pred.to_numpy(),
                         "rag_day1": day1.c_pred.to_numpy(), "hybrid": now.hybrid.to_numpy(),
                         "retrieved_top1": top1, "backoff": back, "popular": pop,
                         "train_top1": trained.c_pred.to_numpy()}, index=events.index)


def train_lookup(con, daily: str, w, pairs: pd.DataFrame) -> pd.DataFrame:
    """(c1, c2, c_pred) for every pair of `pairs`: its most frequent successor other than c1 and c2
    in the fine-tune's sample days [train_start, test_start), else the first of those days' most
    popular clusters that is neither (the frequency table the fine-tune's data could teach).
    successors.sql and popular_clusters.sql over that window, dated test_start: ties go to the lower cluster id."""
    span = (w.test_start - w.train_start).days
    top = retrieval.successors(con, daily, [w.test_start], span, 1)
    # Three popular clusters always hold one that is neither c1 nor c2.
    ranked = retrieval.popular(con, daily, [w.test_start], span, 3).popular
    popular = ranked.iloc[0] if len(ranked) else []
    got = retrieval.attach(pairs.assign(day=w.test_start), top, "day")
    c_pred = [line[0] if line else retrieval.first_popular(popular, a, b) for a, b, line in
              zip(pairs.c1, pairs.c2, got)]
    return pd.DataFrame({"c1": pairs.c1.to_numpy(), "c2": pairs.c2.to_numpy(), "c_pred": pd.array(c_pred, dtype="Int32")})


def distinct_answers(served: pd.DataFrame, tables: dict[str, pd.Series]) -> dict:
    """How many distinct clusters each strategy names: over the month's events it serves, and over
    every pair of the tables given (a table that names few clusters explores little)."""
    return {"served": {s: int(served[s].dropna().astype(int).nunique()) for s in served.columns},
            "tables": {name: int(c.dropna().nunique()) for name, c in tables.items()}}


def support_buckets(placed: pd.DataFrame, bounds: dict[str, int]) -> pd.Series:
    """Each event's bucket (a key of `bounds`, lower bounds of the pair's window support at its
    active refresh date), from its buckets.of_events row."""
    return pd.Series(bucket_of(placed.support, bounds), index=placed.index)


def by_support(hit: pd.DataFrame, users: pd.Series, bucket: pd.Series, bounds: dict[str, int], reps: int,
               seed: int, paired: tuple[tuple[str, str], ...] = ()) -> dict:
    """Per support bucket: its share of events and every strategy's hit rate with bootstrap CIs
    over the bucket's users (null for a bucket without events)."""
    out = {}
    for name, low in bounds.items():
        inside = (bucket == name).to_numpy()
        out[name] = {"min_support": int(low), "events": int(inside.sum()), "share": share(inside),
                     "strategies": bootstrap(hit[inside], users[inside], reps, seed, paired) if inside.any() else None}
    return out


def bootstrap(hit: pd.DataFrame, users: pd.Series, reps: int, seed: int,
              paired: tuple[tuple[str, str], ...] = ()) -> dict:
    """Per strategy: hit rate and its difference to fixed, each with a 95% CI over users resampled;
    for each (a, b) of `paired`, a's entry also holds `diff_vs_<b>` and its CI, from the same resamples."""
    per_user = hit.groupby(users.to_numpy()).sum()
    n = hit.groupby(users.to_numpy()).size().to_numpy()
    h = {s: per_user[s].to_numpy() for s in hit.columns}
    rng = np.random.default_rng(seed)
    rates = {s: [] for s in h}
    for start in range(0, reps, 50):
        idx = rng.integers(0, len(n), size=(min(50, reps - start), len(n)))
        total = n[idx].sum(axis=1)
        for s in h:
            rates[s].append(h[s][idx].sum(axis=1) / total)
    rates = {s: np.concatenate(v) for s, v in rates.items()}
    out = {}
    for s in h:
        diff = rates[s] - rates["fixed"]
        out[s] = {"hit_rate": round(float(h[s].sum() / n.sum()), 6),
                  "hit_rate_ci": [round(float(x), 6) for x in np.percentile(rates[s], [2.5, 97.5])],
                  "diff_vs_fixed": round(float((h[s].sum() - h["fixed"].sum()) / n.sum()), 6),
                  "diff_ci": [round(float(x), 6) for x in np.percentile(diff, [2.5, 97.5])]}
    for a, b in paired:
        out[a][f"diff_vs_{b}"] = round(float((h[a].sum() - h[b].sum()) / n.sum()), 6)
        out[a][f"diff_vs_{b}_ci"] = [round(float(x), 6) for x in np.percentile(rates[a] - rates[b], [2.5, 97.5])]
    return out


def departures(served: pd.DataFrame, hit: pd.DataFrame) -> dict:
    """Where the refreshed RAG table serves something other than the retrieved successor: how often,
    and how each of the two does on exactly those events."""
    apart = (served.rag_refreshed.astype("Int64") != served.retrieved_top1.astype("Int64")).fillna(True).astype(bool)
    return {"share": share(apart), "rag_hit_rate": share(hit.rag_refreshed[apart]),
            "retrieved_hit_rate": share(hit.retrieved_top1[apart])}


def share(flags) -> float | None:
    """The share of true flags (missing values count as false); None when there are none."""
    flags = pd.Series(flags, dtype="boolean").fillna(False)
    return round(float(flags.mean()), 6) if len(flags) else None


def overlap(base: pd.DataFrame, rag: pd.DataFrame, repeats: tuple[list[str], list[str]],
            names: dict[int, str]) -> dict:
    """How RAG changes the answers (paper section 3.1: "only 7.8 % of the RAG-generated outputs were
    identical to those produced without RAG, compared to a 37.5 % overlap when using repeated prompts
    without RAG"). Each share is over the answers it concerns, with their count: the (pair, refresh
    date) answers of the RAG tables where both the RAG and the no-RAG answer are the model's own
    (served llm), split by whether the RAG prompt carried evidence (the pair's retrieved line, or
    under prompts.evidence=backoff its last cluster's). Only lined answers were generated with RAG,
    the paper's case; an unlined prompt is the base prompt (plus the popular line when
    prompts.popular_n is on), so it is identical by construction otherwise. Also the share of all
    RAG table prompts carrying evidence, and a pair line of its own."""
    evidence_of = rag.retrieved.where(rag.retrieved.map(len) > 0, rag["last"])
    rag = rag.assign(evidence=evidence_of)
    merged = rag.merge(base[["c1", "c2", "c_pred", "served"]], on=["c1", "c2"], suffixes=("", "_base"))
    both = merged[(merged.served == "llm") & (merged.served_base == "llm")]
    has_line = (both.evidence.map(len) > 0).to_numpy()
    identical = (both.c_pred == both.c_pred_base).to_numpy(dtype=bool)
    copied = (both.c_pred == both.evidence.str[0]).fillna(False).to_numpy(dtype=bool)
    first, second = repeats
    known = set(names.values())
    return {"rag_prompts_with_evidence": share(rag.evidence.map(len) > 0),
            "rag_prompts_with_pair_line": share(rag.retrieved.map(len) > 0),
            "rag_identical_to_base": share(identical[has_line]), "rag_copies_retrieved": share(copied[has_line]),
            "rag_differs_from_both": share(~copied[has_line] & ~identical[has_line]),
            "lined_answers": int(has_line.sum()),
            "rag_identical_to_base_by_date": {str(d): share(identical[has_line & (both.refresh_date == d).to_numpy()])
                                              for d in sorted(set(both.refresh_date))},
            "unlined_identical_to_base": share(identical[~has_line]), "unlined_answers": int((~has_line).sum()),
            "all_identical_to_base": share(identical), "answers_compared": int(len(both)),
            "base_repeats_identical": share([a == b for a, b in zip(first, second)]),
            "base_repeats_valid": share([a.strip() in known for a in first + second]),
            "repeat_prompts": len(first)}


def topk_overlap(con, daily: str, days: list[date], window_days: int, ks: list[int]) -> pd.DataFrame:
    """Per refresh date and k: share of pairs whose top-k successor set equals the first date's
    (successor drift within the month, the plot topk_overlap.csv; count's drift metric is month over month)."""
    out = pd.DataFrame({"refresh_date": [str(d) for d in days]})
    for k in ks:
        found = retrieval.successors(con, daily, days, window_days, int(k), "frequency")
        lines = found[["refresh_date", "c1", "c2", "retrieved"]].itertuples(index=False)
        sets = {(d.date(), a, b): frozenset(r) for d, a, b, r in lines}
        first = {(a, b): s for (d, a, b), s in sets.items() if d == days[0]}
        rates = []
        for d in days:
            pairs = [(p, s) for p, s in first.items() if (d, *p) in sets]
            rates.append(round(float(np.mean([sets[(d, *p)] == s for p, s in pairs])), 6) if pairs else None)
        out[f"top{k}"] = rates
    return out


def repeat_sample(texts: list[str], pairs: int | None, seed: int) -> list[str]:
    """A seeded sample of `pairs` of the base prompts, in their order (all of them when None)."""
    if pairs is None or pairs >= len(texts):
        return texts
    return [texts[i] for i in np.sort(np.random.default_rng(seed).choice(len(texts), size=pairs, replace=False))]


def repeat_answers(cfg: DictConfig, names: dict[int, str], texts: list[str]) -> tuple[list[str], list[str]]:
    """The prompts decoded twice with seeded sampling; cached like bulk_infer's answers, and the
    model is loaded only when one is missing."""
    e, inf = cfg.evaluate, cfg.bulk_infer
    where = kernels.device(cfg.device, "evaluate")
    settings = bulk.Settings(False, inf.max_new_tokens, inf.batch_size[where], e.repeat_temperature)
    caches = [AnswerCache(cfg.paths.infer_cache, namespace(
        cfg.model, cfg.paths.adapter, names, inf.dtype, where, decoding="sample",
        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, seed=e.seed, repeat=repeat))
        for repeat in (1, 2)]
    found = [cache.load() for cache in caches]
    if any(t not in answers for answers in found for t in texts):
        decoder = pool.Decoder.of(cfg.model, cfg.paths.adapter, where, inf.dtype, names, settings, bulk.scored_answers)
        with pool.decoding(decoder, cfg) as decoding:  # one model load (or pool) for both passes
            for repeat, cache, answers in zip((1, 2), caches, found):
                missing = sorted(t for t in texts if t not in answers)
                seed = {t: int(hashlib.sha256(f"{e.seed}:{repeat}:{t}".encode()).hexdigest()[:15], 16) for t in missing}
                answers.update(decoding.fill(cache, missing, inf.shard_size[where], seeds=seed, label=f"repeat {repeat}"))
    return [found[0][t][0] for t in texts], [found[1][t][0] for t in texts]


def cost(metrics: Path, cfg: DictConfig, newest: str) -> dict:
    """The last fine-tune against one RAG refresh, from the stages' own metrics: the fine-tune's
    samples and samples seen as metrics/finetune.json defines them, its tokens over the samples seen."""
    ft = json.loads((metrics / "finetune.json").read_text())
    if "samples_seen" not in ft:
        raise ValueError(f"{metrics / 'finetune.json'}: key 'samples_seen' is missing (written by an older "
                         "finetune); rerun the finetune stage (dvc repro)")
    bi = json.loads((metrics / "bulk_infer.json").read_text())
    refresh = json.loads((metrics / "bulk_infer" / "detail.json").read_text())["per_table"][newest]
    return {"finetune": {"samples": ft["samples"], "samples_seen": ft["samples_seen"], "steps": ft["steps"],
                         "tokens": round(ft["samples_seen"] * ft["tokens_per_sample"]), "every": "month"},
            "refresh": {"table": newest, "prompts": refresh["new_prompts"], "prompts_total": refresh["prompts"],
                        "tokens_est": round(refresh["new_prompts"] * bi["tokens_per_prompt"]),
                        "every": f"{cfg.refresh.every_days} days"}}


def note_refresh_estimate(metrics: Path, prompts: int) -> None:
    """One RAG refresh's seconds at bulk_infer's last decoding rate on this machine: a run record
    (metrics/timing/wall_times.md sets it against the fine-tune's), never in the report."""
    rate = timing.read(metrics, "bulk_infer").get("prompts_per_s")
    timing.note(refresh_est_s=round(prompts / rate) if rate else None, refresh_est_prompts_per_s=rate)


def fitted(table: Path) -> dict:
    """The settings the gate fitted on its held-out days, as a RAG table's manifest records them
    (its gate verdict's "fitted"); a table from before they were recorded is one line."""
    recorded = json.loads(manifest.read(table).get("gate") or "{}").get("fitted")
    if recorded is None or any(k not in recorded for k in verdict.FITTED):
        raise ValueError(f"{table}: its manifest records no fitted settings (built under an older gate); "
                         "rerun the gate and bulk_infer stages (dvc repro)")
    return recorded


def count_twin(con, daily: str, w, pairs: pd.DataFrame, prior: float) -> pd.DataFrame:
    """The fixed table's twin: counting.count_table over the fine-tune's sample days
    [train_start, test_start) for every pair of `pairs`, smoothed by `prior` (fitted by the gate)."""
    return counting.count_table(counting.training_rows(con, daily, w), pairs, prior)


def table_hybrid_rule(table: Path) -> dict:
    """The hybrid rule a RAG table was built under, from its manifest, checked as
    retrieval.hybrid_rule checks the gate's; a table from before the rule was recorded is one line
    saying to rebuild it."""
    recorded = manifest.read(table).get("hybrid")
    if recorded is None:
        raise ValueError(f"{table}: its manifest records no hybrid rule (built by an older bulk_infer); "
                         "rerun the bulk_infer stage (dvc repro)")
    return retrieval.hybrid_rule(json.loads(recorded), f"{table} manifest")


def headline(m: dict) -> dict:
    """What `dvc metrics show` and `diff` compare across experiments, a dozen figures at most (the
    rest, per strategy, bucket and date, is in the detail): the hit rates of the fixed and RAG
    tables, their no-LLM twins and hybrid; the intervals of each LLM table against its twin and of
    RAG refreshed against fixed (each difference is the gap between their hit rates, paired over
    the same resampled users); and the share of RAG prompts that carry evidence."""
    s = m["strategies"]

    def ci(a: str, b: str) -> dict:
        low, high = s[a]["diff_ci"] if b == "fixed" else s[a][f"diff_vs_{b}_ci"]
        return {"ci_low": low, "ci_high": high}

    return {"hit_rate": {name: s[name]["hit_rate"] for name in HEADLINE},
            **{f"{a}_vs_{b}": ci(a, b) for a, b in (*TWINS, ("rag_refreshed", "fixed"))},
            "rag_prompts": {"with_evidence": m["overlap"]["rag_prompts_with_evidence"]}}


def month_events(cfg: DictConfig, con, w) -> pd.DataFrame:
    """The evaluated month's events (triples) with each user's next distinct clusters (hits.events)."""
    events = hits.events(con, cfg.paths.triples, cfg.paths.sequences, w.month_start, w.month_end, cfg.evaluate.horizon)
    if events.empty:
        raise ValueError(f"{cfg.paths.triples}: no triples in {cfg.period.month}; nothing to evaluate")
    return events


def twins(strategies: dict, buckets: dict) -> list[dict]:
    """Per LLM table and its no-LLM twin, overall and per support bucket: the difference (table -
    twin) with its CI and the verdict it allows: "above" (the LLM beats counting), "below", or
    "includes 0" (no difference this data can detect)."""
    def verdict(x: dict, a: str, b: str) -> dict:
        low, high = x[a][f"diff_vs_{b}_ci"]
        return {"diff": x[a][f"diff_vs_{b}"], "diff_ci": [low, high],
                "verdict": "above" if low > 0 else "below" if high < 0 else "includes 0"}

    return [{"llm": a, "twin": b, "all": verdict(strategies, a, b),
             "by_support": {name: verdict(k["strategies"], a, b) if k["strategies"] else None
                            for name, k in buckets.items()}} for a, b in TWINS]


def rates_by_support(buckets: dict) -> pd.DataFrame:
    """Each support bucket's hit rate per strategy: the DVC plot's rows."""
    return pd.DataFrame([{"bucket": name, "min_support": b["min_support"], "share": b["share"],
                          **{s: b["strategies"][s]["hit_rate"] if b["strategies"] else None for s in STRATEGIES}}
                         for name, b in buckets.items()])


def write_outputs(cfg: DictConfig, metrics: dict, by_day: pd.DataFrame, topk: pd.DataFrame,
                  support_rates: pd.DataFrame) -> None:
    """The plots' series and figures, the metrics and the report."""
    plots = Path(cfg.paths.plots)
    plots.mkdir(parents=True, exist_ok=True)
    for frame, name in ((by_day, "hit_rate_by_day.csv"), (topk, "topk_overlap.csv"),
                        (support_rates, "hit_rate_by_support.csv")):
        with atomic_path(plots / name) as tmp:
            frame.to_csv(tmp, index=False)
    report.figures(by_day, topk, plots)
    report.support_figure(metrics, list(STRATEGIES), plots)
    write_metrics(cfg.paths.metrics, "evaluate", headline(metrics), metrics)
    with atomic_path(cfg.paths.report) as tmp:
        tmp.write_text(report.markdown(cfg, metrics, by_day, topk, STRATEGIES, COMPARATORS), encoding="utf-8")


def run(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.torch_threads)
    e, w, days = cfg.evaluate, windows(cfg), refresh_dates(cfg)
    con = db.connect(cfg)
    events = month_events(cfg, con, w)
    base, rag = load_tables(Path(cfg.paths.tables), days, set(contract.descriptions(cfg.data.path)))
    popular = retrieval.read_popular(cfg.paths.popular)
    found = pd.read_parquet(cfg.paths.retrieved)
    daily = cfg.paths.daily_counts
    last = pd.read_parquet(cfg.paths.last_successors)
    lookup = train_lookup(con, daily, w, base[["c1", "c2"]])
    settings = fitted(Path(cfg.paths.tables) / f"rag-{days[0]}.parquet")
    counts = count_twin(con, daily, w, base[["c1", "c2"]], settings["count_prior"])
    served = serve(events, base, rag, popular, found, last, days, lookup, counts, int(settings["min_support"]))
    hit = hits.hits(served, events.future)
    by_day = hit.groupby(events.day.astype(str)).mean().round(6).rename_axis("day").reset_index()
    strategies = bootstrap(hit, events.user_id, e.bootstrap, e.seed, PAIRED)
    bounds = {str(k): int(v) for k, v in e.support_buckets.items()}
    placed = of_events(events, month_pairs(con, cfg))
    buckets = by_support(hit, events.user_id, support_buckets(placed, bounds), bounds, e.bootstrap, e.seed, PAIRED)

    names = contract.descriptions(cfg.data.path)
    base_prompts = [prompts.for_pair(names, a, b) for a, b in zip(base.c1, base.c2)]
    repeated = repeat_sample(base_prompts, e.repeat_pairs, e.seed)
    study = overlap(base, rag, repeat_answers(cfg, names, repeated), names)
    topk = topk_overlap(con, daily, days, cfg.retrieve.window_days, list(e.drift_k))
    spend = cost(Path(cfg.paths.metrics), cfg, f"rag-{days[-1]}")

    metrics = {"horizon": e.horizon, "events": len(events), "users": int(events.user_id.nunique()),
               "days": int(events.day.nunique()), "strategies": strategies, "by_support": buckets,
               "distinct_clusters": distinct_answers(served, {"fixed": base.c_pred, "fixed_counts": counts.c_pred,
                                                              "train_top1": lookup.c_pred}),
               "fitted": settings, "twins": twins(strategies, buckets),
               "unseen_in_training": share(~placed.seen_in_training),
               "hybrid": table_hybrid_rule(Path(cfg.paths.tables) / f"rag-{days[0]}.parquet"),
               "rag_departs_from_retrieved": departures(served, hit), "overlap": study,
               "drift_last_date": {c: topk[c].iloc[-1] for c in topk.columns if c != "refresh_date"}, "cost": spend}
    write_outputs(cfg, metrics, by_day, topk, rates_by_support(buckets))
    note_refresh_estimate(Path(cfg.paths.metrics), spend["refresh"]["prompts"])
    s = strategies["rag_refreshed"]
    print(f"evaluate: {len(events)} events; hit rate fixed {strategies['fixed']['hit_rate']:.4f}, RAG refreshed "
          f"{s['hit_rate']:.4f} (diff {s['diff_vs_fixed']:+.4f}, 95% CI {s['diff_ci'][0]:+.4f}..{s['diff_ci'][1]:+.4f})")
