"""python -m pipeline.llm prepare [hydra overrides]: fetch and convert the base model once."""
from __future__ import annotations

import sys

from pipeline import config, kernels


def main(argv: list[str]) -> None:
    if not argv or argv[0] != "prepare":
        raise SystemExit("usage: python -m pipeline.llm prepare [key=value ...]")
    cfg = config.compose(argv[1:])
    kernels.pin(cfg.kernels)  # before torch is imported
    from pipeline.llm import model

    m = cfg.model
    print(f"base model ready in {model.prepare(m)}")


if __name__ == "__main__":
    main(sys.argv[1:])
