"""Sweeps over settings as DVC experiments, and one table of their results.

    python -m pipeline.sweep -m retrieval.method=frequency,trend retrieval.top_n=1,3
        a Hydra multirun: one `dvc exp run -S ...` per combination, in turn, in this workspace
        (the same as `dvc exp run --queue -S 'retrieval.method=frequency,trend' -S
        'retrieval.top_n=1,3'` followed by `dvc queue start`, without the queue's temporary copies);
    python -m pipeline.sweep summary
        one row per experiment of the current commit: the swept settings and evaluate's headline.

Either way DVC reruns only the stages whose inputs a setting touches: a retrieval sweep reruns
retrieve, bulk_infer and evaluate, never extract, count or the fine-tune.
"""
from __future__ import annotations

import json
import subprocess
import sys

from pipeline import cli
from pipeline.audit import flatten
from pipeline.config import CONF_DIR, ROOT

COLUMNS = {"hit_rate.fixed": "fixed", "hit_rate.rag_refreshed": "rag_refreshed",
           "rag_refreshed_vs_fixed.ci_low": "rag_refreshed - fixed: 95% CI low",
           "rag_refreshed_vs_fixed.ci_high": "CI high", "hit_rate.hybrid": "hybrid",
           "hit_rate.retrieved_top1": "retrieved_top1", "hit_rate.backoff": "backoff", "rag_copies_retrieved": "copies"}


def run_one(overrides: list[str]) -> None:
    """One experiment: `dvc exp run` with the job's overrides (DVC's Hydra integration recomposes params.yaml)."""
    args = [sys.executable, "-m", "dvc", "exp", "run"]
    for override in overrides:
        args += ["-S", override]
    print("$ " + " ".join(args[1:]), flush=True)
    subprocess.run(args, cwd=ROOT, check=True)


def _record(rev: dict) -> tuple[str, dict, dict]:
    data = rev.get("data") or {}
    params = flatten((data.get("params", {}).get("params.yaml") or {}).get("data") or {})
    metrics = flatten((data.get("metrics", {}).get("metrics/evaluate.json") or {}).get("data") or {})
    return rev.get("name") or rev["rev"][:7], params, metrics


def summary() -> list[dict]:
    """Per experiment of the current commit (`dvc exp show`): the params that vary across them and
    evaluate's headline metrics."""
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout
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
        import hydra
        from hydra.core.hydra_config import HydraConfig

        @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
        def job(cfg) -> None:
            run_one(list(HydraConfig.get().overrides.task))

        # hydra.main expands the sweep from the command line it finds in sys.argv: hand it the
        # arguments argparse has checked, and nothing else.
        sys.argv = [sys.argv[0], *(["-m"] if args.multirun else []), *args.overrides]
        job()


if __name__ == "__main__":
    main(sys.argv[1:])
