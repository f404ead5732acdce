"""python -m tests.hostile [--only CLASS] [--list] [--verbose]: every hostile case, then the class x outcome table.

Builds one tiny world (tests/conftest.py TINY_WORLD, every stage through `python -m pipeline`'s
entry point) in a scratch folder, then runs each case in its own copy of it, in this process,
through the entry point a user calls (pipeline's stage runner, pipeline.config, pipeline.data,
pipeline.llm, pipeline.lookup, pipeline.audit). See tests/hostile/__init__.py for the outcomes.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline import kernels

kernels.pin("portable")  # before torch is imported, as every stage's entry point does

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pipeline import cli, config, lineage  # noqa: E402
from pipeline.files import file_hashes  # noqa: E402

ROOT = config.ROOT
LOAD = config.load
# The tiny world of tests/conftest.py, with every path relative to the world's folder (the copies
# keep their lineage records valid).
TINY = ["data=synthetic_dense", "model=tiny_random", f"model.cache_dir={ROOT / 'models'}",
        "finetune.trainer.max_steps=2", "finetune.batch_size=8", "finetune.samples_per_pair=1",
        "finetune.trainer.enable_progress_bar=false", "gate.max_pairs=8", "gate.max_new_tokens=4",
        "gate.override_reason='tiny random model'", "data.synth.n_events=30000", "data.synth.n_clusters=5",
        "data.synth.n_users=800", "count.min_support=1", "refresh.until=2024-03-05", "bulk_infer.max_new_tokens=5",
        "bulk_infer.batch_size.cpu=8", "bulk_infer.shard_size.cpu=16", "device=cpu", "data.path=data",
        "duckdb.temp_directory=duckdb_tmp"]
STAGES = ("extract", "count", "finetune", "gate", "retrieve", "bulk_infer", "evaluate")
# Each stage's main output setting: where the write cases point it.
MAIN = {"extract": "sequences", "count": "daily_counts", "finetune": "adapter", "gate": "gate_predictions",
        "retrieve": "retrieved", "bulk_infer": "tables", "evaluate": "report"}
OUTCOMES = ("clear", "handled", "unclear", "silent wrong", "traceback", "data loss", "hang")
CLASSES = ("writes", "lineage", "failures", "reads", "contract and config")
LONGEST = 480  # a refusal longer than this is not a readable line
USERS = ("ws/data/", "ws/notes.txt", "ws/mine/", "ws/afile")  # what the cases put there as the user's


class Hang(BaseException):
    """Raised by the alarm: a case past its time limit (BaseException: no `except Exception` takes it)."""


@dataclass
class Case:
    klass: str
    name: str
    setup: Callable[[Path], Callable[[], None]]  # prepares the copy, returns the call to make
    expect: str = "refuse"  # or "accept"
    check: Callable[[Path, str], bool] | None = None  # for "accept": is the result (the copy, stdout) right?
    extra: tuple[Path, ...] = ()  # files outside the copy that must survive (backed up, put back)
    limit: int = 300


# --- running ---------------------------------------------------------------------------------


def write_params(ws: Path, *overrides: str) -> None:
    """params.yaml of the copy, composed but not checked for its paths (what a hand edit could hold)."""
    (ws / "params.yaml").write_text(OmegaConf.to_yaml(config.compose([*TINY, *overrides])), encoding="utf-8")


def stage(ws: Path, name: str, *overrides: str) -> Callable[[], None]:
    from pipeline.__main__ import main

    write_params(ws, *overrides)
    return lambda: main([name])


def compose_into(ws: Path, *overrides: str) -> Callable[[], None]:
    """`python -m pipeline.config OVERRIDES`, writing the copy's composed.yaml instead of params.yaml."""
    def call() -> None:
        with cli.user_errors("config"):
            config.dump([*TINY, *overrides], ws / "composed.yaml")
    return call


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def raising(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


def with_patch(call: Callable[[], None], obj, name: str, value) -> Callable[[], None]:
    def patched_call() -> None:
        with patched(obj, name, value):
            call()
    return patched_call


def snapshot(ws: Path, extra: tuple[Path, ...]) -> dict[str, str]:
    found = {f"ws/{k}": v for k, v in file_hashes(ws).items()
             if not k.startswith(("duckdb_tmp/", "work/.checkpoints/")) and ".tmp-" not in k}
    for path in extra:
        found[str(path)] = file_hashes(path).get("", "folder") if path.exists() else "missing"
    return found


def invoke(call: Callable[[], None], limit: int) -> tuple[str, object, str, str]:
    """(how it ended: exit, traceback or hang; the exit code; the message or exception; stdout)."""
    err, out = io.StringIO(), io.StringIO()

    def alarm(*_):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(limit)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            call()
        code = 0
    except SystemExit as done:
        code = done.code if done.code is not None else 0
    except Hang:
        return "hang", None, f"no end within {limit}s", out.getvalue()
    except BaseException as exc:  # noqa: BLE001 - what escapes is the finding
        return "traceback", None, f"{type(exc).__name__}: {str(exc)[:300]}", out.getvalue()
    finally:
        signal.alarm(0)
    if isinstance(code, str):
        return "exit", 1, code, out.getvalue()
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return "exit", code, lines[-1] if lines else "", out.getvalue()


def judge(case: Case, ws: Path, how: str, code, message: str, printed: str, lost: list[str]) -> str:
    if lost:
        return "data loss"
    if how in ("hang", "traceback"):
        return how
    if case.expect == "refuse":
        if code == 0:
            return "silent wrong"
        return "clear" if message and "\n" not in message and len(message) <= LONGEST else "unclear"
    if code != 0:
        return "unclear"
    return "handled" if case.check is None or case.check(ws, printed) else "silent wrong"


def run_case(case: Case, world: Path, scratch: Path, n: int) -> tuple[str, str]:
    ws = scratch / f"case-{n}"
    shutil.copytree(world, ws, symlinks=True)
    backups = {p: p.read_bytes() for p in case.extra if p.is_file()}
    os.chdir(ws)
    try:
        call = case.setup(ws)
        before = snapshot(ws, case.extra)
        how, code, message, printed = invoke(call, case.limit)
        after = snapshot(ws, case.extra)
    finally:
        os.chdir(scratch)
        for path, data in backups.items():  # never leave the repository changed by a case
            if not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)
    # Additions are allowed (caches, temporaries). A run that ended non-zero must leave everything
    # that was there as it was; one that succeeded may have rewritten its own outputs, but never the
    # data, the user's files or the repository's.
    keep = before if (how, code) != ("exit", 0) else {k: v for k, v in before.items() if k.startswith(USERS)
                                                      or not k.startswith("ws/")}
    lost = sorted(k for k, v in keep.items() if after.get(k) != v)
    outcome = judge(case, ws, how, code, message, printed, lost)
    shutil.rmtree(ws, ignore_errors=True)
    detail = f"lost {lost[:3]}" if lost else (message or f"exit {code}")
    return outcome, detail


