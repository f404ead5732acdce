"""python -m pipeline.data {synth|movielens} [hydra overrides]: write a dataset in contract form.

The dataset's settings come from conf/data/<name>.yaml plus overrides, e.g.
`python -m pipeline.data synth data.synth.n_events=50000000 data.path=/tmp/big`; synth writes the
default world (data=synthetic) unless an override names another, e.g. data=synthetic_dense.
"""
from __future__ import annotations

import sys
import time

from rich.console import Console

from pipeline import cli, config

console = Console(stderr=True)


def main(argv: list[str]) -> None:
    ap = cli.parser("python -m pipeline.data", __doc__)
    ap.add_argument("kind", choices=("synth", "movielens"), help="synth: the synthetic world; movielens: convert "
                    "raw/ml-latest-small")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. data.path=/tmp/big")
    args = ap.parse_args(argv)
    with cli.user_errors(f"data {args.kind}"):
        named = any(o.startswith("data=") for o in args.overrides)
        default = [] if named else [f"data={'synthetic' if args.kind == 'synth' else 'movielens'}"]
        cfg = config.compose([*default, *args.overrides]).data
        began = time.perf_counter()
        if args.kind == "synth":
            from pipeline.data.synth import generate

            stats = generate(cfg.synth, cfg.time_range, cfg.path)
        else:
            from pipeline.data.movielens import convert

            stats = convert(cfg, cfg.path)
    console.print(f"{args.kind}: wrote {cfg.path} {stats} in {time.perf_counter() - began:.1f}s")

if __name__ == "__main__":
    main(sys.argv[1:])
