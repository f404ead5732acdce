"""python -m pipeline.lookup C1 C2 [--table PATH | --strategy rag|base] [--date YYYY-MM-DD] [--rev REV] [--json]

Serve one pair from a transition table, as production would: by lookup. The table is the newest
RAG table (dated on or before --date, if given), the base table with --strategy base, or the file
given by --table; --rev reads it from a past git revision through DVC (`dvc.api`), as released.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import PurePosixPath

import pandas as pd

from pipeline import config, manifest
from pipeline.config import ROOT

LINEAGE = ("period", "strategy", "refresh_date", "decoding", "data_hash", "base_model_hash", "adapter_hash",
           "template_hash", "params_hash", "code_revision", "code_hash", "gate")


class LookupFailed(ValueError):
    pass


def _filesystem(rev: str | None):
    """(list, open) over the work tree, or over a git revision through DVC's filesystem."""
    if rev is None:
        return (lambda d: sorted(p.name for p in (ROOT / d).glob("*.parquet")),
                lambda p: open(ROOT / p, "rb"))
    from dvc.api import DVCFileSystem
    from scmrepo.exceptions import RevError

    try:
        fs = DVCFileSystem(str(ROOT), rev=rev)
    except RevError as exc:
        raise LookupFailed(f"--rev {rev}: not a revision of this repository ({exc})") from exc
    return (lambda d: sorted(PurePosixPath(p).name for p in fs.ls(d, detail=False) if p.endswith(".parquet")),
            lambda p: fs.open(p, "rb"))


def choose(names: list[str], strategy: str, date: str | None) -> str:
    """The table a server would use: the base table, or the newest RAG table dated <= date."""
    if strategy == "base":
        if "base.parquet" not in names:
            raise LookupFailed("no base.parquet among the tables")
        return "base.parquet"
    rag = [n for n in names if n.startswith("rag-") and (date is None or n[4:14] <= date)]
    if not rag:
        raise LookupFailed(f"no RAG table dated on or before {date}" if date else "no RAG table")
    return rag[-1]


def lookup(c1: int, c2: int, table: str | None = None, strategy: str = "rag", date: str | None = None,
           rev: str | None = None) -> dict:
    """The served prediction for (c1, c2) with its table's strategy, refresh date and lineage."""
    if c1 == c2:
        raise LookupFailed(f"c1 and c2 are both {c1}: a history holds two distinct clusters")
    listing, open_ = _filesystem(rev)
    if table is None:
        tables_dir = str(config.load().paths.tables)
        try:
            names = listing(tables_dir)
        except FileNotFoundError as exc:
            raise LookupFailed(f"{tables_dir}: no tables{' at ' + rev if rev else ''}; run `dvc repro`") from exc
        table = f"{tables_dir}/{choose(names, strategy, date)}"
    try:
        with open_(table) as fh:
            blob = io.BytesIO(fh.read())
    except FileNotFoundError as exc:
        raise LookupFailed(f"{table}: no such table{' at ' + rev if rev else ''}") from exc
    frame = pd.read_parquet(blob)
    known = set(frame.c1)
    for name, c in (("c1", c1), ("c2", c2)):
        if c not in known:
            raise LookupFailed(f"{name}={c} is not a cluster of {table} (clusters {min(known)}..{max(known)})")
    row = frame[(frame.c1 == c1) & (frame.c2 == c2)].iloc[0]
    meta = manifest.read(blob)
    return {"c1": c1, "c2": c2, "c_pred": None if pd.isna(row.c_pred) else int(row.c_pred),
            "description": row.description, "valid": bool(row.valid), "served": row.served,
            "retrieved": [int(r) for r in row.retrieved], "output": row.output, "table": table, "rev": rev,
            "lineage": {k: json.loads(meta[k]) if k == "gate" else meta.get(k) for k in LINEAGE}}


def render(found: dict) -> str:
    lin = found["lineage"]
    gate = lin["gate"] or {}
    short = {k: (lin[k] or "?")[:12] for k in ("data_hash", "base_model_hash", "adapter_hash", "template_hash",
                                                 "params_hash", "code_revision", "code_hash")}
    lines = [
        f"({found['c1']}, {found['c2']}) -> {found['c_pred']}: {found['description']}",
        (f"  served {found['served']} ({'valid' if found['valid'] else 'invalid'} model answer "
         f"{found['output']!r}); retrieved {found['retrieved']}"),
        (f"  table {found['table']}{' @ ' + found['rev'] if found['rev'] else ''}: strategy {lin['strategy']}, "
         f"refresh date {lin['refresh_date']}, period {lin['period']}, decoding {lin['decoding']}"),
        (f"  gate {'passed' if gate.get('passed') else 'overridden: ' + str(gate.get('override_reason'))}, "
         f"exact match {gate.get('exact_match')}, test recall {gate.get('test_recall')}"),
        "  lineage " + ", ".join(f"{k.removesuffix('_hash')} {v}" for k, v in short.items())]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.lookup", description=__doc__.splitlines()[2])
    ap.add_argument("c1", type=int)
    ap.add_argument("c2", type=int)
    ap.add_argument("--table", help="a table file (relative to the repository root with --rev)")
    ap.add_argument("--strategy", choices=("rag", "base"), default="rag")
    ap.add_argument("--date", help="serve the newest RAG table dated on or before this YYYY-MM-DD")
    ap.add_argument("--rev", help="a git revision (tag, branch, commit) to read the table from")
    ap.add_argument("--json", action="store_true", help="print the full record as JSON")
    args = ap.parse_args(argv)
    try:
        found = lookup(args.c1, args.c2, args.table, args.strategy, args.date, args.rev)
    except LookupFailed as exc:
        raise SystemExit(f"lookup: {exc}") from None
    print(json.dumps(found, indent=2, default=str) if args.json else render(found))


if __name__ == "__main__":
    main(sys.argv[1:])