def build_world(world: Path) -> None:
    from pipeline.data import synth

    os.chdir(world)
    write_params(world)
    cfg = LOAD(world / "params.yaml")
    synth.generate(cfg.data.synth, cfg.data.time_range, cfg.data.path)
    for name in STAGES:
        how, code, message, _ = invoke(stage(world, name), 900)
        if (how, code) != ("exit", 0):
            raise SystemExit(f"hostile: the tiny world's {name} stage failed: {how} {code} {message}")


# --- the cases -------------------------------------------------------------------------------


def write_cases() -> list[Case]:
    """Every stage's main output pointed at what it may not replace, by the stage runner (params.yaml
    written past the composition's check) and by the composition (python -m pipeline.config)."""
    readme = ROOT / "README.md"

    def user_file(ws):
        (ws / "notes.txt").write_text("my notes")
        return "notes.txt"

    def user_folder(ws):
        (ws / "mine").mkdir(exist_ok=True)
        (ws / "mine" / "ratings.csv").write_text("userId,movieId\n")
        return "mine"

    def link(ws):
        user_folder(ws)
        (ws / "linked").symlink_to(ws / "mine")
        return "linked"

    targets = {
        "a user's file": user_file,
        "a git-tracked file of the repository": lambda ws: str(readme),
        "another stage's output": None,  # per stage, below
        "an input (a file of the data)": lambda ws: "data/items.parquet",
        "a symbolic link": link,
        "a folder of the user's files": user_folder,
        "a path inside another stage's output folder": lambda ws: "tables/inner.parquet",
    }
    cases = []
    for name in STAGES:
        other = MAIN[STAGES[(STAGES.index(name) + 1) % len(STAGES)]]
        for what, target in targets.items():
            if target is None:
                target = (lambda other: lambda ws: str(LOAD(ws / "params.yaml").paths[other]))(other)
            if what.startswith("a path inside") and name == "bulk_infer":
                target = lambda ws: "work/finetune/adapter/inner"  # noqa: E731
            for via in ("stage runner", "composition"):
                def setup(ws, name=name, target=target, via=via):
                    write_params(ws)
                    path = target(ws)
                    override = f"paths.{MAIN[name]}={path}"
                    return stage(ws, name, override) if via == "stage runner" else compose_into(ws, override)
                cases.append(Case("writes", f"{name}: paths.{MAIN[name]} = {what} ({via})", setup,
                                  extra=(readme,)))
    return cases


