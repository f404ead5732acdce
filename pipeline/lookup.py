"""python -m pipeline.lookup C1 C2 [--table PATH | --strategy rag|base] [--date YYYY-MM-DD] [--rev REV] [--json]

Serve one pair from a transition table, as production would: by lookup. The table is the newest
RAG table (dated on or before --date, if given), the base table with --strategy base, or the file
given by --table; --rev reads it from a past git revision through DVC (`dvc.api`), as released:
from this machine's DVC cache, else from the default DVC remote.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import cli, config, lineage, manifest
from pipeline import ROOT
from pipeline.revisions import Version

LINEAGE = ("period", "strategy", "refresh_date", "decoding", "data_hash", "base_model_hash", "adapter_hash",
           "template_hash", "params_hash", "code_revision", "code_hash", "gate")
COLUMNS = ("c1", "c2", "c_pred", "description", "valid", "served", "retrieved", "output")
# The last cluster's evidence line (prompts.evidence=backoff): in tables written since it existed.
OPTIONAL = ("last",)


def _text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _or_null(check):
    """A column of which every value may be null: Parquet then stores it as null, whatever the writer
    meant (the base table's retrieved lists are all empty: list<null>; a table with no valid
    answer has no description)."""
    return lambda t: check(t) or pa.types.is_null(t)


def _ids(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _or_null(pa.types.is_integer)(t.value_type)


TYPES = {"c1": pa.types.is_integer, "c2": pa.types.is_integer, "c_pred": _or_null(pa.types.is_integer),
         "description": _or_null(_text), "valid": pa.types.is_boolean, "served": _text, "output": _text,
         "retrieved": _ids, "last": _ids}


class LookupFailed(ValueError):
    pass


def day(text: str | dt.date) -> dt.date:
    """A YYYY-MM-DD date (2024-3-4 is 4 March); anything else is refused, never compared as text."""
    if isinstance(text, dt.date):
        return text
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise LookupFailed(f"--date {text!r}: not a date; give YYYY-MM-DD") from None


def table_day(name: str) -> dt.date | None:
    """The refresh date a RAG table's name carries (rag-YYYY-MM-DD.parquet), None for other names."""
    try:
        return dt.date.fromisoformat(name.removeprefix("rag-").removesuffix(".parquet"))
    except ValueError:
        return None


def choose(names: list[str], strategy: str, on: str | dt.date | None) -> str:
    """The table a server would use: the base table, or the newest RAG table dated <= on."""
    if strategy == "base":
        if "base.parquet" not in names:
            raise LookupFailed("no base.parquet among the tables")
        return "base.parquet"
    on = None if on is None else day(on)
    rag = sorted((d, n) for n in names if n.startswith("rag-") and (d := table_day(n)) and (on is None or d <= on))
    if not rag:
        raise LookupFailed(f"no RAG table dated on or before {on}" if on else "no RAG table")
    return rag[-1][1]


def read_file(path: str) -> io.BytesIO:
    """A table file of the work tree (relative to the repository root, or absolute)."""
    found = ROOT / path
    if not found.is_file():
        raise LookupFailed(f"{path}: no such table")
    return io.BytesIO(found.read_bytes())


def read_table(name: str, read) -> tuple[pd.DataFrame, dict[str, str]]:
    """(rows, manifest) of a transition table written by bulk_infer; anything else is refused
    before its rows are read."""
    if not name.endswith(".parquet"):
        raise LookupFailed(f"{name}: not a table (tables are the .parquet files bulk_infer writes)")
    blob = read(name)
    try:
        schema = pq.read_schema(blob)
    except (pa.ArrowException, OSError) as exc:
        raise LookupFailed(f"{name}: not a Parquet file ({str(exc).splitlines()[0]})") from None
    meta = manifest.read(blob)
    lacking = [k for k in LINEAGE if k not in meta]
    if lacking or not set(schema.names).issuperset(COLUMNS):
        what = f"manifest field {lacking[0]!r}" if lacking else f"column {sorted(set(COLUMNS) - set(schema.names))[0]!r}"
        raise LookupFailed(f"{name}: not a transition table written by the pipeline (no {what})")
    # A manifest can be forged onto any file: the fields and columns are read as bulk_infer writes them.
    wrong = [c for c, ok in TYPES.items() if c in schema.names and not ok(schema.field(c).type)]
    if wrong:
        raise LookupFailed(f"{name}: not a transition table written by the pipeline (column {wrong[0]!r} is "
                           f"{schema.field(wrong[0]).type})")
    try:
        gate = json.loads(meta["gate"])
    except ValueError:
        gate = None
    if not isinstance(gate, dict):
        raise LookupFailed(f"{name}: not a transition table written by the pipeline (manifest field 'gate' is "
                           f"{meta['gate'][:40]!r}, not the gate's record)")
    try:
        frame = pd.read_parquet(blob, columns=[*COLUMNS, *(c for c in OPTIONAL if c in schema.names)])
    except (pa.ArrowException, OSError) as exc:
        raise LookupFailed(f"{name}: unreadable rows ({str(exc).splitlines()[0]})") from None
    if frame.empty:
        raise LookupFailed(f"{name}: holds no pairs")
    return frame, meta


