"""The data contract (docs/data-contract.md): schemas, validation on read, writing.

`register` validates a dataset folder with DuckDB and exposes it as three views with
normalised types: events(user_id, item_id, ts, engagement), items(item_id, cluster_id),
clusters(cluster_id, keywords, description). Every violation raises ContractError naming
the file, the row, the column and the offending value.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

EVENTS_SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("item_id", pa.int64()),
    ("ts", pa.timestamp("us", tz="UTC")), ("engagement", pa.float32()),
])
ITEMS_SCHEMA = pa.schema([("item_id", pa.int64()), ("cluster_id", pa.int32())])
CLUSTERS_SCHEMA = pa.schema([("cluster_id", pa.int32()), ("keywords", pa.list_(pa.string()))])

MIN_KEYWORDS, MAX_KEYWORDS = 2, 6
SEPARATOR = ", "
# Characters a keyword may not hold: control characters and line or paragraph separators (they
# would start a new line in every prompt that lists the keyword), invisible format characters
# (zero-width spaces and joiners, soft hyphens: two descriptions that print the same would differ),
# and ';' (the prompt joins retrieved and popular descriptions with "; ").
FORBIDDEN = r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp};]"

_INT = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
# TIMESTAMPTZ_NS: a zoned nanosecond column (pandas' default unit), valid as the naive one is.
_TS = {"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ_NS", "TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S",
       "VARCHAR"}
_NUM = _INT | {"FLOAT", "DOUBLE"}
TYPES = {
    "events": {"user_id": _INT, "item_id": _INT, "ts": _TS, "engagement": _NUM},
    "items": {"item_id": _INT, "cluster_id": _INT},
    "clusters": {"cluster_id": _INT, "keywords": {"VARCHAR[]"}},
}


# The integer columns with the type the views cast them to: a wider input type is accepted, a
# value that does not fit is not (DuckDB would stop on the cast with its own message).
INT_TYPES = {name: {f.name: f.type for f in schema if pa.types.is_integer(f.type)}
             for name, schema in (("events", EVENTS_SCHEMA), ("items", ITEMS_SCHEMA), ("clusters", CLUSTERS_SCHEMA))}


class ContractError(ValueError):
    """A dataset file breaks the contract."""

    def __init__(self, file: str, problem: str, column: str | None = None, value: object = None, row: int | None = None):
        where = str(file) + (f" row {row}" if row is not None else "")
        what = f"column '{column}': " if column else ""
        if isinstance(value, datetime):
            value = value.isoformat(sep=" ")
        shown = f" (value: {value!r})" if value is not None or column else ""
        super().__init__(f"{where}: {what}{problem}{shown}")
        self.file, self.column, self.value, self.row = str(file), column, value, row


def description(keywords: list[str]) -> str:
    """A cluster's description: what the LLM emits and we map back by exact match."""
    return SEPARATOR.join(keywords)


def descriptions(data_dir: Path | str) -> dict[int, str]:
    """cluster_id -> description, from a dataset that extract has already validated."""
    table = pq.read_table(files(data_dir)["clusters"], columns=["cluster_id", "keywords"])
    return {int(c): description(k) for c, k in zip(table["cluster_id"].to_pylist(), table["keywords"].to_pylist())}


def files(data_dir: Path | str) -> dict[str, Path]:
    """The contract's three inputs; events may be one file or a folder of Parquet parts."""
    data_dir = Path(data_dir)
    found = {"events": data_dir / "events.parquet", "items": data_dir / "items.parquet",
             "clusters": data_dir / "clusters.parquet"}
    if found["events"].exists() and (data_dir / "events").exists():
        raise ContractError(data_dir, "holds both events.parquet and events/: which one is the data is ambiguous; "
                                      "keep one")
    if not found["events"].exists() and (data_dir / "events").is_dir():
        found["events"] = data_dir / "events"
    for name, path in found.items():
        if not path.exists():
            raise ContractError(path, f"missing {name} file (expected {name}.parquet"
                                + (" or a folder events/ of parts)" if name == "events" else ")"))
    if found["events"].is_dir() and not any(found["events"].glob("*.parquet")):
        raise ContractError(found["events"], "events folder holds no .parquet parts")
    return found


