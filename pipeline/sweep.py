"""Sweeps over settings as DVC experiments, and one table of their results.

    python -m pipeline.sweep -m retrieve.method=frequency,trend retrieve.top_n=1,3
        a Hydra multirun: one `dvc exp run -S ...` per combination, in turn, in this workspace
        (the same as `dvc exp run --queue -S 'retrieve.method=frequency,trend' -S
        'retrieve.top_n=1,3'` followed by `dvc queue start`, without the queue's temporary copies).
        Each job composes conf/ with its overrides alone: a workspace composed with other settings
        (`python -m pipeline.config data=movielens`) is refused until the sweep names them too
        (`python -m pipeline.sweep -m data=movielens retrieve.top_n=1,3`); a failed job stops the sweep;
    python -m pipeline.sweep summary
        one row per experiment of the current commit: the swept settings and evaluate's headline.

Either way DVC reruns only the stages whose inputs a setting touches: a retrieval sweep reruns
retrieve, bulk_infer and evaluate, never extract, count or the fine-tune.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

from omegaconf import OmegaConf

from pipeline import ROOT, cli, config
from pipeline.audit import flatten
from pipeline.config import CONF_DIR

COLUMNS = {"hit_rate.fixed": "fixed", "hit_rate.fixed_counts": "fixed_counts",
           "hit_rate.rag_refreshed": "rag_refreshed",
           "rag_refreshed_vs_fixed.ci_low": "rag_refreshed - fixed: 95% CI low",
           "rag_refreshed_vs_fixed.ci_high": "CI high", "hit_rate.hybrid": "hybrid", "hit_rate.backoff": "backoff"}


def run_one(overrides: list[str]) -> None:
    """One experiment: `dvc exp run` with the job's overrides (DVC's Hydra integration recomposes params.yaml)."""
    args = [sys.executable, "-m", "dvc", "exp", "run"]
    for override in overrides:
        args += ["-S", override]
    print("$ " + " ".join(args[1:]), flush=True)
    done = subprocess.run(args, cwd=ROOT)
    if done.returncode:
        raise ValueError(f"`dvc exp run {' '.join(args[5:])}` exited with status {done.returncode} (its output is above)")


def jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The jobs of a sweep: one per combination of the comma-separated values (as Hydra's basic
    sweeper expands them), each a list of plain overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [o for o in parsed if o.is_sweep_override()]
    if swept and not multirun:
        raise ValueError(f"{swept[0].input_line}: several values make a sweep; add -m")
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*choices)]


def _leaves(cfg) -> dict:
    return {k: json.dumps(v, sort_keys=True, default=str)
            for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()}


def check_carried(job: list[str]) -> None:
    """Refuse a job that would drop a setting of the workspace: `dvc exp run -S` composes conf/ with
    the job's overrides alone, so what params.yaml was composed with (data=, model=, any key=value)
    must be among them."""
    workspace = _leaves(config.load())
    default, composed = _leaves(config.compose()), _leaves(config.compose(job))
    lost = [k for k in sorted(workspace) if workspace[k] != composed.get(k) and composed.get(k) == default.get(k)]
    if lost:
        key = lost[0]
        raise ValueError(f"params.yaml has {key}={workspace[key]}, which the job `{' '.join(job) or '(no overrides)'}` "
                         f"would reset to {composed.get(key)}: give the sweep the overrides params.yaml was composed "
                         f"with too{_hint(key)}")


def _hint(key: str) -> str:
    """`(data=NAME)` when the lost key belongs to a config group whose option params.yaml matches."""
    group = key.split(".")[0]
    if not (CONF_DIR / group).is_dir():
        return ""
    workspace = OmegaConf.to_container(config.load()[group], resolve=True)
    from hydra.errors import HydraException

    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        try:
            found = OmegaConf.to_container(config.compose([f"{group}={option}"])[group], resolve=True)
        except (ValueError, HydraException):  # an option that needs more settings (data=contract: data.path)
            continue
        if found == workspace:
            return f" (here {group}={option})"
    return ""


def _record(rev: dict) -> tuple[str, dict, dict]:
    data = rev.get("data") or {}
    params = flatten((data.get("params", {}).get("params.yaml") or {}).get("data") or {})
    metrics = flatten((data.get("metrics", {}).get("metrics/evaluate.json") or {}).get("data") or {})
    return rev.get("name") or rev["rev"][:7], params, metrics


def summary() -> list[dict]:
    """Per experiment of the current commit (`dvc exp show`): the params that vary across them and
    evaluate's headline metrics."""
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode:
        raise ValueError(f"`dvc exp show` exited with status {done.returncode}: {done.stderr.strip()}")
    shown = done.stdout
    commits = [r for r in json.loads(shown) if r["rev"] != "workspace"]
    exps = [_record(rev) for commit in commits[:1] for group in (commit.get("experiments") or [])
            for rev in group.get("revs", [])]
    if not exps:
        return []
    varying = sorted(k for k in exps[0][1] if not k.startswith("paths.")
                     and len({json.dumps(p.get(k), sort_keys=True) for _, p, _ in exps}) > 1)
    return [{"experiment": name, **{k: p.get(k) for k in varying},
             **{label: m.get(key) for key, label in COLUMNS.items()}} for name, p, m in exps]


def print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        print("no experiments on this commit: run a sweep first")
        return
    table = Table(title="sweep: evaluate headline per experiment")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    Console().print(table)


def main(argv: list[str]) -> None:
    ap = cli.parser("python -m pipeline.sweep", __doc__)
    ap.add_argument("-m", "--multirun", action="store_true",
                    help="one experiment per combination of the comma-separated values (Hydra multirun)")
    ap.add_argument("overrides", nargs="+", metavar="key=v1,v2 | summary",
                    help="settings to sweep, as Hydra overrides; or `summary` for the table of results")
    args = ap.parse_args(argv)
    with cli.user_errors("sweep"):
        if args.overrides == ["summary"]:
            print_summary(summary())
            return
        planned = jobs(args.overrides, args.multirun)
        for job in planned:
            check_carried(job)
        for n, job in enumerate(planned, 1):
            try:
                run_one(job)
            except ValueError as exc:
                raise ValueError(f"job {n} of {len(planned)} failed: {exc}; the {n - 1} before it are experiments "
                                 "(python -m pipeline.sweep summary)") from None


if __name__ == "__main__":
    main(sys.argv[1:])