def lookup(c1: int, c2: int, table: str | None = None, strategy: str = "rag", date: str | None = None,
           rev: str | None = None) -> dict:
    """The served prediction for (c1, c2) with its table's strategy, refresh date and lineage."""
    if c1 == c2:
        raise LookupFailed(f"c1 and c2 are both {c1}: a history holds two distinct clusters")
    if rev is None:
        read = read_file
        named = table is not None
        if table is None:
            tables_dir = str(config.load().paths.tables)
            folder = ROOT / tables_dir
            if not folder.is_dir():
                raise LookupFailed(f"{tables_dir}: no tables; run `dvc repro`")
            table = f"{tables_dir}/{choose(sorted(p.name for p in folder.glob('*.parquet')), strategy, date)}"
        if (ROOT / table).is_file():
            # What is served is what the pipeline wrote: a table edited since is refused (a file the
            # user names by --table, of no output of this machine or dvc.lock, is theirs to vouch for).
            lineage.verify_file(ROOT / table, unknown=named)
    else:
        version = Version(rev)
        read = version.blob
        if table is None:
            table = f"{version.tables_dir}/{choose(version.table_names(), strategy, date)}"
    frame, meta = read_table(table, read)
    known = set(frame.c1)
    for name, c in (("c1", c1), ("c2", c2)):
        if c not in known:
            raise LookupFailed(f"{name}={c} is not a cluster of {table} (clusters {min(known)}..{max(known)})")
    row = frame[(frame.c1 == c1) & (frame.c2 == c2)].iloc[0]
    return {"c1": c1, "c2": c2, "c_pred": None if pd.isna(row.c_pred) else int(row.c_pred),
            "description": row.description, "valid": bool(row.valid), "served": row.served,
            "retrieved": [int(r) for r in row.retrieved],
            "last": [int(r) for r in row["last"]] if "last" in frame.columns else [], "output": row.output,
            "table": table, "rev": rev,
            "lineage": {k: json.loads(meta[k]) if k == "gate" else meta.get(k) for k in LINEAGE}}


def render(found: dict) -> str:
    lin = found["lineage"]
    gate = lin["gate"] or {}
    short = {k: (lin[k] or "?")[:12] for k in ("data_hash", "base_model_hash", "adapter_hash", "template_hash",
                                                 "params_hash", "code_revision", "code_hash")}
    lines = [
        f"({found['c1']}, {found['c2']}) -> {found['c_pred']}: {found['description']}",
        (f"  served {found['served']} ({'valid' if found['valid'] else 'invalid'} model answer "
         f"{found['output']!r}); retrieved {found['retrieved']}"
         + (f", last cluster's {found['last']}" if found.get("last") else "")),
        (f"  table {found['table']}{' @ ' + found['rev'] if found['rev'] else ''}: strategy {lin['strategy']}, "
         f"refresh date {lin['refresh_date']}, period {lin['period']}, decoding {lin['decoding']}"),
        (f"  gate {'passed' if gate.get('passed') else 'overridden: ' + str(gate.get('override_reason'))}, "
         f"exact match {gate.get('exact_match')}, test recall {gate.get('test_recall')}"),
        "  lineage " + ", ".join(f"{k.removesuffix('_hash')} {v}" for k, v in short.items())]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = cli.parser("python -m pipeline.lookup", __doc__)
    ap.add_argument("c1", type=int)
    ap.add_argument("c2", type=int)
    ap.add_argument("--table", help="a table file written by bulk_infer (relative to the repository root with --rev)")
    ap.add_argument("--strategy", choices=("rag", "base"), default="rag")
    ap.add_argument("--date", help="serve the newest RAG table dated on or before this YYYY-MM-DD")
    ap.add_argument("--rev", help="a git revision (tag, branch, commit) to read the table from")
    ap.add_argument("--json", action="store_true", help="print the full record as JSON")
    args = ap.parse_args(argv)
    if args.date is not None:
        try:
            day(args.date)
        except LookupFailed as exc:
            ap.error(str(exc))  # a malformed argument is a usage error: exit 2
    with cli.user_errors("lookup"):
        found = lookup(args.c1, args.c2, args.table, args.strategy, args.date, args.rev)
    print(json.dumps(found, indent=2, default=str) if args.json else render(found))


if __name__ == "__main__":
    main(sys.argv[1:])