def _read_alike(path: Path) -> None:
    """Refuse descriptions that read the same: equal after Unicode NFKC (a full-width comma is a
    comma, a ligature its letters) with each run of whitespace one space, and keywords whose NFKC
    form holds a separator. In Python: DuckDB has no NFKC, and clusters are few."""
    rows: dict[str, int] = {}
    for row, keywords in enumerate(pq.read_table(path, columns=["keywords"]).column("keywords").to_pylist()):
        if any(sep in unicodedata.normalize("NFKC", k) for k in keywords for sep in ",;"):
            raise ContractError(path, "keywords must not hold characters that read as ',' or ';' (Unicode NFKC, "
                                      "e.g. a full-width comma)", "keywords", keywords, row)
        key = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", description(keywords)))
        if key in rows:
            raise ContractError(path, f"duplicate cluster description (Unicode NFKC, spaces normalised) in rows "
                                      f"[{rows[key]}, {row}]", "keywords", key)
        rows[key] = row


def _scan(path: Path) -> str:
    pattern = str(path / "*.parquet") if path.is_dir() else str(path)
    quoted = pattern.replace("'", "''")
    return f"read_parquet('{quoted}', filename=true, file_row_number=true)"


@dataclass(frozen=True)
class Rule:
    column: str
    condition: str  # SQL, true for an offending row
    problem: str
    shown: str | None = None  # SQL of the value the error shows, when not the column as stored


