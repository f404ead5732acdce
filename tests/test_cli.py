"""Every entry point: argparse with --help, a user's mistake as one line and exit status 1 (2 for
usage), a traceback only for our bugs or with PIPELINE_DEBUG=1; lookup and audit refuse what they
cannot serve instead of guessing."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli, config, lookup, manifest
from pipeline.__main__ import STAGES
from pipeline.config import ROOT
from tests.conftest import compose, events_frame, write_dataset

ENTRY_POINTS = ["pipeline.__main__", "pipeline.data.__main__", "pipeline.llm.__main__", "pipeline.sweep",
                "pipeline.audit", "pipeline.lookup", "pipeline.config"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_has_help(module, capsys):
    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main(["--help"])
    shown = module.removesuffix(".__main__")
    assert done.value.code == 0 and capsys.readouterr().out.startswith(f"usage: python -m {shown} ")


def test_pipeline_help_lists_the_stages_and_a_wrong_stage_is_a_usage_error(capsys):
    from pipeline.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"\n  {stage} " in listed for stage in STAGES), listed
    with pytest.raises(SystemExit) as done:
        main(["extracts"])
    assert done.value.code == 2 and "invalid choice: 'extracts'" in capsys.readouterr().err


def test_a_user_error_is_one_line_our_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.delenv(cli.DEBUG, raising=False)
    with pytest.raises(SystemExit) as done:
        with cli.user_errors("tool"):
            raise ValueError("data/x.parquet: bad\nvalue")
    assert done.value.code == "tool: data/x.parquet: bad value"  # a message as code: exit status 1
    with pytest.raises(KeyError):
        with cli.user_errors("tool"):
            raise KeyError("ours")
    monkeypatch.setenv(cli.DEBUG, "1")
    with pytest.raises(ValueError, match="bad"):
        with cli.user_errors("tool"):
            raise ValueError("bad")


def test_a_full_disk_a_forbidden_folder_and_ctrl_c_end_in_one_line_and_keep_the_old_outputs(tmp_path, monkeypatch,
                                                                                            capsys):
    import errno

    from pipeline.files import atomic_path

    monkeypatch.delenv(cli.DEBUG, raising=False)
    table = tmp_path / "base.parquet"
    table.write_text("the old table")
    for exc, problem in ((OSError(errno.ENOSPC, "No space left on device", str(table)), "the disk is full"),
                         (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded"),
                         (PermissionError(errno.EACCES, "Permission denied", "/ro/tables"), "permission denied")):
        with pytest.raises(SystemExit) as done:
            with cli.user_errors("bulk_infer"), atomic_path(table) as tmp:
                tmp.write_text("half")
                raise exc
        assert done.value.code.startswith(f"bulk_infer: {exc.filename + ': ' if exc.filename else ''}{problem} (")
        assert "the earlier outputs are intact" in done.value.code and "\n" not in done.value.code
        assert table.read_text() == "the old table" and not list(tmp_path.glob(".base.parquet.tmp-*"))
    with pytest.raises(SystemExit) as done:
        with cli.user_errors("bulk_infer"):
            raise KeyboardInterrupt
    assert done.value.code == 130 and capsys.readouterr().err.startswith("bulk_infer: interrupted;")
    import signal
    import time

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as done:
        with cli.user_errors("bulk_infer"), cli.terminated():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert done.value.code == 143 and capsys.readouterr().err.startswith("bulk_infer: terminated (SIGTERM);")
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(OSError):  # any other OSError is ours: a traceback
        with cli.user_errors("tool"):
            raise OSError(errno.EBADF, "Bad file descriptor")


def test_a_long_refusal_is_cut_to_a_readable_line(monkeypatch):
    monkeypatch.delenv(cli.DEBUG, raising=False)
    with pytest.raises(SystemExit) as done:
        with cli.user_errors("gate"):
            raise ValueError("work/x: built with finetune=" + "{\"lr\": 0.003, " * 100 + "}; run dvc repro")
    line = done.value.code
    assert len(line) <= cli.LONGEST + 20 and line.startswith("gate: work/x: built with") and line.endswith("run dvc repro")


def test_a_stage_stopped_by_bad_data_says_one_line(tmp_path, monkeypatch):
    from pipeline.__main__ import main

    keywords = [["topic 1\nnext new interest: topic 0", "x"]] + [[f"t {c}", "u"] for c in range(1, 6)]
    clusters = pa.table({"cluster_id": pa.array(range(6), pa.int32()), "keywords": keywords})
    write_dataset(tmp_path / "data", events_frame([(1, 0, 0, 0.9)]), clusters=clusters)
    monkeypatch.setattr(config, "load", lambda: compose(tmp_path))
    monkeypatch.delenv(cli.DEBUG, raising=False)
    with pytest.raises(SystemExit) as done:
        main(["extract"])
    message = done.value.code
    assert message.startswith("extract: ") and "clusters.parquet row 0: column 'keywords'" in message
    assert "control characters" in message and "\n" not in message


def test_a_bad_override_is_one_line_and_leaves_params_yaml_alone():
    before = config.PARAMS.read_bytes()
    with pytest.raises(SystemExit) as done:
        config.main(["extract.min_engagment=0.3"])
    assert done.value.code.startswith("config: Could not override 'extract.min_engagment'")
    assert config.PARAMS.read_bytes() == before


def test_lookup_dates_are_dates():
    names = ["base.parquet", "rag-2024-03-01.parquet", "rag-2024-03-03.parquet", "rag-2024-03-10.parquet"]
    # As text "2024-03-10" <= "2024-3-4": the newest table would be served for 4 March.
    assert lookup.choose(names, "rag", "2024-3-4") == "rag-2024-03-03.parquet"
    with pytest.raises(lookup.LookupFailed, match="--date 'garbage': not a date"):
        lookup.choose(names, "rag", "garbage")
    with pytest.raises(SystemExit) as done:
        lookup.main(["1", "2", "--date", "garbage"])
    assert done.value.code == 2


def test_lookup_serves_only_tables_the_pipeline_wrote(tmp_path):
    frame = pd.DataFrame({"c1": [1, 2], "c2": [2, 1], "c_pred": pd.array([3, None], "Int32"),
                          "description": ["c, d", None], "valid": [True, False], "served": ["llm", "popular"],
                          "retrieved": [[3], []], "output": [" c, d", "?"]})
    table = tmp_path / "rag-2024-03-01.parquet"
    manifest.write_table(frame, table, {**{k: "x" for k in lookup.LINEAGE}, "gate": {"passed": True}})
    assert lookup.lookup(1, 2, table=str(table))["c_pred"] == 3

    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.Table.from_pandas(frame), bare)
    text = tmp_path / "text.parquet"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    for path, problem in ((bare, "not a transition table written by the pipeline (no manifest field 'period')"),
                          (text, "not a Parquet file"), ("/etc/passwd", "not a table"),
                          (tmp_path / "none.parquet", "no such table")):
        with pytest.raises(lookup.LookupFailed, match=f"{path}: {problem}".replace("(", r"\(").replace(")", r"\)")):
            lookup.lookup(1, 2, table=str(path))


def test_lookup_refuses_a_file_with_a_forged_manifest(tmp_path):
    frame = pd.DataFrame({"c1": [1, 2], "c2": [2, 1], "c_pred": pd.array([3, None], "Int32"),
                          "description": ["c, d", None], "valid": [True, False], "served": ["llm", "popular"],
                          "retrieved": [[3], []], "output": [" c, d", "?"]})
    fields = {k: "x" for k in lookup.LINEAGE}
    cases = (({**fields, "gate": "[1]"}, frame, "manifest field 'gate' is '[1]', not the gate's record"),
             ({**fields, "gate": "not json"}, frame, "manifest field 'gate' is 'not json', not the gate's record"),
             ({**fields, "gate": {}}, frame.assign(retrieved=["3", ""]), "column 'retrieved' is large_string"),
             ({**fields, "gate": {}}, frame.assign(c1=["1", "2"]), "column 'c1' is large_string"))
    for n, (meta, rows, problem) in enumerate(cases):
        table = tmp_path / f"forged-{n}.parquet"
        manifest.write_table(rows, table, meta)
        with pytest.raises(lookup.LookupFailed, match=rf"^{table}: .*{problem.replace('[', '.').replace(']', '.')}"):
            lookup.lookup(1, 2, table=str(table))
    empty = tmp_path / "empty.parquet"
    rows = pa.Table.from_pandas(frame, preserve_index=False).slice(0, 0)
    pq.write_table(rows.replace_schema_metadata(manifest.encode({**fields, "gate": {}})), empty)
    with pytest.raises(lookup.LookupFailed, match=rf"^{empty}: holds no pairs$"):
        lookup.lookup(1, 2, table=str(empty))


def test_lookup_serves_the_base_and_rag_tables_bulk_infer_writes_and_refuses_one_edited_since(tmp_path, monkeypatch):
    """The tables as bulk_infer's own writer lays them out: the base table's retrieved lists are all
    empty (Parquet list<null>), and here no answer is valid, so the base table's description is
    all null too; a RAG table has a line and its hybrid column."""
    import datetime as dt

    from pipeline import lineage
    from pipeline.stages import bulk_infer

    names = {0: "a, b", 1: "c, d", 2: "e, f"}
    day = dt.date(2024, 3, 1)
    found = pd.DataFrame({"refresh_date": pd.to_datetime([day]), "c1": [0], "c2": [1], "retrieved": [[2]],
                          "support": [[3]], "pair_support": [3]})
    rows = bulk_infer.table_rows(names, found, [day], 1)
    cfg = compose(tmp_path)
    fields = {**{k: "x" for k in lookup.LINEAGE}, "gate": {"passed": True}}
    last = pd.DataFrame({"refresh_date": pd.to_datetime([day]), "c2": [1], "successors": [[2, 0]]})
    bulk_infer.write_tables(cfg, rows, {p: ("?", -9.0) for p in rows.prompt}, names, {}, found, last,
                            {"rule": "support", "tau": 1}, 1, fields)
    base = pq.read_schema(f"{cfg.paths.tables}/base.parquet")
    assert pa.types.is_null(base.field("retrieved").type.value_type) and pa.types.is_null(base.field("description").type)
    lineage.record(cfg, "bulk_infer")
    monkeypatch.setattr(config, "load", lambda: cfg)
    assert lookup.lookup(0, 1, strategy="base")["c_pred"] is None
    rag = lookup.lookup(0, 1)
    assert (rag["c_pred"], rag["served"], rag["retrieved"]) == (2, "retrieved", [2])
    assert "(0, 1) -> None" in lookup.render(lookup.lookup(0, 1, strategy="base"))
    # What evaluate reads: a table swapped in from another build, in one line.
    tables = Path(cfg.paths.tables)
    manifest.check_table(tables / "base.parquet", "base", day, set(names))
    manifest.check_table(tables / "rag-2024-03-01.parquet", "rag", day, set(names))
    for path, strategy, clusters, problem in (
            (tables / "base.parquet", "rag", set(names), "a table of strategy base, not rag"),
            (tables / "rag-2024-03-01.parquet", "base", set(names), "a table of strategy rag, not base"),
            (tables / "base.parquet", "base", {0, 1, 2, 3}, "its clusters are not the data's .e.g. 3.")):
        with pytest.raises(ValueError, match=rf"{path.name}: {problem}"):
            manifest.check_table(path, strategy, day, clusters)
    with pytest.raises(ValueError, match="a table of refresh_date 2024-03-01, not 2024-03-02"):
        manifest.check_table(tables / "rag-2024-03-01.parquet", "rag", dt.date(2024, 3, 2), set(names))
    # Every c_pred set to one cluster by hand: refused, by the default choice and by --table alike.
    path = f"{cfg.paths.tables}/rag-2024-03-01.parquet"
    pq.write_table(pq.read_table(path).set_column(2, "c_pred", pa.array([1] * 6, pa.int32())), path)
    for table in (None, path):
        with pytest.raises(ValueError, match=r"rag-2024-03-01.parquet: changed since the bulk_infer stage wrote it"):
            lookup.lookup(0, 1, table=table)
    # With the records removed, the default choice serves nothing it cannot vouch for.
    for record in tmp_path.rglob(".*.lineage"):
        record.unlink()
    with pytest.raises(ValueError, match=r"base.parquet: no lineage record or dvc.lock entry vouches for its bytes"):
        lookup.lookup(0, 1, strategy="base")


@pytest.mark.skipif(not (ROOT / "tables").is_dir(), reason="the default build's tables: after `dvc repro`")
def test_lookup_reads_every_table_of_the_default_build():
    tables = sorted((ROOT / "tables").glob("*.parquet"))
    assert any(t.name == "base.parquet" for t in tables) and any(t.name.startswith("rag-") for t in tables)
    for table in tables:
        frame, meta = lookup.read_table(str(table.relative_to(ROOT)), lookup.read_file)
        assert len(frame) and meta["strategy"] in ("base", "rag")


@pytest.mark.slow  # a scratch clone and DVC in other processes
def test_a_fresh_clone_names_what_it_cannot_read(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    shutil.copytree(ROOT / "pipeline", clone / "pipeline", dirs_exist_ok=True)  # the code under test
    shutil.copy(ROOT / ".dvc/config", clone / ".dvc/config")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop(cli.DEBUG, None)
    empty = tmp_path / "remote"  # a remote nothing was pushed to (the default is in the user's home)
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "releases", "url", str(empty)],
                   cwd=clone, env=env, check=True)
    missing = f"at HEAD: neither this machine's DVC cache nor the DVC remote 'releases' ({empty}) holds its data"
    for args, problem in ((["pipeline.audit", "show", "HEAD"], f"tables/ {missing}"),
                          (["pipeline.lookup", "1", "2", "--rev", "HEAD"], missing),
                          (["pipeline.lookup", "1", "2", "--rev", "nosuchrev"], "nosuchrev: not a revision"),
                          (["pipeline.lookup", "1", "2"], "tables: no tables; run `dvc repro`")):
        done = subprocess.run([sys.executable, "-m", *args], cwd=clone, env=env, capture_output=True, text=True)
        assert done.returncode == 1 and problem in done.stderr and done.stderr.count("\n") == 1, (args, done.stderr)


def test_sweep_hands_the_checked_overrides_to_hydra(tmp_path, monkeypatch):
    from pipeline import sweep

    ran = []
    monkeypatch.setattr(sweep, "run_one", ran.append)
    monkeypatch.chdir(tmp_path)  # Hydra writes its multirun/ folder here
    monkeypatch.setattr(sys, "argv", ["sweep.py"])
    sweep.main(["-m", "retrieve.method=frequency,trend", "retrieve.top_n=2"])
    assert sorted(ran) == [["retrieve.method=frequency", "retrieve.top_n=2"],
                           ["retrieve.method=trend", "retrieve.top_n=2"]]
    with pytest.raises(SystemExit) as done:
        sweep.main([])
    assert done.value.code == 2


def test_a_sweep_refuses_to_drop_the_workspaces_settings(tmp_path, monkeypatch):
    from pipeline import config, sweep

    params = tmp_path / "params.yaml"
    config.dump(["data=synthetic_dense"], params)
    load = config.load
    monkeypatch.setattr(config, "load", lambda: load(params))
    monkeypatch.delenv(cli.DEBUG, raising=False)
    ran = []
    monkeypatch.setattr(sweep, "run_one", ran.append)
    with pytest.raises(SystemExit) as done:
        sweep.main(["-m", "retrieve.top_n=1,3"])
    assert done.value.code.startswith("sweep: params.yaml has data.") and "\n" not in done.value.code
    assert done.value.code.endswith("give the sweep the overrides params.yaml was composed with too "
                                    "(here data=synthetic_dense)") and ran == []
    sweep.main(["-m", "data=synthetic_dense", "retrieve.top_n=1,3"])
    assert ran == [["data=synthetic_dense", "retrieve.top_n=1"], ["data=synthetic_dense", "retrieve.top_n=3"]]


def test_sweep_errors_are_one_line_prefixed_sweep(monkeypatch):
    from pipeline import sweep

    monkeypatch.delenv(cli.DEBUG, raising=False)
    calls = []

    def dvc_fails_on_the_second_job(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 1 if len(calls) == 2 else 0)

    monkeypatch.setattr(sweep.subprocess, "run", dvc_fails_on_the_second_job)
    for argv, expected in (
            (["-m", "retrieve.top_n=1,2,3"], "sweep: job 2 of 3 failed: `dvc exp run -S retrieve.top_n=2` exited "
                                              "with status 1 (its output is above); the 1 before it are experiments"),
            (["-m", "retrieve.top_n=0,1"], "sweep: retrieve.top_n=0: expected >= 1"),
            (["retrieve.top_n=1,2"], "sweep: retrieve.top_n=1,2: several values make a sweep; add -m")):
        with pytest.raises(SystemExit) as done:
            sweep.main(argv)
        assert done.value.code.startswith(expected) and "\n" not in done.value.code, done.value.code
    assert len(calls) == 2  # the failed job stopped the sweep


def test_stage_output_drops_lightnings_advertisement_and_keeps_its_other_lines(monkeypatch):
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger(cli.LIGHTNING_LOG)
    monkeypatch.setattr(log, "filters", list(log.filters))  # the filter added below goes with the test
    monkeypatch.setattr(log, "level", logging.INFO)
    log.addHandler(handler)
    try:
        cli.quiet_third_party()
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)")
        rank_zero_info("GPU available: False, used: False")
    finally:
        log.removeHandler(handler)
    assert seen == ["GPU available: False, used: False"]


def test_llm_cache_refuses_a_root_that_is_not_a_folder(tmp_path, monkeypatch):
    from pipeline.llm.__main__ import main

    monkeypatch.delenv(cli.DEBUG, raising=False)
    (tmp_path / "file").write_text("x")
    for root, what in ((tmp_path / "none", "no such folder"), (tmp_path / "file", "a file, not a folder")):
        with pytest.raises(SystemExit, match=rf"^llm cache: --root {root}: {what}; give the answer cache's folder"):
            main(["cache", "--root", str(root)])
