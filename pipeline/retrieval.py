"""Retrieval over daily counts: what followed a pair recently (paper section 2.3)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from pipeline import db


def successors(con: duckdb.DuckDBPyConnection, daily: Path | str, days: list[date], window_days: int,
               top_n: int, method: str = "frequency") -> pd.DataFrame:
    """(refresh_date, c1, c2, retrieved, support, pair_support): per day and pair, the top_n
    successors of [day - window_days, day), how often each followed the pair there, and how often
    anything did.

    Pairs with no triple in the window are absent. method: frequency or trend (successors.sql)."""
    found = db.over_dates(con, "successors", days, {"daily": str(daily), "window_days": window_days,
                                                "top_n": top_n, "method": method})
    found["retrieved"] = found["retrieved"].map(list)
    found["support"] = found["support"].map(list)
    return found


def popular(con: duckdb.DuckDBPyConnection, daily: Path | str, days: list[date], window_days: int,
            top_n: int) -> pd.DataFrame:
    """(refresh_date, popular): per day, the top_n clusters most often reached in [day - window_days, day)."""
    found = db.over_dates(con, "popular_clusters", days, {"daily": str(daily), "window_days": window_days, "top_n": top_n})
    found["popular"] = found["popular"].map(list)
    return found


def read_popular(path: str | Path) -> dict[date, list[int]]:
    """The retrieve stage's popular clusters (paths.popular): each refresh date's, most popular first."""
    return {d.date(): list(p) for d, p in pd.read_parquet(path).itertuples(index=False)}


def first_popular(clusters, c1: int, c2: int) -> int | None:
    """The first of `clusters` (most popular first) that is neither c1 nor c2, the no-LLM fallback
    of every table and baseline; None when there is none."""
    return next((int(c) for c in clusters if c != c1 and c != c2), None)


def attach(frame: pd.DataFrame, found: pd.DataFrame, day_column: str, min_support: int = 1) -> pd.Series:
    """Each row's retrieved successors with at least min_support in the window (empty when none),
    matched on (c1, c2, day)."""
    keyed = frame[["c1", "c2", day_column]].rename(columns={day_column: "refresh_date"})
    keyed["refresh_date"] = pd.to_datetime(keyed["refresh_date"])
    found = found.assign(refresh_date=pd.to_datetime(found["refresh_date"]))
    merged = keyed.merge(found, on=["c1", "c2", "refresh_date"], how="left")
    # Lists come back as arrays from Parquet and as NaN where nothing matched.
    return pd.Series([[int(c) for c, n in zip(r, s) if n >= min_support] if hasattr(r, "__len__") else []
                      for r, s in zip(merged["retrieved"], merged["support"])], index=frame.index)


def hybrid(answers, trusted) -> pd.arrays.IntegerArray:
    """Hybrid serving: the top retrieved successor where one has enough support (`trusted`: the
    rows' attach(..., min_support=tau)), else the LLM's answer (NA stays NA)."""
    return pd.array([got[0] if got else answer for got, answer in zip(trusted, answers)], dtype="Int32")


def confident(answers, logprob, counts) -> Callable[[float], pd.arrays.IntegerArray]:
    """Hybrid serving by the model's confidence: for a threshold, the LLM's answer where its
    log-probability reaches it, else the count answer (`counts`: the rows' backoff.answers), else the
    answer; an invalid answer (NA) is never confident."""
    rows = list(zip(answers, logprob, counts))
    return lambda min_logprob: pd.array([c if pd.notna(c) and (pd.isna(a) or not lp >= min_logprob) else a
                                         for a, lp, c in rows], dtype="Int32")


# The hybrid rules, as the gate records its choice (metrics/gate.json "hybrid") and bulk_infer
# applies it, with the parameter each one takes: "counts" (the count answer everywhere, no LLM)
# is the default the gate leaves only for a rule whose held-out gain is clear of noise.
RULES = {"counts": None, "model": None, "support": "tau", "confidence": "min_logprob"}
DEFAULT_RULE = "counts"
PARAMETERS = ("tau", "min_logprob")
CONFIDENCE_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def serve_hybrid(rule: dict, answers, logprob, frame: pd.DataFrame, found: pd.DataFrame,
                 day_column: str, counts) -> pd.arrays.IntegerArray:
    """The hybrid column under a chosen rule, pair by pair the LLM's answer, the count answer
    (`counts`: the rows' backoff.answers) or the retrieved successor: {"rule": "counts"} serves the count
    answer; {"rule": "model"} the LLM's; {"rule": "support", "tau": t} the top retrieved successor
    where its window support reaches t, else the LLM's; {"rule": "confidence", "min_logprob": m}
    the LLM's where its log-probability reaches m, else the count answer."""
    if rule["rule"] == "counts":
        return pd.array(list(counts), dtype="Int32")
    if rule["rule"] == "model":
        return pd.array(list(answers), dtype="Int32")
    if rule["rule"] == "support":
        return hybrid(answers, attach(frame, found, day_column, rule["tau"]))
    return confident(answers, logprob, counts)(rule["min_logprob"])


def choose_hybrid(score: Callable[[pd.Series], np.ndarray], guard: Callable[[list[dict], dict], dict],
                  answers: pd.Series, logprob: pd.Series, frame: pd.DataFrame, found: pd.DataFrame,
                  day_column: str, taus: list[int], counts) -> dict:
    """The hybrid rule chosen on held-out days: the count answer everywhere (DEFAULT_RULE), the
    model's answer everywhere, window support at each of `taus`, or the model's confidence at each
    decile of the held-out answers' log-probabilities (thresholds from the held-out answers
    themselves, never from the month the tables serve). score(served) gives the per-event hits of
    served clusters (indexed like `answers`) on the held-out days; guard(candidates, hits by name)
    picks one (hits.guarded with DEFAULT_RULE as the default: so the hybrid is never worse than
    counting on the held-out days, and uses the model only on a gain clear of noise). frame,
    found, day_column as attach's; counts: the rows' backoff.answers.

    Returns {"rule", "tau", "min_logprob", "candidates"}; a parameter the rule lacks is None."""
    served = {name: serve_hybrid({"rule": name}, answers, logprob, frame, found, day_column, counts)
              for name in ("counts", "model")}
    candidates = [{"name": name, "rule": name} for name in served]
    for t in taus:
        name = f"support:{int(t)}"
        candidates.append({"name": name, "rule": "support", "tau": int(t)})
        served[name] = hybrid(answers, attach(frame, found, day_column, int(t)))
    by_confidence = confident(answers, logprob, counts)
    valid = pd.Series(logprob, dtype="float64")[pd.Series(answers).notna().to_numpy()].dropna()
    thresholds = sorted({round(float(x), 6) for x in np.quantile(valid, CONFIDENCE_QUANTILES)}) if len(valid) else []
    for m in thresholds:
        name = f"confidence:{m}"
        candidates.append({"name": name, "rule": "confidence", "min_logprob": m})
        served[name] = by_confidence(m)
    hit = {name: score(pd.Series(s, index=answers.index)) for name, s in served.items()}
    pick = guard(candidates, hit)
    for c in candidates:
        c["test_recall"] = c.pop("hit_rate")
    return {"rule": pick["rule"], **{p: pick.get(p) for p in PARAMETERS}, "candidates": candidates}


def hybrid_rule(recorded: dict, where: str) -> dict:
    """The hybrid rule a gate verdict records ({"rule", "tau", "min_logprob"}), checked; a verdict
    with a tau and no rule (written before the gate chose between rules) is the support rule.
    A missing or mistyped field is one line naming `where` and the key."""
    if not isinstance(recorded, dict):
        raise ValueError(f"{where}: key 'hybrid' is not an object; rerun the gate stage (dvc repro)")
    rule = recorded.get("rule", "support")
    if rule not in RULES:
        raise ValueError(f"{where}: key 'hybrid.rule' is {rule!r}, not one of {sorted(RULES)}; rerun the gate stage")
    field = RULES[rule]
    value = recorded.get(field) if field else None
    kind = int if rule == "support" else (int, float)
    if field and (isinstance(value, bool) or not isinstance(value, kind)):
        raise ValueError(f"{where}: key 'hybrid.{field}' is missing or not a number (the {rule} rule needs it); "
                         "rerun the gate stage (dvc repro)")
    return {"rule": rule, **{p: (value if p == field else None) for p in PARAMETERS}}