def rerun_cases() -> list[Case]:
    """What must keep working: every stage rerun on its own outputs, and the composition of the
    world's settings, are accepted (a check that refuses these is as wrong as one that lets harm by)."""
    def produced(name):
        def check(ws, printed):
            return all(Path(ws / out).exists() for out in lineage.graph(LOAD(ws / "params.yaml"))[name]["outs"])
        return check

    cases = [Case("writes", f"{name} rerun on its own outputs (stage runner)",
                  lambda ws, name=name: stage(ws, name), "accept", produced(name)) for name in STAGES]
    cases.append(Case("writes", "the world's settings composed again (composition)",
                      lambda ws: compose_into(ws), "accept", lambda ws, printed: (ws / "composed.yaml").is_file()))
    return cases


def lineage_cases() -> list[Case]:
    """Every stage input another stage wrote, in every way its record can fail to vouch for it: a
    direct run of the consuming stage must refuse."""
    def no_record(path: Path) -> None:
        path.with_name(f".{path.name}.lineage").unlink()

    def unreadable(path: Path) -> None:
        path.with_name(f".{path.name}.lineage").write_text("{")

    def foreign(path: Path) -> None:
        record = path.with_name(f".{path.name}.lineage")
        found = json.loads(record.read_text())
        record.write_text(json.dumps({**found, "stage": "count" if found["stage"] != "count" else "extract"}))

    def edited(path: Path) -> None:
        target = path if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and
                                                    not p.name.startswith("."))[0]
        if target.suffix == ".json":
            found = json.loads(target.read_text())
            if "passed" in found:
                found["passed"] = not found["passed"]  # the gate's verdict turned by hand
            else:
                found["edited"] = True
            target.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
        elif target.suffix == ".parquet":
            table = pq.read_table(target)
            column = next((c for c in ("c_pred", "n", "c_next", "c2") if c in table.column_names), table.column_names[-1])
            values = table.column(column)
            pq.write_table(table.set_column(table.column_names.index(column), column,
                                            pa.array([values[0].as_py()] * len(values), values.type)), target)
        else:
            target.write_bytes(target.read_bytes() + b"\0")

    ways = {"no lineage record": no_record, "an unreadable record": unreadable,
            "another stage's record": foreign, "edited after it was written": edited}
    cases = []
    graph = lineage.graph(config.compose(TINY))  # the world's paths are relative: the same in every copy
    produced = {o for s in graph.values() for o in s["outs"]}
    for name in STAGES:
        for dep in graph[name]["deps"]:
            if dep not in produced:
                continue
            for how, change in ways.items():
                def setup(ws, name=name, dep=dep, change=change):
                    call = stage(ws, name)
                    change(ws / dep)
                    return call
                cases.append(Case("lineage", f"{name} reads {dep}: {how}", setup))

    def lookup_after(change):
        def setup(ws):
            from pipeline import lookup

            write_params(ws)
            change(ws / "tables" / "base.parquet")
            return with_patch(lambda: lookup.main(["0", "1", "--strategy", "base"]), lookup, "ROOT", ws)
        return setup

    def touched(name, dep):
        def setup(ws):
            call = stage(ws, name)
            for path in [ws / dep, *(p for p in (ws / dep).rglob("*") if p.is_file())]:
                os.utime(path, ns=(1, 1))  # as `dvc checkout` leaves the same bytes
            return call
        return setup

    cases += [Case("lineage", f"{name} reads {dep}: touched, the same bytes", touched(name, dep), "accept")
              for name, dep in (("count", "work/extract/triples.parquet"), ("bulk_infer", "work/finetune/adapter"),
                                ("evaluate", "tables"))]
    cases.append(Case("lineage", "lookup --strategy base: the table edited by hand", lookup_after(edited)))
    cases.append(Case("lineage", "lookup --strategy base: the tables' record removed",
                      lookup_after(lambda p: no_record(p.parent))))
    return cases


