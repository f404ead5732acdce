"""dvc.yaml's deps are exactly each stage's code: its import closure inside pipeline/ plus the SQL
files that code reads. A dep left out lets an edit leave outputs silently stale, and the tables'
code hash would under-report their lineage."""
from __future__ import annotations

import ast
import re

import pytest

from pipeline import manifest
from pipeline.__main__ import STAGES
from pipeline.config import ROOT

SQL = {p.stem for p in (ROOT / "pipeline" / "sql").glob("*.sql")}


def module_file(name: str) -> str | None:
    """pipeline.a.b -> pipeline/a/b.py (or its package's __init__.py); None outside pipeline/."""
    base = ROOT / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if name.split(".")[0] == "pipeline" and path.is_file():
            return path.relative_to(ROOT).as_posix()
    return None


def has_code(path: str) -> bool:
    """False for a package __init__ that holds only its docstring."""
    body = ast.parse((ROOT / path).read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def sql_read(call: ast.Call) -> tuple[set[str], list[str]]:
    """SQL files a call names among its positional arguments: by literal stem, or a template
    (an f-string such as f"extract_dedupe_{mode}") as a pattern."""
    named, templates = set(), []
    for arg in call.args:
        if isinstance(arg, ast.Constant) and arg.value in SQL:
            named.add(f"pipeline/sql/{arg.value}.sql")
        elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
            pattern = "".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in arg.values)
            if any(re.fullmatch(pattern, stem) for stem in SQL):
                templates.append(f"pipeline/sql/{pattern}\\.sql")
    return named, templates


def closure(stage: str) -> tuple[set[str], list[str]]:
    """(files, templates): the modules pipeline/stages/<stage>.py imports, directly or not (imports
    inside functions included), and the SQL they read."""
    todo, files, templates = [f"pipeline/stages/{stage}.py"], set(), []
    while todo:
        path = todo.pop()
        if path in files:
            continue
        files.add(path)
        package = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".").rsplit(".", 1)[0]
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, [parent, node.module]))
                names = [module, *(f"{module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Call):
                named, found = sql_read(node)
                files |= named
                templates += found
            for name in names:
                parts = name.split(".")
                # importing pipeline.a.b runs pipeline/a/__init__.py too
                todo += [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))]
    return {f for f in files if not f.endswith("__init__.py") or has_code(f)}, templates


def mismatch(stage: str, declared: list[str]) -> list[str]:
    """What differs between a stage's declared pipeline/ deps and its closure, one line each."""
    files, templates = closure(stage)
    out = [f"{stage}: dvc.yaml lacks {f}" for f in sorted(files - set(declared))]
    matched = {d for d in declared for t in templates if re.fullmatch(t, d)}
    out += [f"{stage}: dvc.yaml lacks a dep matching {t}" for t in templates
            if not any(re.fullmatch(t, d) for d in declared)]
    out += [f"{stage}: dvc.yaml declares {d}, which the stage does not use" for d in sorted(set(declared) - files - matched)]
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_declares_exactly_the_code_a_stage_runs(stage):
    declared, _ = manifest.stage_deps(stage)
    assert mismatch(stage, declared) == []


def test_the_check_names_a_removed_dep_and_a_foreign_one():
    declared, _ = manifest.stage_deps("bulk_infer")
    assert "pipeline/files.py" in declared
    less = [d for d in declared if d != "pipeline/files.py"] + ["pipeline/sql/count_drift.sql"]
    assert mismatch("bulk_infer", less) == ["bulk_infer: dvc.yaml lacks pipeline/files.py",
                                            "bulk_infer: dvc.yaml declares pipeline/sql/count_drift.sql, which the stage "
                                            "does not use"]
    declared, _ = manifest.stage_deps("extract")
    assert mismatch("extract", [d for d in declared if "dedupe_first" not in d]) == [
        "extract: dvc.yaml lacks a dep matching pipeline/sql/extract_dedupe_.+\\.sql"]


def sql_owners() -> dict[str, set[str]]:
    """Each SQL file's stem -> the stages whose code reads it (by name or by template)."""
    owners = {stem: set() for stem in SQL}
    for stage in STAGES:
        files, templates = closure(stage)
        for stem in SQL:
            path = f"pipeline/sql/{stem}.sql"
            if path in files or any(re.fullmatch(t, path) for t in templates):
                owners[stem].add(stage)
    return owners


def misnamed(owners: dict[str, set[str]]) -> list[str]:
    """SQL names against the rule: a file one stage reads is prefixed with that stage; a file
    several read (or none) is named for what it computes, with no stage's prefix."""
    out = []
    for stem, stages in sorted(owners.items()):
        prefix = next((s for s in STAGES if stem.startswith(f"{s}_")), None)
        if len(stages) == 1 and prefix not in stages:
            out.append(f"{stem}.sql: read by {min(stages)} only, so named {min(stages)}_*")
        elif len(stages) != 1 and prefix:
            out.append(f"{stem}.sql: read by {sorted(stages)}, so named for what it computes, not {prefix}_*")
    return out


def test_sql_files_are_named_for_the_one_stage_that_reads_them_or_for_what_they_compute():
    owners = sql_owners()
    assert misnamed(owners) == []
    assert misnamed({**owners, "finetune_rows": {"finetune", "evaluate"}, "support": {"count"}}) == [
        "finetune_rows.sql: read by ['evaluate', 'finetune'], so named for what it computes, not finetune_*",
        "support.sql: read by count only, so named count_*"]
