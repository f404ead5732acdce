"""Count tables of the fine-tune's own days: the labels it is taught (top_labels) and the fixed
table's no-LLM twin (count_table), the same counts served directly to every pair."""
from __future__ import annotations

import pandas as pd

from pipeline import db


def training_rows(con, daily, w, min_support: int = 1) -> pd.DataFrame:
    """(day, c1, c2, c_next, n) of the fine-tune's sample days [w.train_start, w.test_start) for
    pairs with at least min_support triples there, sorted (training_rows.sql): what the fine-tune
    curates from, and with min_support 1 every count the count twin counts."""
    return con.execute(db.sql("training_rows"), {"daily": str(daily), "train_start": w.train_start,
                                                  "test_start": w.test_start, "min_support": min_support}).df()


def shares(totals: pd.DataFrame) -> pd.Series:
    """Each successor's share of all triples (c_next -> share): how popular it was."""
    share = totals.groupby("c_next")["n"].sum()
    return share / share.sum()


def last_cluster_q(totals: pd.DataFrame, share: pd.Series, prior: float) -> pd.Series:
    """Q(n | c2) indexed (c2, c_next): (count(., c2, n) + prior * share(n)) / (count(., c2, .) + prior)
    over each last cluster's observed successors and the three most shared ones, which hold its top
    three under Q (kept sparse: clusters x clusters would not fit at scale)."""
    after = totals.groupby(["c2", "c_next"])["n"].sum()
    spread = pd.MultiIndex.from_product([after.index.unique("c2"), share.nlargest(3, keep="first").index])
    after = after.reindex(after.index.union(spread), fill_value=0)
    return (after + prior * share.reindex(after.index.get_level_values("c_next")).to_numpy()) / (
        after.groupby("c2").transform("sum") + prior)


def top_labels(rows: pd.DataFrame, prior: float) -> pd.DataFrame:
    """(c1, c2, c_next) per pair of `rows`: the successor n other than c1 and c2 with the highest
    count(c1, c2, n) + prior * Q(n | c2), ties to the lower id, where Q(n | c2) is what every
    pair ending in c2 was followed by, itself given `prior` pseudo-counts of all pairs' successors:
    (count(., c2, n) + prior * share(n)) / (count(., c2, .) + prior). prior 0 is the pair's own
    most frequent successor. Why pool: most pairs have a handful of triples, so their own top is
    mostly noise; what their last cluster leads to is seen far more often and drifts no faster
    (docs/finetune-budget.md measures both against held-out days)."""
    totals = rows.groupby(["c1", "c2", "c_next"], sort=True)["n"].sum().reset_index()
    if prior:
        share = shares(totals)
        # Q where it can matter, kept sparse (clusters x clusters would not fit at scale): each last
        # cluster's observed successors and the three most shared ones, which hold its top three
        # under Q; a pair's best successor is one it was followed by or one of those three (three
        # always hold one that is neither c1 nor c2).
        q = last_cluster_q(totals, share, prior)
        ranked = q.rename("q").reset_index().sort_values(["c2", "q", "c_next"], ascending=[True, False, True])
        pairs = totals[["c1", "c2"]].drop_duplicates()
        pooled = pairs.merge(ranked.groupby("c2").head(3)[["c2", "c_next"]], on="c2")
        totals = totals.merge(pooled, on=["c1", "c2", "c_next"], how="outer").fillna({"n": 0})
        totals["n"] = totals["n"] + prior * q.reindex(pd.MultiIndex.from_frame(totals[["c2", "c_next"]])).to_numpy()
    totals = totals[(totals.c_next != totals.c1) & (totals.c_next != totals.c2)]
    top = totals.sort_values(["c1", "c2", "n", "c_next"], ascending=[True, True, False, True], kind="stable")
    return top.drop_duplicates(["c1", "c2"]).reset_index(drop=True)[["c1", "c2", "c_next"]]


def count_table(rows: pd.DataFrame, pairs: pd.DataFrame, prior: float) -> pd.DataFrame:
    """(c1, c2, c_pred) for every pair of `pairs`, never c1 or c2: a back-off chain over the counts
    of `rows` (day, c1, c2, c_next, n). A pair with a triple there gets top_labels(rows, prior) (its
    count plus `prior` pseudo-counts of Q(n | c2)); else its last cluster's top successor under Q,
    where c2 led anywhere; else the most popular successor (NA only when `rows` is empty)."""
    totals = rows.groupby(["c1", "c2", "c_next"], sort=True)["n"].sum().reset_index()
    own = {(a, b): n for a, b, n in top_labels(rows, prior).itertuples(index=False)}
    popular, ranked = [], {}
    if len(totals):
        share = shares(totals)
        popular = share.rename("s").reset_index().sort_values(["s", "c_next"], ascending=[False, True]).c_next.tolist()
        # The last cluster's level: only successors it actually led to, or Q's pseudo-counts of
        # popular ones (prior > 0); with prior 0 a c2 with nothing left backs off to popular.
        q = last_cluster_q(totals, share, prior).rename("q").reset_index()
        q = q[q.q > 0].sort_values(["c2", "q", "c_next"], ascending=[True, False, True])
        ranked = q.groupby("c2").c_next.agg(list).to_dict()

    def served(c1: int, c2: int):
        if (c1, c2) in own:
            return own[(c1, c2)]
        return next((int(c) for c in [*ranked.get(c2, []), *popular] if c != c1 and c != c2), None)

    return pd.DataFrame({"c1": pairs.c1.to_numpy(), "c2": pairs.c2.to_numpy(),
                         "c_pred": pd.array([served(a, b) for a, b in zip(pairs.c1, pairs.c2)], dtype="Int32")})