def _describe(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str]:
    try:
        return {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {_scan(path)}").fetchall()}
    except duckdb.OutOfMemoryException:
        raise  # duckdb.memory_limit, not the file (the stage runner names the setting)
    except duckdb.Error as exc:
        raise ContractError(path, f"unreadable as Parquet: {str(exc).splitlines()[0]}") from exc


def _check_columns(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> dict[str, str]:
    """The contract columns' types; each part of an events folder is checked on its own and must
    match the first part, since one scan over the folder would silently cast a part to the
    first part's schema (or stop with DuckDB's own message)."""
    parts = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    first = None
    for part in parts:
        types = _describe(con, part)
        # DuckDB renames a second column of the same name (ts, ts_1) and would read the first.
        names = pq.read_schema(part).names
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ContractError(part, "holds two columns of this name: which one is the data is ambiguous", twice[0])
        for column, allowed in TYPES[name].items():
            if column not in types:
                present = ", ".join(c for c in types if c not in ("filename", "file_row_number"))
                raise ContractError(part, f"missing required column (file has: {present})", column)
            if types[column] not in allowed:
                raise ContractError(part, f"wrong type {types[column]}, expected one of {sorted(allowed)}", column,
                                    types[column])
            if first and types[column] != first[1][column]:
                raise ContractError(part, f"type {types[column]} differs from {first[1][column]} in "
                                    f"{first[0].name}: every part needs the same schema", column, types[column])
        first = first or (part, types)
    return first[1]


def _fits(name: str) -> list[Rule]:
    """A rule per integer column: its values fit the contract's type."""
    return [Rule(column, f"{column} NOT BETWEEN {-(2 ** (kind.bit_width - 1))} AND {2 ** (kind.bit_width - 1) - 1}",
                 f"does not fit the contract's {kind}") for column, kind in INT_TYPES[name].items()]


def _enforce(con: duckdb.DuckDBPyConnection, source: str, path: Path, rules: list[Rule]) -> None:
    """One scan counts every rule's offenders; the first offender of a broken rule is reported."""
    counts = con.execute("SELECT " + ", ".join(f"count(*) FILTER (WHERE {r.condition})" for r in rules)
                     + f" FROM {source}").fetchone()
    for rule, n in zip(rules, counts):
        if n:
            # The first offender by an aggregate too: a WHERE is pushed into the Parquet scan, whose
            # statistics leave out a NaN that the aggregate above counted.
            (first,) = con.execute(
                f"SELECT min({{'f': filename, 'r': file_row_number, 'v': {rule.shown or rule.column}}}) "
                f"FILTER (WHERE {rule.condition}) FROM {source}").fetchone()
            file, row, value = first["f"], first["r"], first["v"]
            shown = path if Path(file) == path else Path(file)
            raise ContractError(shown, f"{rule.problem} ({n} rows)", rule.column, value, row)


def _duplicates(con, source: str, path: Path, column: str, what: str, expr: str | None = None) -> None:
    dup = con.execute(f"SELECT {expr or column}, list(file_row_number ORDER BY file_row_number) FROM {source} "
                      f"GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 1").fetchone()
    if dup:
        raise ContractError(path, f"duplicate {what} in rows {dup[1]}", column, dup[0])


def register(con: duckdb.DuckDBPyConnection, data_dir: Path | str, time_range, unknown_items: str = "drop", *,
             max_keyword_chars: int | None = None, engagement_range=None) -> dict:
    """Validate `data_dir` and create the views events, items, clusters. Returns counts for metrics.

    max_keyword_chars and engagement_range ({min, max}: the dataset's declared scale) are the
    dataset's settings (data.max_keyword_chars, data.engagement_range); None leaves that limit
    unchecked. Non-finite engagement is always refused."""
    con.execute("SET TimeZone = 'UTC'")  # timestamps and the declared range are UTC on any connection
    paths = files(data_dir)
    sources = {name: _scan(path) for name, path in paths.items()}
    _check_clusters(con, paths["clusters"], sources["clusters"], max_keyword_chars)
    _check_items(con, paths, sources)
    ts_value = _check_events(con, paths, sources, time_range, unknown_items, engagement_range)
    return _create_views(con, sources, ts_value)


def _keyword_rules(max_keyword_chars: int | None) -> list[Rule]:
    """What every cluster's keywords must be: a few, each non-empty, lower case and trimmed, free of
    the prompt's separators and of characters that print as nothing or break a line."""
    kw_ok = f"len(keywords) BETWEEN {MIN_KEYWORDS} AND {MAX_KEYWORDS}"
    rules = [
        Rule("keywords", "keywords IS NULL OR len(keywords) = 0", "cluster has no keywords"),
        Rule("keywords", f"NOT ({kw_ok})", f"needs {MIN_KEYWORDS}-{MAX_KEYWORDS} keywords"),
        Rule("keywords", "list_bool_or([k IS NULL OR trim(k) = '' FOR k IN keywords])",
             "null or empty keyword"),
        Rule("keywords", f"list_bool_or([regexp_matches(k, '{FORBIDDEN}') FOR k IN keywords])",
             "keywords must not hold control characters, invisible characters, line breaks or ';' "
             "(the prompt's separators)"),
        Rule("keywords", "list_bool_or([k <> lower(trim(k)) OR contains(k, ',') FOR k IN keywords])",
             "keywords must be lower case, trimmed, without commas"),
    ]
    if max_keyword_chars is not None:
        rules.append(Rule("keywords", f"list_bool_or([length(k) > {int(max_keyword_chars)} FOR k IN keywords])",
                          f"keyword longer than data.max_keyword_chars={int(max_keyword_chars)} characters"))
    return rules


def _check_clusters(con: duckdb.DuckDBPyConnection, path: Path, source: str, max_keyword_chars: int | None) -> None:
    _check_columns(con, "clusters", path)
    _enforce(con, source, path, [Rule("cluster_id", "cluster_id IS NULL", "null cluster_id"), *_fits("clusters"),
                                 *_keyword_rules(max_keyword_chars)])
    _duplicates(con, source, path, "cluster_id", "cluster_id")
    _read_alike(path)


def _check_items(con: duckdb.DuckDBPyConnection, paths: dict[str, Path], sources: dict[str, str]) -> None:
    _check_columns(con, "items", paths["items"])
    _enforce(con, sources["items"], paths["items"], [
        Rule("item_id", "item_id IS NULL", "null item_id"),
        Rule("cluster_id", "cluster_id IS NULL", "item has no cluster"),
        *_fits("items"),
        Rule("cluster_id", f"cluster_id NOT IN (SELECT cluster_id FROM {sources['clusters']})",
             f"cluster_id not in {paths['clusters'].name}"),
    ])
    _duplicates(con, sources["items"], paths["items"], "item_id", "item_id")


def _ts_value(ts_type: str) -> str:
    """SQL of an event's ts as a naive TIMESTAMP holding UTC wall time, from the stored column's type.

    Naive inputs are read as UTC. A zoned value's UTC wall time is taken from its epoch: the cast
    TIMESTAMPTZ::TIMESTAMP asks the time-zone library for every row (0.6 s against 0.1 s for 10M
    rows on 2 threads), and the two give the same values. A naive input only changes precision
    (the cast rounds as before)."""
    return {"VARCHAR": "make_timestamp(epoch_us(TRY_CAST(ts AS TIMESTAMPTZ)))",
            "TIMESTAMP WITH TIME ZONE": "make_timestamp(epoch_us(ts))",
            "TIMESTAMPTZ_NS": "make_timestamp(epoch_us(ts::TIMESTAMPTZ))"}.get(ts_type, "ts::TIMESTAMP")


def _check_events(con: duckdb.DuckDBPyConnection, paths: dict[str, Path], sources: dict[str, str], time_range,
                  unknown_items: str, engagement_range) -> str:
    """Validate the event log; returns the SQL of its ts as the events view reads it (_ts_value)."""
    types = _check_columns(con, "events", paths["events"])
    ts_value = _ts_value(types["ts"])
    start, end = (f"'{time_range[k]}'::TIMESTAMP" for k in ("start", "end"))
    nan = " OR isnan(engagement)" if types["engagement"] in ("FLOAT", "DOUBLE") else ""
    rules = [
        Rule("user_id", "user_id IS NULL", "null user_id"),
        Rule("item_id", "item_id IS NULL", "null item_id"),
        Rule("ts", "ts IS NULL", "null timestamp"),
        Rule("ts", f"ts IS NOT NULL AND {ts_value} IS NULL", "unparsable timestamp"),
        # Nanoseconds round to the microsecond (23:59:59.9999999 is the next day): the check and the
        # value it shows are the rounded ones, as extract reads them.
        Rule("ts", f"{ts_value} < {start} OR {ts_value} >= {end}",
             f"timestamp outside the declared range [{time_range['start']}, {time_range['end']})"
             + (" once rounded to the microsecond" if types["ts"] == "TIMESTAMP_NS" else ""),
             ts_value if types["ts"] == "TIMESTAMP_NS" else None),
        Rule("engagement", f"engagement IS NULL{nan}", "null or NaN engagement"),
        *_fits("events"),
    ]
    if types["engagement"] in ("FLOAT", "DOUBLE"):
        rules.append(Rule("engagement", "isinf(engagement)", "infinite engagement"))
    if engagement_range is not None:
        lo, hi = float(engagement_range["min"]), float(engagement_range["max"])
        rules.append(Rule("engagement", f"engagement < {lo!r} OR engagement > {hi!r}",
                          f"engagement outside the declared data.engagement_range [{lo}, {hi}]"))
    if unknown_items == "error":
        rules.append(Rule("item_id", f"item_id NOT IN (SELECT item_id FROM {sources['items']})",
                          f"item_id not in {paths['items'].name}"))
    elif unknown_items != "drop":
        raise ContractError("params.yaml", "must be 'drop' or 'error'", "data.unknown_items", unknown_items)
    _enforce(con, sources["events"], paths["events"], rules)
    return ts_value


def _create_views(con: duckdb.DuckDBPyConnection, sources: dict[str, str], ts_value: str) -> dict:
    """The views clusters, items and events in the contract's types; the counts of clusters and items."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW clusters AS SELECT cluster_id::INTEGER AS cluster_id, keywords, "
                f"array_to_string(keywords, '{SEPARATOR}') AS description FROM {sources['clusters']}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW items AS "
                f"SELECT item_id::BIGINT AS item_id, cluster_id::INTEGER AS cluster_id FROM {sources['items']}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS SELECT user_id::BIGINT AS user_id, item_id::BIGINT AS item_id, "
                f"{ts_value} AS ts, engagement::FLOAT AS engagement FROM {sources['events']}")
    n_clusters, n_items = (con.execute(f"SELECT count(*) FROM {v}").fetchone()[0] for v in ("clusters", "items"))
    return {"clusters": n_clusters, "items": n_items}


def write(out_dir: Path | str, items: pa.Table, clusters: pa.Table) -> None:
    """Write items and clusters in contract form (events are streamed by their producer)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(items.cast(ITEMS_SCHEMA), out_dir / "items.parquet")
    pq.write_table(clusters.cast(CLUSTERS_SCHEMA), out_dir / "clusters.parquet")
