"""python -m pipeline.llm {prepare,cache}: the base model and the answer cache.

  python -m pipeline.llm prepare [key=value ...]   fetch and convert the base model once
  python -m pipeline.llm cache                     check every answer-cache part's checksum
  python -m pipeline.llm cache --drop-corrupt      delete the parts that fail, so the next
                                                   bulk_infer or evaluate decodes them again
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import cli, config
from pipeline.llm.cache import DROP, corrupt_parts


def prepare(overrides: list[str]) -> None:
    from pipeline import kernels

    cfg = config.compose(overrides)
    kernels.pin(cfg.kernels)  # before torch is imported
    from pipeline.llm import model

    print(f"base model ready in {model.prepare(cfg.model)}")


def check_cache(root: Path, drop: bool) -> int:
    """Print each part that fails its check; delete them with `drop`. Returns how many are left bad."""
    checked = len(list(root.glob("*/part-*.parquet")))
    bad = corrupt_parts(root)
    for part, problem in bad:
        print(f"{part}: {problem}" + ("; deleted" if drop else ""))
        if drop:
            part.unlink()
    print(f"{root}: {checked} parts checked, {len(bad)} failed" + (" and deleted" if drop and bad else ""))
    return 0 if drop else len(bad)


def main(argv: list[str]) -> None:
    ap = cli.parser("python -m pipeline.llm", __doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="fetch and convert the base model once")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. model=tiny_random")
    c = sub.add_parser("cache", help="check the answer cache (paths.infer_cache)")
    c.add_argument("--root", type=Path, help="the cache directory (default: paths.infer_cache of params.yaml)")
    c.add_argument("--drop-corrupt", action="store_true",
                   help="delete every part that fails its check; the next run recomputes its answers")
    args = ap.parse_args(argv)
    with cli.user_errors(f"llm {args.command}"):
        if args.command == "prepare":
            prepare(args.overrides)
            return
        if args.root is not None and not args.root.is_dir():
            # "0 parts checked" would read as a healthy cache.
            what = "a file, not a folder" if args.root.exists() else "no such folder"
            raise FileNotFoundError(f"--root {args.root}: {what}; give the answer cache's folder (paths.infer_cache)")
        root = args.root or config.ROOT / config.load().paths.infer_cache
        if check_cache(root, args.drop_corrupt):
            raise SystemExit(f"llm cache: parts failed their check; `{DROP}` deletes them")


if __name__ == "__main__":
    main(sys.argv[1:])

