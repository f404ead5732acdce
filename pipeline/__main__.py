"""python -m pipeline <stage>: run one DVC stage with params.yaml."""
from __future__ import annotations

import importlib
import os
import sys
import time

STAGES = ("extract", "count", "finetune", "gate", "retrieve", "bulk_infer", "evaluate")


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in STAGES:
        raise SystemExit(f"usage: python -m pipeline {{{'|'.join(STAGES)}}}")
    from pipeline import config, kernels, timing

    began = time.perf_counter()
    try:
        cfg = config.load()
        kernels.pin(cfg.kernels)  # before the stage imports torch
        importlib.import_module(f"pipeline.stages.{argv[0]}").run(cfg)
    except (ValueError, FileNotFoundError) as exc:
        # The stages raise these for a user's mistake (bad data, settings, missing input), each
        # message naming file, key and value: one line, unless PIPELINE_DEBUG asks for the traceback.
        if os.environ.get("PIPELINE_DEBUG"):
            raise
        raise SystemExit(f"{argv[0]}: {exc}") from None
    wall = time.perf_counter() - began
    timing.write(cfg.paths.metrics, argv[0], wall)
    print(f"{argv[0]}: done in {wall:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
