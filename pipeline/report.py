"""reports/evaluate.md and its figures: the evaluate stage's numbers in words a reader follows
without the code."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline.files import atomic_path


def figures(by_day: pd.DataFrame, topk: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for frame, x, name, title, ylabel in (
            (by_day, "day", "hit_rate_by_day.png", "Hit rate by day", "hit rate"),
            (topk, "refresh_date", "topk_overlap.png", "Top-k successor sets equal to the first refresh date's",
             "exact match rate")):
        fig, ax = plt.subplots(figsize=(8, 4))
        for column in frame.columns.drop(x):
            ax.plot(pd.to_datetime(frame[x]), frame[column], marker="o", markersize=3, label=column)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
        plt.close(fig)


def support_figure(m: dict, strategies: list[str], out: Path) -> None:
    """Grouped bars: each strategy's hit rate with its 95 % CI, per support bucket and overall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [(f"{name}\n{_pct(b['share'])} of events", b["strategies"]) for name, b in buckets_of(m).items()
              if b["strategies"]] + [("all", m["strategies"])]
    width = 0.8 / len(strategies)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, name in enumerate(strategies):
        rate = np.array([g[name]["hit_rate"] for _, g in groups])
        low, high = np.array([g[name]["hit_rate_ci"] for _, g in groups]).T
        x = np.arange(len(groups)) + (i - (len(strategies) - 1) / 2) * width
        ax.bar(x, rate, width, label=name)
        # The interval drawn as it is, about its own middle: a percentile interval need not hold the
        # point estimate (a few resamples, a tiny bucket), and yerr about the bar would go negative.
        ax.errorbar(x, (low + high) / 2, yerr=(high - low) / 2, fmt="none", ecolor="black", capsize=2, linewidth=0.8)
    ax.set_xticks(np.arange(len(groups)), [label for label, _ in groups], fontsize=8)
    ax.set_title("Hit rate by the pair's support in the retrieval window (95 % CI)")
    ax.set_ylabel("hit rate")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    with atomic_path(out / "hit_rate_by_support.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def buckets_of(m: dict) -> dict:
    """The support buckets in ascending order (metrics JSON keeps keys sorted by name)."""
    return dict(sorted(m["by_support"].items(), key=lambda kv: kv[1]["min_support"]))


def bucket_label(name: str, low: int, following: int | None) -> str:
    """cold (0), tail (1-4), head (>= 30): a bucket with its support range."""
    span = f">= {low}" if following is None else str(low) if following == low + 1 else f"{low}-{following - 1}"
    return f"{name} ({span})"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def hybrid_rule(rule: dict) -> str:
    """The hybrid rule the gate chose, in words."""
    if rule["rule"] == "counts":
        return ("back-off's count answer everywhere (no rule that uses the model gained clear of noise on the "
                "held-out days)")
    if rule["rule"] == "model":
        return "the RAG table's answer everywhere"
    if rule["rule"] == "support":
        return f"the retrieved successor where its window support reaches tau = {rule['tau']}, else the RAG table's answer"
    return (f"the RAG table's answer where the model's log-probability of it reaches {rule['min_logprob']}, else "
            "back-off's count answer")


def findings(s: dict, apart: dict, study: dict, topk: pd.DataFrame, every: int, by_support: dict,
             rule: dict) -> list[str]:
    rag, day1 = s["rag_refreshed"], s["rag_day1"]
    lo, hi = rag["diff_ci"]
    verdict = ("the interval excludes zero: refreshing the RAG table helps" if lo > 0 else
               "the interval excludes zero: refreshing the RAG table hurts" if hi < 0 else
               "the interval includes zero: no difference this data can detect")
    out = [f"RAG refreshed every {every} days against the fixed table: {_pts(rag['diff_vs_fixed'])} points of hit rate "
           f"(95 % CI {_pts(lo)} to {_pts(hi)}); {verdict}.",
           f"Refreshing against building the RAG table once on day 1: {_pts(rag['hit_rate'] - day1['hit_rate'])} points "
           f"(day-1 table against fixed: {_pts(day1['diff_vs_fixed'])}, CI {_pts(day1['diff_ci'][0])} to "
           f"{_pts(day1['diff_ci'][1])}).",
           f"Without any LLM, serving the retrieved top-1 successor scores {_pct(s['retrieved_top1']['hit_rate'])} and "
           f"global popularity {_pct(s['popular']['hit_rate'])}, against {_pct(rag['hit_rate'])} for the refreshed "
           "RAG table.",
           f"The refreshed RAG table serves something other than the retrieved successor for {_pct(apart['share'])} "
           f"of events; there its own pick hits {_pct(apart['rag_hit_rate'])} where the retrieved successor "
           f"would have hit {_pct(apart['retrieved_hit_rate'])}. "
           + ("On this data, departing from the retrieval costs hits." if (apart['rag_hit_rate'] or 0) < (apart['retrieved_hit_rate'] or 0) else
              "On this data, departing from the retrieval gains hits."),
           f"RAG changes the answers: of the {study['lined_answers']:,} answers whose prompt carried a retrieved line, "
           f"{_pct(study['rag_identical_to_base'])} equal the no-RAG answer (paper: 7.8 %), while two sampled repeats "
           f"of the no-RAG prompt agree {_pct(study['base_repeats_identical'])} of the time (paper: 37.5 %). On those "
           f"answers the model copies the retrieved cluster in {_pct(study['rag_copies_retrieved'])} and gives a "
           f"cluster that is neither the retrieved one nor its no-RAG answer in {_pct(study['rag_differs_from_both'])}."]
    backoff, hyb = s["backoff"], s["hybrid"]
    out.append(f"The back-off frequency baseline (no LLM) scores {_pct(backoff['hit_rate'])}; the hybrid "
               f"({hybrid_rule(rule)}) {_pct(hyb['hit_rate'])}: {_pts(hyb['diff_vs_backoff'])} points against "
               f"back-off (95 % CI {_pts(hyb['diff_vs_backoff_ci'][0])} to {_pts(hyb['diff_vs_backoff_ci'][1])}).")
    for name, b in by_support.items():
        if b["strategies"]:
            x = b["strategies"]
            top = max(v["hit_rate"] for v in x.values())
            best = ", ".join(k for k, v in x.items() if v["hit_rate"] == top)
            out.append(f"On {name} pairs ({_pct(b['share'])} of events) the best: {best} ({_pct(top)}); "
                       f"the refreshed RAG table scores {_pct(x['rag_refreshed']['hit_rate'])} "
                       f"and back-off {_pct(x['backoff']['hit_rate'])}.")
    last = topk.iloc[-1]
    out.append("Successors drift: by " + str(last.refresh_date) + ", the share of pairs whose top-k successor set "
               "is unchanged since the first refresh date is " +
               ", ".join(f"{_pct(last[c])} for k={c[3:]}" for c in topk.columns if c != "refresh_date") + ".")
    return out


def comparators(m: dict, labels: list[str], against: tuple[str, ...]) -> list[str]:
    """The fixed table against the no-LLM strategies that are its fair bar, per support bucket and
    overall, with fixed minus the first of them (its training days as a lookup) and that CI."""
    first = against[0]
    rows = [("all", m["strategies"])] + [(label, b["strategies"]) for label, b in zip(labels, buckets_of(m).values())]
    head = ["fixed", *against]
    lines = ["| pairs | " + " | ".join(head) + f" | fixed - {first}, points (95 % CI) |",
             "| --- | " + " | ".join("---:" for _ in head) + " | ---: |"]
    for label, x in rows:
        if not x:
            continue
        d = x[first]  # diff_vs_fixed is first - fixed: negated, with its interval turned round
        lines.append(f"| {label} | " + " | ".join(_pct(x[s]["hit_rate"]) for s in head) +
                     f" | {_pts(-d['diff_vs_fixed'])} ({_pts(-d['diff_ci'][1])} to {_pts(-d['diff_ci'][0])}) |")
    return lines


VERDICTS = {"above": "the LLM beats counting", "below": "counting beats the LLM",
            "includes 0": "no difference this data can detect"}


def against_twins(m: dict, labels: list[str], strategies: dict[str, str]) -> list[str]:
    """The first table: each LLM table beside its no-LLM twin, overall and per support bucket,
    with the paired difference's CI and what it says in words."""
    twins = m["twins"]
    head = "| pairs | " + " | ".join(f"{t['llm']} | {t['twin']} | {t['llm']} - {t['twin']}, points (95 % CI)"
                                      for t in twins) + " |"
    lines = ["## Does the LLM beat counting its own evidence?", "",
             "Each LLM table beside its twin: the same evidence counted and served without a model. " + " ".join(
                 f"`{t['twin']}`: {strategies[t['twin']]}." for t in twins) +
             f" The count twin's smoothing ({m['fitted']['count_prior']:g} pseudo-counts) was fitted on the gate's "
             "held-out days, before the month. Hit rate by pair support, the difference paired over the same "
             "resampled users:", "", head, "| --- |" + " ---: | ---: | --- |" * len(twins)]
    s = m["strategies"]
    rows = [("all", s, [t["all"] for t in twins])] + [
        (label, b["strategies"], [t["by_support"][name] for t in twins])
        for label, (name, b) in zip(labels, buckets_of(m).items())]
    for label, x, verdicts in rows:
        if not x:
            continue
        lines.append(f"| {label} | " + " | ".join(
            f"{_pct(x[t['llm']]['hit_rate'])} | {_pct(x[t['twin']]['hit_rate'])} | {_pts(v['diff'])} "
            f"({_pts(v['diff_ci'][0])} to {_pts(v['diff_ci'][1])}): {VERDICTS[v['verdict']]}"
            for t, v in zip(twins, verdicts)) + " |")
    lines += ["", *(f"- `{t['llm']}` against `{t['twin']}`: {VERDICTS[t['all']['verdict']]} overall" + (
        "; " + "; ".join(f"{VERDICTS[v['verdict']]} on {name} pairs" for name, v in t["by_support"].items()
                         if v and v["verdict"] != t["all"]["verdict"]) if any(
            v and v["verdict"] != t["all"]["verdict"] for v in t["by_support"].values()) else ", and in every bucket")
        + "." for t in twins)]
    best = max((t["twin"] for t in twins), key=lambda n: s[n]["hit_rate"])
    hyb = s["hybrid"]
    lines.append(f"- The hybrid serves {hybrid_rule(m['hybrid'])}: {_pct(hyb['hit_rate'])} against the best twin, "
                 f"`{best}`, at {_pct(s[best]['hit_rate'])}: {_pts(hyb[f'diff_vs_{best}'])} points (95 % CI "
                 f"{_pts(hyb[f'diff_vs_{best}_ci'][0])} to {_pts(hyb[f'diff_vs_{best}_ci'][1])}).")
    return lines


def figure(cfg: DictConfig, name: str, alt: str) -> str:
    """A figure in paths.plots, linked relative to the report's own folder (where a reader opens it)."""
    return f"![{alt}]({Path(os.path.relpath(Path(cfg.paths.plots) / name, Path(cfg.paths.report).parent)).as_posix()})"


def curation(ft: DictConfig) -> str:
    """The fine-tune's samples in words, from the settings that chose them."""
    lined = (f"lined samples every {ft.line_every_days} days for every pair with evidence then" if ft.line_every_days
             else "no lined samples")
    extra = f", RAG lines on {ft.rag_share:.0%} of the line-free samples" if ft.rag_share else ""
    pooled = f" pooling {ft.label_prior:g} pseudo-counts of the last cluster's successors" if (
        ft.labels == "top" and ft.label_prior) else ""
    return f"`{ft.labels}` labels{pooled}, {lined}{extra}"


def setup(cfg: DictConfig, m: dict) -> list[str]:
    r = cfg.retrieve
    return [
        f"# Offline evaluation: {cfg.data.name}, {cfg.period.month}",
        "",
        "Written by the `evaluate` stage (`dvc repro`); every figure below comes from this run's outputs.",
        "",
        "## Setup",
        "",
        f"- Data: `{cfg.data.name}` (`{cfg.data.path}`); month `{cfg.period.month}`: {m['events']:,} evaluation "
        f"events (triples) from {m['users']:,} users over {m['days']} days.",
        f"- Model: `{cfg.model.name}` with the month's LoRA adapter (fine-tuned on the "
        f"{cfg.finetune.train_days} days before the month: {curation(cfg.finetune)}); "
        f"tables decoded `{cfg.bulk_infer.decoding}`.",
        f"- Retrieval: `{r.method}`, top {r.top_n} successor(s) of each pair over the {r.window_days} days before "
        f"each refresh date; refresh every {cfg.refresh.every_days} days from the 1st.",
        f"- Serving: on day t each strategy serves its newest table dated on or before t. A served cluster **hits** "
        f"when it is among the user's next {m['horizon']} distinct clusters other than c1 and c2 (the actual next "
        "cluster included). Confidence intervals: 95 %, bootstrap over users "
        f"({cfg.evaluate.bootstrap} resamples).",
    ]


def by_strategy(cfg: DictConfig, m: dict, strategies: dict[str, str]) -> list[str]:
    lines = ["## Hit rate by strategy", "",
             "| strategy | serves | hit rate (95 % CI) | vs fixed, points (95 % CI) |",
             "| --- | --- | ---: | ---: |"]
    for name, what in strategies.items():
        x = m["strategies"][name]
        vs = "" if name == "fixed" else f"{_pts(x['diff_vs_fixed'])} ({_pts(x['diff_ci'][0])} to {_pts(x['diff_ci'][1])})"
        lines.append(f"| {name} | {what} | {_pct(x['hit_rate'])} ({_pct(x['hit_rate_ci'][0])} to "
                     f"{_pct(x['hit_rate_ci'][1])}) | {vs} |")
    return lines + ["", figure(cfg, "hit_rate_by_day.png", "hit rate by day")]


def by_pair_support(cfg: DictConfig, m: dict, strategies: dict[str, str], labels: list[str]) -> list[str]:
    buckets = buckets_of(m)
    lines = ["## Hit rate by pair support", "",
             f"Each event's pair (c1, c2) by its support: the triples of (c1, c2) to any successor in the "
             f"{cfg.retrieve.window_days} days before the event's refresh date. The hybrid serves "
             f"{hybrid_rule(m['hybrid'])} (the rule chosen on the gate's held-out days, before the month). "
             f"{_pct(m['unseen_in_training'])} of events have a pair that never occurs in the fine-tune's sample "
             "days. Hit rate (95 % CI over the bucket's users):", "",
             "| strategy | " + " | ".join(labels) + " |", "| --- | " + " | ".join("---:" for _ in labels) + " |",
             "| share of events | " + " | ".join(f"{_pct(b['share'])} ({b['events']:,})" for b in buckets.values()) + " |"]
    for name in strategies:
        lines.append(f"| {name} | " + " | ".join(
            "" if not b["strategies"] else f"{_pct(b['strategies'][name]['hit_rate'])} "
            f"({_pct(b['strategies'][name]['hit_rate_ci'][0])} to {_pct(b['strategies'][name]['hit_rate_ci'][1])})"
            for b in buckets.values()) + " |")
    return lines


def against_comparators(cfg: DictConfig, m: dict, labels: list[str], against: tuple[str, ...]) -> list[str]:
    distinct = m["distinct_clusters"]
    return ["## The fixed table against its no-LLM comparators", "",
            f"`{against[0]}` is the lookup the fine-tune's own sample days give (each pair's most frequent "
            "successor there, else their most popular cluster): what the fixed table could have learned. "
            "Hit rate by pair support:", "", *comparators(m, labels, against), "",
            "Distinct clusters named over every pair: " + ", ".join(
                f"{k} {v:,}" for k, v in distinct["tables"].items()) + "; over the month's events served: " +
            ", ".join(f"{k} {v:,}" for k, v in distinct["served"].items()) + ".", "",
            figure(cfg, "hit_rate_by_support.png", "hit rate by support")]


def rag_study(cfg: DictConfig, study: dict) -> list[str]:
    lined = f"lined, {study['lined_answers']:,}"
    return ["## How RAG changes the answers", "",
            f"Evidence in the prompt (prompts.evidence = {cfg.prompts.evidence}): "
            f"{_pct(study['rag_prompts_with_evidence'])} of the RAG tables' prompts carry some, "
            f"{_pct(study['rag_prompts_with_pair_line'])} a line of the pair's own (a successor that followed it at "
            f"least prompts.min_support = {cfg.prompts.min_support} times)"
            + ("; the others with evidence show what followed the pair's last cluster" if
               cfg.prompts.evidence == "backoff" else "") + ". "
            "Each share below is over the answers it concerns: the RAG tables' (pair, refresh date) answers where both "
            "the RAG and the no-RAG answer are the model's own, split by whether the RAG prompt carried evidence. "
            "Only lined answers were generated with RAG, as the paper's were; an unlined prompt is the no-RAG prompt"
            + (" plus the popular line" if cfg.prompts.popular_n else "") + ".", "",
            "| measure | over (answers) | this run | paper |", "| --- | ---: | ---: | ---: |",
            f"| RAG answer identical to the no-RAG answer (same pair) | {lined} | "
            f"{_pct(study['rag_identical_to_base'])} | 7.8 % |",
            f"| RAG answer equal to the evidence's cluster | {lined} | {_pct(study['rag_copies_retrieved'])} | |",
            f"| RAG answer neither the evidence's nor the no-RAG cluster | {lined} | "
            f"{_pct(study['rag_differs_from_both'])} | |",
            f"| answer identical to the no-RAG answer | unlined, {study['unlined_answers']:,} | "
            f"{_pct(study['unlined_identical_to_base'])} | |",
            f"| answer identical to the no-RAG answer | all, {study['answers_compared']:,} | "
            f"{_pct(study['all_identical_to_base'])} | |",
            f"| two repeats of the no-RAG prompt identical (sampling, T={cfg.evaluate.repeat_temperature}; "
            f"{_pct(study['base_repeats_valid'])} of sampled answers valid) | prompts, {study['repeat_prompts']:,} | "
            f"{_pct(study['base_repeats_identical'])} | 37.5 % |"]


def successor_drift(cfg: DictConfig, topk: pd.DataFrame) -> list[str]:
    lines = ["## Successor drift (paper Figure 3b)", "",
             "Share of pairs whose top-k most frequent successors (as a set) equal those of the first refresh date.",
             "", "| refresh date | " + " | ".join(f"top-{x[3:]}" for x in topk.columns[1:]) + " |",
             "| --- | " + " | ".join("---:" for _ in topk.columns[1:]) + " |"]
    for row in topk.itertuples(index=False):
        lines.append(f"| {row[0]} | " + " | ".join(_pct(v) if v is not None else "" for v in row[1:]) + " |")
    return lines + ["", figure(cfg, "topk_overlap.png", "top-k overlap")]


def cost_and_agility(c: dict) -> list[str]:
    ft, rf = c["finetune"], c["refresh"]
    return ["## Cost and agility", "",
            "| | last fine-tune | one RAG refresh |", "| --- | ---: | ---: |",
            f"| how often | every {ft['every']} | every {rf['every']} |",
            f"| work | {ft['samples']:,} samples seen ({ft['steps']} steps) | {rf['prompts']:,} new prompts of "
            f"{rf['prompts_total']:,} (the rest are earlier tables' prompts, answered from the cache) |",
            f"| tokens | {ft['tokens']:,} (forward and backward) | {rf['tokens_est']:,} prompt tokens (forward only) |"]


def markdown(cfg: DictConfig, m: dict, by_day: pd.DataFrame, topk: pd.DataFrame, strategies: dict[str, str],
             against: tuple[str, ...]) -> str:
    """The report: computed content only (wall times are the run record metrics/timing/wall_times.md)."""
    buckets = buckets_of(m)
    lows = [b["min_support"] for b in buckets.values()]
    labels = [bucket_label(name, low, nxt) for name, low, nxt in zip(buckets, lows, lows[1:] + [None])]
    sections = [setup(cfg, m), against_twins(m, labels, strategies), by_strategy(cfg, m, strategies),
                by_pair_support(cfg, m, strategies, labels),
                against_comparators(cfg, m, labels, against), rag_study(cfg, m["overlap"]),
                successor_drift(cfg, topk), cost_and_agility(m["cost"]),
                ["## Findings", ""] + [f"- {f}" for f in findings(
                    m["strategies"], m["rag_departs_from_retrieved"], m["overlap"], topk, cfg.refresh.every_days,
                    buckets, m["hybrid"])]]
    return "\n\n".join("\n".join(s) for s in sections) + "\n"
