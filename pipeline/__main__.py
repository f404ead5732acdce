"""python -m pipeline STAGE: run one DVC stage with params.yaml (dvc repro runs them in order).

Stages, in pipeline order:
  extract      events -> deduped sequences and (c1, c2, c_next) triples
  count        daily pair counts and the month-over-month drift metric
  finetune     LoRA fine-tune of the base model on (c1, c2) -> c_next
  gate         the fine-tune's accuracy check before any table is built
  retrieve     each pair's recent successors and the popular clusters, per refresh date
  bulk_infer   the transition tables: one answer per cluster pair, base and per refresh date
  evaluate     hit rates of the strategies on held-out users, reports/evaluate.md
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import time

from pipeline import cli

# Pipeline order: dvc.yaml's, and the rows of the wall-time record (timing.write).
STAGES = ("extract", "count", "finetune", "gate", "retrieve", "bulk_infer", "evaluate")


def main(argv: list[str]) -> None:
    ap = cli.parser("python -m pipeline", __doc__)
    ap.add_argument("stage", choices=STAGES, metavar="STAGE", help="one of: " + ", ".join(STAGES))
    stage = ap.parse_args(argv).stage
    cli.quiet_third_party()
    began = time.perf_counter()
    with cli.user_errors(stage), cli.terminated():  # Ctrl-C or SIGTERM while the libraries load too
        import duckdb

        from pipeline import config, kernels, lineage, timing

        cfg = config.load()
        # Inputs missing, or built from other data or settings than this run records, stop it here;
        # so do outputs it may not replace, before any work.
        lineage.check(cfg, stage)
        lineage.check_outputs(cfg, stage)
        kernels.pin(cfg.kernels)  # before the stage imports torch
        since = time.time_ns()
        try:
            importlib.import_module(f"pipeline.stages.{stage}").run(cfg)
        except duckdb.OutOfMemoryException as exc:
            raise ValueError(f"duckdb.memory_limit={cfg.duckdb.memory_limit} is too small for this data (DuckDB: "
                             f"{str(exc).splitlines()[0]}); raise it, e.g. python -m pipeline.config "
                             "duckdb.memory_limit=4GB") from None
        except BaseException:
            # Each output lands whole or not at all: the ones written before the stop are this stage's.
            with contextlib.suppress(OSError, ValueError):
                lineage.record(cfg, stage, since_ns=since)
            raise
        lineage.record(cfg, stage)
    wall = time.perf_counter() - began
    timing.write(cfg.paths.metrics, stage, wall, STAGES)
    print(f"{stage}: done in {wall:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
