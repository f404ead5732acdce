"""The data contract (DESIGN.md section 3): schemas, validation on read, writing.

`register` validates a dataset folder with DuckDB and exposes it as three views with
normalised types: events(user_id, item_id, ts, engagement), items(item_id, cluster_id),
clusters(cluster_id, keywords, description). Every violation raises ContractError naming
the file, the row, the column and the offending value.
"""
from __future__ import annotations

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

_INT = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
_TS = {"TIMESTAMP WITH TIME ZONE", "TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "VARCHAR"}
_NUM = _INT | {"FLOAT", "DOUBLE"}
TYPES = {
    "events": {"user_id": _INT, "item_id": _INT, "ts": _TS, "engagement": _NUM},
    "items": {"item_id": _INT, "cluster_id": _INT},
    "clusters": {"cluster_id": _INT, "keywords": {"VARCHAR[]"}},
}


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
    if not found["events"].exists() and (data_dir / "events").is_dir():
        found["events"] = data_dir / "events"
    for name, path in found.items():
        if not path.exists():
            raise ContractError(path, f"missing {name} file (expected {name}.parquet"
                                + (" or a folder events/ of parts)" if name == "events" else ")"))
    if found["events"].is_dir() and not any(found["events"].glob("*.parquet")):
        raise ContractError(found["events"], "events folder holds no .parquet parts")
    return found


def _scan(path: Path) -> str:
    pattern = str(path / "*.parquet") if path.is_dir() else str(path)
    quoted = pattern.replace("'", "''")
    return f"read_parquet('{quoted}', filename=true, file_row_number=true)"


@dataclass(frozen=True)
class Rule:
    column: str
    condition: str  # SQL, true for an offending row
    problem: str


def _check_columns(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> dict[str, str]:
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {_scan(path)}").fetchall()
    except duckdb.Error as exc:
        raise ContractError(path, f"unreadable as Parquet: {exc}") from exc
    types = {row[0]: row[1] for row in described}
    for column, allowed in TYPES[name].items():
        if column not in types:
            present = ", ".join(c for c in types if c not in ("filename", "file_row_number"))
            raise ContractError(path, f"missing required column (file has: {present})", column)
        if types[column] not in allowed:
            raise ContractError(path, f"wrong type {types[column]}, expected one of {sorted(allowed)}", column,
                                types[column])
    return types


def _enforce(con: duckdb.DuckDBPyConnection, source: str, path: Path, rules: list[Rule]) -> None:
    """One scan counts every rule's offenders; the first offender of a broken rule is reported."""
    counts = con.execute("SELECT " + ", ".join(f"count(*) FILTER (WHERE {r.condition})" for r in rules)
                     + f" FROM {source}").fetchone()
    for rule, n in zip(rules, counts):
        if n:
            file, row, value = con.execute(
                f"SELECT filename, file_row_number, {rule.column} FROM {source} WHERE {rule.condition} "
                "ORDER BY filename, file_row_number LIMIT 1").fetchone()
            shown = path if Path(file) == path else Path(file)
            raise ContractError(shown, f"{rule.problem} ({n} rows)", rule.column, value, row)


def _duplicates(con, source: str, path: Path, column: str, what: str, expr: str | None = None) -> None:
    dup = con.execute(f"SELECT {expr or column}, list(file_row_number ORDER BY file_row_number) FROM {source} "
                      f"GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 1").fetchone()
    if dup:
        raise ContractError(path, f"duplicate {what} in rows {dup[1]}", column, dup[0])


def register(con: duckdb.DuckDBPyConnection, data_dir: Path | str, time_range, unknown_items: str = "drop") -> dict:
    """Validate `data_dir` and create the views events, items, clusters. Returns counts for metrics."""
    con.execute("SET TimeZone = 'UTC'")  # timestamps and the declared range are UTC on any connection
    paths = files(data_dir)
    clusters_src, items_src, events_src = (_scan(paths[n]) for n in ("clusters", "items", "events"))

    _check_columns(con, "clusters", paths["clusters"])
    kw_ok = f"len(keywords) BETWEEN {MIN_KEYWORDS} AND {MAX_KEYWORDS}"
    _enforce(con, clusters_src, paths["clusters"], [
        Rule("cluster_id", "cluster_id IS NULL", "null cluster_id"),
        Rule("keywords", "keywords IS NULL OR len(keywords) = 0", "cluster has no keywords"),
        Rule("keywords", f"NOT ({kw_ok})", f"needs {MIN_KEYWORDS}-{MAX_KEYWORDS} keywords"),
        Rule("keywords", "list_bool_or([k IS NULL OR trim(k) = '' FOR k IN keywords])",
             "null or empty keyword"),
        Rule("keywords", "list_bool_or([k <> lower(trim(k)) OR contains(k, ',') FOR k IN keywords])",
             "keywords must be lower case, trimmed, without commas"),
    ])
    _duplicates(con, clusters_src, paths["clusters"], "cluster_id", "cluster_id")
    _duplicates(con, clusters_src, paths["clusters"], "keywords", "cluster description",
                f"array_to_string(keywords, '{SEPARATOR}')")

    _check_columns(con, "items", paths["items"])
    _enforce(con, items_src, paths["items"], [
        Rule("item_id", "item_id IS NULL", "null item_id"),
        Rule("cluster_id", "cluster_id IS NULL", "item has no cluster"),
        Rule("cluster_id", f"cluster_id NOT IN (SELECT cluster_id FROM {clusters_src})",
             f"cluster_id not in {paths['clusters'].name}"),
    ])
    _duplicates(con, items_src, paths["items"], "item_id", "item_id")

    types = _check_columns(con, "events", paths["events"])
    # Internally ts is a naive TIMESTAMP holding UTC wall time; naive inputs are read as UTC.
    ts_value = "TRY_CAST(ts AS TIMESTAMPTZ)::TIMESTAMP" if types["ts"] == "VARCHAR" else "ts::TIMESTAMPTZ::TIMESTAMP"
    start, end = (f"'{time_range[k]}'::TIMESTAMP" for k in ("start", "end"))
    nan = " OR isnan(engagement)" if types["engagement"] in ("FLOAT", "DOUBLE") else ""
    event_rules = [
        Rule("user_id", "user_id IS NULL", "null user_id"),
        Rule("item_id", "item_id IS NULL", "null item_id"),
        Rule("ts", "ts IS NULL", "null timestamp"),
        Rule("ts", f"ts IS NOT NULL AND {ts_value} IS NULL", "unparsable timestamp"),
        Rule("ts", f"{ts_value} < {start} OR {ts_value} >= {end}",
             f"timestamp outside the declared range [{time_range['start']}, {time_range['end']})"),
        Rule("engagement", f"engagement IS NULL{nan}", "null or NaN engagement"),
    ]
    unknown = Rule("item_id", f"item_id NOT IN (SELECT item_id FROM {items_src})",
                   f"item_id not in {paths['items'].name}")
    if unknown_items == "error":
        event_rules.append(unknown)
    elif unknown_items != "drop":
        raise ContractError("params.yaml", "must be 'drop' or 'error'", "data.unknown_items", unknown_items)
    _enforce(con, events_src, paths["events"], event_rules)

    con.execute(f"CREATE OR REPLACE TEMP VIEW clusters AS SELECT cluster_id::INTEGER AS cluster_id, keywords, "
                f"array_to_string(keywords, '{SEPARATOR}') AS description FROM {clusters_src}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW items AS "
                f"SELECT item_id::BIGINT AS item_id, cluster_id::INTEGER AS cluster_id FROM {items_src}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS SELECT user_id::BIGINT AS user_id, item_id::BIGINT AS item_id, "
                f"{ts_value} AS ts, engagement::FLOAT AS engagement FROM {events_src}")
    n_clusters, n_items = (con.execute(f"SELECT count(*) FROM {v}").fetchone()[0] for v in ("clusters", "items"))
    return {"clusters": n_clusters, "items": n_items}


def write(out_dir: Path | str, items: pa.Table, clusters: pa.Table) -> None:
    """Write items and clusters in contract form (events are streamed by their producer)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(items.cast(ITEMS_SCHEMA), out_dir / "items.parquet")
    pq.write_table(clusters.cast(CLUSTERS_SCHEMA), out_dir / "clusters.parquet")