def failure_cases() -> list[Case]:
    full = OSError(errno.ENOSPC, "No space left on device")

    def synth_full(ws):
        from pipeline.data.__main__ import main

        over = [o for o in TINY if o.startswith("data")] + [f"data.path={ws / 'data'}"]
        return with_patch(lambda: main(["synth", *over]), pq, "write_table", raising(full))

    def readonly_parent(ws):
        (ws / "ro").mkdir()
        real = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if (ws / "ro") in Path(os.path.abspath(self)).parents:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *args, **kwargs)
        return with_patch(stage(ws, "count", "paths.daily_counts=ro/count/daily_counts.parquet"), Path, "mkdir", mkdir)

    def swapped(ws):
        from pipeline.stages import evaluate  # noqa: F401 - imported before the swap, as the runner does

        call = stage(ws, "evaluate")
        tables = ws / "tables"
        rag = sorted(tables.glob("rag-*.parquet"))[-1]
        shutil.copy(rag, tables / "base.parquet")
        lineage.record(LOAD(ws / "params.yaml"), "bulk_infer")  # the other build's record came with it
        return call

    def interrupted(module: str, name: str, what: str):
        def setup(ws):
            import importlib

            return with_patch(stage(ws, what), importlib.import_module(module), name, raising(KeyboardInterrupt()))
        return setup

    def cache_root(kind):
        def setup(ws):
            from pipeline.llm.__main__ import main

            if kind == "file":
                (ws / "afile").write_text("x")
            return lambda: main(["cache", "--root", str(ws / ("afile" if kind == "file" else "none"))])
        return setup

    def signalled(name: str, signum: int, after: float, *overrides: str):
        """A real signal to a stage running in its own process, `after` seconds in."""
        def setup(ws):
            write_params(ws, *overrides)
            script = ("import sys; from pipeline import config; load = config.load; "
                      "config.load = lambda path=None: load('params.yaml'); "
                      f"from pipeline.__main__ import main; main([{name!r}])")

            def call() -> None:
                import subprocess

                env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
                # A shell's background job starts with SIGINT ignored, and Python keeps it so: as a
                # terminal's foreground job the stage gets it.
                proc = subprocess.Popen([sys.executable, "-c", script], cwd=ws, env=env, stderr=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, text=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
                time.sleep(after)
                proc.send_signal(signum)
                _, err = proc.communicate(timeout=120)
                if "Traceback" in err:
                    raise RuntimeError(err[err.rfind("Traceback"):][-300:])
                if proc.returncode:
                    lines = [line for line in err.splitlines() if line.strip()]
                    raise SystemExit(f"{lines[-1] if lines else ''} (exit {proc.returncode})")
            return call
        return setup

    return [
        Case("failures", "SIGINT 1 s into bulk_infer (its own process)",
             signalled("bulk_infer", signal.SIGINT, 1, "bulk_infer.max_new_tokens=6")),
        Case("failures", "SIGINT 4 s into bulk_infer (its own process)",
             signalled("bulk_infer", signal.SIGINT, 4, "bulk_infer.max_new_tokens=6")),
        Case("failures", "SIGTERM 4 s into bulk_infer (its own process)",
             signalled("bulk_infer", signal.SIGTERM, 4, "bulk_infer.max_new_tokens=6")),
        Case("failures", "SIGINT 4 s into finetune (its own process)",
             signalled("finetune", signal.SIGINT, 4, "finetune.trainer.max_steps=40")),
        Case("failures", "disk full while bulk_infer replaces the tables",
             lambda ws: with_patch(stage(ws, "bulk_infer"), pq, "write_table", raising(full))),
        Case("failures", "disk full while retrieve writes", lambda ws: with_patch(stage(ws, "retrieve"), pq,
                                                                                  "write_table", raising(full))),
        Case("failures", "quota exceeded while the gate writes",
             lambda ws: with_patch(stage(ws, "gate"), pq, "write_table",
                                   raising(OSError(errno.EDQUOT, "Disk quota exceeded")))),
        Case("failures", "disk full while data synth writes", synth_full),
        Case("failures", "an output folder under a read-only parent", readonly_parent),
        Case("failures", "Ctrl-C in the first seconds of bulk_infer",
             interrupted("pipeline.verdict", "read", "bulk_infer")),
        Case("failures", "Ctrl-C while finetune trains", interrupted("pipeline.llm.lora", "train", "finetune")),
        Case("failures", "Ctrl-C while extract reads the data",
             interrupted("pipeline.data.contract", "register", "extract")),
        Case("failures", "evaluate on a table swapped in from another build, with its record", swapped),
        Case("failures", "llm cache --root of a missing folder", cache_root("missing")),
        Case("failures", "llm cache --root of a file", cache_root("file")),
        Case("failures", "a read-only filesystem while count replaces its output",
             lambda ws: with_patch(stage(ws, "count"), os, "replace",
                                   raising(OSError(errno.EROFS, "Read-only file system")))),
    ]


def read_cases() -> list[Case]:
    from pipeline import audit, lookup

    def served(*args: str):
        def setup(ws):
            write_params(ws)
            return with_patch(lambda: lookup.main(list(args)), lookup, "ROOT", ws)
        return setup

    def right(table: str, c1: int, c2: int):
        def check(ws, printed):
            """The answer lookup printed is the table's row: `(c1, c2) -> c_pred: description`."""
            row = pd.read_parquet(ws / "tables" / table).query(f"c1 == {c1} and c2 == {c2}").iloc[0]
            answer = None if pd.isna(row.c_pred) else int(row.c_pred)
            return printed.startswith(f"({c1}, {c2}) -> {answer}: {row.description}") and f"tables/{table}" in printed
        return check

    def release(ws):
        write_params(ws, f"data.path={ws / 'data'}")
        return with_patch(lambda: audit.main(["release"]), config, "load", lambda: LOAD(ws / "params.yaml"))

    return [
        Case("reads", "lookup 0 1 --strategy base", served("0", "1", "--strategy", "base"), "accept",
             right("base.parquet", 0, 1)),
        Case("reads", "lookup 0 1 (the newest RAG table)", served("0", "1"), "accept", right("rag-2024-03-05.parquet", 0, 1)),
        Case("reads", "lookup 1 0 --date 2024-03-02", served("1", "0", "--date", "2024-03-02"), "accept",
             right("rag-2024-03-01.parquet", 1, 0)),
        Case("reads", "lookup 2 2", served("2", "2")),
        Case("reads", "lookup 0 9 (no such cluster)", served("0", "9")),
        Case("reads", "lookup --date garbage", served("0", "1", "--date", "garbage")),
        Case("reads", "lookup --date before every table", served("0", "1", "--date", "2020-01-01")),
        Case("reads", "lookup --table of a text file", served("0", "1", "--table", "params.yaml")),
        Case("reads", "lookup --table of a missing file", served("0", "1", "--table", "tables/none.parquet")),
        Case("reads", "lookup --table of a Parquet file that is no table",
             served("0", "1", "--table", "work/extract/triples.parquet")),
        Case("reads", "lookup --rev of no revision", served("0", "1", "--rev", "nosuchrev")),
        Case("reads", "audit release of a workspace whose data is outside the repository", release),
        Case("reads", "audit show of no revision", lambda ws: lambda: audit.main(["show", "nosuchrev"])),
    ]


def config_cases() -> list[Case]:
    bad = ["count.top_k=0", "count.top_k=abc", "finetune.lr=-1", "retrieve.method=random", "refresh.every_days=0",
           "evaluate.horizon=-3", "bulk_infer.batch_size.cpu=0", "device=tpu", "engine=oracle", "nosuch.key=1", "+nosuch=1",
           "data=nosuch", "period.month=2024-13", "gate.min_exact_match=2", "finetune.batch_size=1.5",
           "data=contract data.synth.n_users=3", "data=movielens data.synth.n_clusters=4"]
    env = ["paths.tables=${oc.env:HOME}", "paths.report=${oc.env:HOME}/r.md", "data.path=${oc.env:PWD}/data",
           "gate.override_reason=${oc.env:USER,me}", "model.cache_dir=${oc.env:HOME}/models"]
    cases = [Case("contract and config", f"config {o}", lambda ws, o=o: compose_into(ws, *o.split())) for o in bad + env]

    def hand_edited(text_of):
        def setup(ws):
            call = stage(ws, "count")
            params = ws / "params.yaml"
            params.write_text(text_of(params.read_text()))
            return call
        return setup

    cases += [
        Case("contract and config", "params.yaml: a value from the environment",
             hand_edited(lambda t: t.replace("tables: tables", "tables: ${oc.env:HOME}/tables"))),
        Case("contract and config", "params.yaml: not YAML", hand_edited(lambda t: t + "\n  : : [\n")),
        Case("contract and config", "params.yaml: an unknown key", hand_edited(lambda t: t + "nosuch: 1\n")),
    ]

    def one_file(ws: Path) -> pa.Table:
        """The world's events, its parts made one events.parquet (the cases change one file)."""
        parts = ws / "data" / "events"
        rows = pa.concat_tables([pq.read_table(p) for p in sorted(parts.glob("*.parquet"))])
        shutil.rmtree(parts)
        return rows

    def events(change, accept=False):
        def setup(ws):
            call = stage(ws, "extract")
            pq.write_table(change(one_file(ws)), ws / "data" / "events.parquet")
            return call

        def check(ws, printed):
            stats = json.loads((ws / "metrics" / "extract.json").read_text())
            return stats["events"] == pq.read_metadata(ws / "data" / "events.parquet").num_rows
        return Case("contract and config", "", setup, "accept" if accept else "refuse", check if accept else None)

    def cast_ts(kind):
        return lambda t: t.set_column(t.column_names.index("ts"), "ts", t.column("ts").cast(kind))

    def set_col(name, values):
        return lambda t: t.set_column(t.column_names.index(name), name, values(t))

    families = {
        "events: two columns named engagement": (lambda t: t.append_column("engagement", t.column("engagement")), False),
        "events: ts tz-aware nanoseconds": (cast_ts(pa.timestamp("ns", tz="UTC")), True),
        "events: ts tz-aware microseconds in Asia/Kolkata": (cast_ts(pa.timestamp("us", tz="Asia/Kolkata")), True),
        "events: ts naive nanoseconds": (lambda t: cast_ts(pa.timestamp("ns", tz="UTC"))(t).set_column(
            t.column_names.index("ts"), "ts", t.column("ts").cast(pa.timestamp("ns", tz="UTC")).cast(
                pa.timestamp("ns"))), True),
        "events: ts as milliseconds since 1970 (int64)": (set_col("ts", lambda t: t.column("ts").cast(pa.int64())), False),
        "events: a null user_id": (set_col("user_id", lambda t: pa.array([None] + t.column("user_id").to_pylist()[1:],
                                                                         pa.int64())), False),
        "events: a NaN engagement": (set_col("engagement", lambda t: pa.array(
            [float("nan")] + t.column("engagement").to_pylist()[1:], pa.float32())), False),
        "events: an infinite engagement": (set_col("engagement", lambda t: pa.array(
            [float("inf")] + t.column("engagement").to_pylist()[1:], pa.float32())), False),
        "events: a ts outside the time range": (set_col("ts", lambda t: pa.array(
            [pd.Timestamp("1999-01-01", tz="UTC")] + t.column("ts").to_pylist()[1:], t.column("ts").type)), False),
        "events: ts as unparsable text": (set_col("ts", lambda t: pa.array(["yesterday"] * len(t))), False),
        "events: no engagement column": (lambda t: t.drop_columns(["engagement"]), False),
        "events: user_id as text": (set_col("user_id", lambda t: t.column("user_id").cast(pa.string())), False),
        "events: no rows": (lambda t: t.slice(0, 0), False),
        "events: an item_id past int64's contract type": (set_col("item_id", lambda t: pa.array(
            [2 ** 63 + 5] + [0] * (len(t) - 1), pa.uint64())), False),
    }
    for name, (change, accept) in families.items():
        case = events(change, accept)
        case.name = name
        cases.append(case)

    def clusters(change):
        def setup(ws):
            call = stage(ws, "extract")
            path = ws / "data" / "clusters.parquet"
            pq.write_table(change(pq.read_table(path)), path)
            return call
        return setup

    def keywords(values):
        return clusters(lambda t: t.set_column(1, "keywords", pa.array(
            [values] + t.column("keywords").to_pylist()[1:], t.column("keywords").type)))

    cases += [
        Case("contract and config", "clusters: one keyword", keywords(["alone"])),
        Case("contract and config", "clusters: a keyword with ';'", keywords(["a;b", "c"])),
        Case("contract and config", "clusters: a keyword with a line break", keywords(["a\nb", "c"])),
        Case("contract and config", "clusters: a zero-width space in a keyword", keywords(["a\u200bb", "c"])),
        Case("contract and config", "clusters: a duplicate cluster_id",
             clusters(lambda t: t.set_column(0, "cluster_id", pa.array([1] + t.column("cluster_id").to_pylist()[1:],
                                                                         t.column("cluster_id").type)))),
        Case("contract and config", "events.parquet and events/ together",
             lambda ws: pq.write_table(pq.read_table(sorted((ws / "data" / "events").glob("*.parquet"))[0]),
                                       ws / "data" / "events.parquet") or stage(ws, "extract")),
    ]
    return cases


def all_cases() -> list[Case]:
    return write_cases() + rerun_cases() + lineage_cases() + failure_cases() + read_cases() + config_cases()


def table(counts: Counter) -> str:
    head = f"| class | {' | '.join(OUTCOMES)} | cases |"
    rows = [head, "|" + "---|" * (len(OUTCOMES) + 2)]
    for klass in (*CLASSES, "all"):
        got = [sum(n for (k, o), n in counts.items() if o == outcome and klass in (k, "all")) for outcome in OUTCOMES]
        rows.append(f"| {klass} | {' | '.join(map(str, got))} | {sum(got)} |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.hostile", description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=CLASSES, help="run one class")
    ap.add_argument("--list", action="store_true", help="list the cases and stop")
    ap.add_argument("--verbose", action="store_true", help="print every case's outcome")
    args = ap.parse_args(argv)
    os.environ.pop(cli.DEBUG, None)
    os.environ.pop("DVC_ROOT", None)
    cases = [c for c in all_cases() if args.only in (None, c.klass)]
    if args.list:
        print("\n".join(f"{c.klass}: {c.name}" for c in cases))
        print(f"{len(cases)} cases")
        return
    began = time.perf_counter()
    counts, notable = Counter(), []
    with tempfile.TemporaryDirectory(prefix="hostile-") as scratch_dir:
        scratch = Path(scratch_dir)
        (scratch / "world").mkdir()
        # Every stage reads params.yaml through config.load: the copy's, in the folder each case runs in.
        with patched(config, "load", lambda path=None: LOAD(Path.cwd() / "params.yaml")):
            build_world(scratch / "world")
            print(f"tiny world built in {time.perf_counter() - began:.0f}s; {len(cases)} cases", file=sys.stderr)
            for n, case in enumerate(cases):
                outcome, detail = run_case(case, scratch / "world", scratch, n)
                counts[case.klass, outcome] += 1
                line = f"{outcome:12} {case.klass}: {case.name}: {detail[:300]}"
                if args.verbose:
                    print(line, flush=True)
                if outcome not in ("clear", "handled"):
                    notable.append(line)
        os.chdir(ROOT)
    print(table(counts))
    print(f"\n{len(cases)} cases in {time.perf_counter() - began:.0f}s")
    if notable:
        print("\nnot clear or handled:\n" + "\n".join(notable))


if __name__ == "__main__":
    main(sys.argv[1:])
