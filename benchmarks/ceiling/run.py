"""What a fixed table can reach on a synthetic world: hit rate against distinct clusters named.

    python -m benchmarks.ceiling.run [--label-priors 0 50 200]

Needs a finished `dvc repro` on a synthetic world (tables/base.parquet, work/). Every table
below serves one cluster per pair of the base table, scored as evaluate scores `fixed` (a hit
when the served cluster is among the user's next evaluate.horizon distinct clusters of the month):
- `hidden: ...` tables read the world's hidden successor logits (pipeline.data.synth.World), which
  no strategy can see: the month's own logits (the oracle), the training window's (a perfect
  memory of the fine-tune's days), the part that never drifts (semantic affinity + popularity),
  and that part plus the training window's drifting part shrunk by how much of it survives a
  month (sqrt(1 - monthly_drift)): the best guess a month-old table can make;
- `data: ...` tables are lookups of the training days' counts: train_top1 (evaluate's comparator)
  and the fine-tune's line-free labels (finetune.top_labels) at each label prior, train_top1's
  answer where a pair has too few triples for a label;
- `llm: fixed` is the base table itself.
Why: the drifting world bounds how many distinct clusters a month-old table can name before it
loses hit rate (docs/finetune-budget.md reads it). Quality, not speed: it prints no timings.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from benchmarks import cpu


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ceiling.run", description=__doc__.splitlines()[0])
    ap.add_argument("--label-priors", type=float, nargs="+", default=[0, 50, 200])
    args = ap.parse_args()

    from pipeline import config, db
    from pipeline.data import synth
    from pipeline.period import windows
    from pipeline.stages import evaluate, finetune

    cfg = config.load()
    if cfg.data.synth is None or cfg.data.source is not None:
        raise SystemExit(f"data={cfg.data.name}: the hidden logits exist only for a synthetic world")
    w, con = windows(cfg), db.connect(cfg)
    events = evaluate.month_events(cfg, con, w)
    pairs = pd.read_parquet(cfg.paths.tables + "/base.parquet")
    world = synth.build_world(cfg.data.synth, cfg.data.time_range)
    a, b = pairs.c1.to_numpy(), pairs.c2.to_numpy()
    start = np.datetime64(cfg.data.time_range.start, "D")

    def mean_logits(first, last) -> np.ndarray:  # the world's successor logits over [first, last)
        days = np.arange((np.datetime64(first) - start).astype(int), (np.datetime64(last) - start).astype(int))
        out = sum(np.nan_to_num(world.logits(np.full(len(a), d), a, b), neginf=-1e9) for d in days) / len(days)
        out[np.arange(len(a)), a] = -np.inf  # evaluate never credits c1 or c2
        out[np.arange(len(a)), b] = -np.inf
        return out

    train = mean_logits(w.train_start, w.test_start)
    stable = np.where(np.isneginf(train), -np.inf, world.stable[a, b])
    keep = np.sqrt(1 - cfg.data.synth.monthly_drift)
    with np.errstate(invalid="ignore"):  # -inf - -inf at c1 and c2, which stay excluded
        shrunk = np.where(np.isneginf(train), -np.inf, stable + keep * (train - stable))
    tables = {
        "hidden: the month's own logits (oracle)": mean_logits(w.month_start, w.month_end).argmax(1),
        "hidden: the training window's logits": train.argmax(1),
        "hidden: the part that never drifts": stable.argmax(1),
        f"hidden: that part + {keep:.2f} x the window's drift": shrunk.argmax(1),
        "data: train_top1": evaluate.train_lookup(con, cfg.paths.daily_counts, w, pairs).c_pred.to_numpy(),
    }
    rows = finetune.training_rows(con, cfg.paths.daily_counts, w, cfg.finetune.min_pair_support)
    for prior in args.label_priors:  # pairs without a label (too few triples) serve train_top1's answer
        labels = finetune.top_labels(rows, prior)
        served = pairs[["c1", "c2"]].merge(labels, on=["c1", "c2"], how="left").c_next
        tables[f"data: fine-tune labels, label_prior {prior:g}"] = served.fillna(
            pd.Series(tables["data: train_top1"])).astype(int).to_numpy()
    tables["llm: fixed (tables/base.parquet)"] = pairs.c_pred.to_numpy()

    print(f"CPU: {cpu()} (family {cpu('cpu family')} model {cpu('model')}); data={cfg.data.name}, "
          f"period.month={cfg.period.month}, {len(events):,} events")
    print("| table | hit rate % | distinct clusters |\n| --- | ---: | ---: |")
    for name, pred in tables.items():
        served = events[["c1", "c2"]].merge(pairs[["c1", "c2"]].assign(p=pred), on=["c1", "c2"], how="left").p
        hits = [p in future for p, future in zip(served, events.future)]
        print(f"| {name} | {100 * np.mean(hits):.2f} | {pd.Series(pred).dropna().nunique()} |")


if __name__ == "__main__":
    main()
