"""python -m pipeline.data {synth|movielens} [hydra overrides]: write a dataset in contract form.

The dataset's settings come from conf/data/<name>.yaml plus overrides, e.g.
`python -m pipeline.data synth data.synth.n_events=50000000 data.path=/tmp/big`.
"""
from __future__ import annotations

import sys
import time

from rich.console import Console

from pipeline import config

console = Console(stderr=True)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("synth", "movielens"):
        raise SystemExit("usage: python -m pipeline.data {synth|movielens} [key=value ...]")
    kind, overrides = argv[0], argv[1:]
    cfg = config.compose([f"data={'synthetic' if kind == 'synth' else 'movielens'}", *overrides]).data
    began = time.perf_counter()
    if kind == "synth":
        from pipeline.data.synth import generate

        stats = generate(cfg.synth, cfg.time_range, cfg.path)
    else:
        from pipeline.data.movielens import convert

        stats = convert(cfg, cfg.path)
    console.print(f"{kind}: wrote {cfg.path} {stats} in {time.perf_counter() - began:.1f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
