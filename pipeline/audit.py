"""python -m pipeline.audit {release,list,show,diff,verify}: released table versions (docs/releases.md).

A release is an annotated git tag `tables/<period.month>` on a commit whose dvc.lock pins every
output. Past versions are read through DVC's filesystem at that tag (`dvc.api.DVCFileSystem`),
never by parsing its cache by hand; what this machine's DVC cache lacks comes from the default
DVC remote, to which `release` pushes. `verify` rebuilds a tag in a scratch git worktree and
compares every output's hash with the one the tag recorded: within one device class the bytes
must match; across classes (another CPU vendor, ISA or GPU) the predictions must.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from pipeline import cli, config, dvc_internals, lookup, manifest, verdict
from pipeline import ROOT
from pipeline.llm import prompts
from pipeline.revisions import RevisionError, Version, git, remote, remote_text

TAG = "tables/"


class AuditError(ValueError):
    pass


def tags() -> list[str]:
    return git("tag", "--list", f"{TAG}*", "--sort=creatordate").split()


def newest_rag(v: Version) -> str:
    return lookup.choose(v.table_names(), "rag", None)


def outside(cfg) -> None:
    """Refuse a workspace whose data or outputs live outside the repository: a release's dvc.lock
    names them by path, and neither DVC nor `audit show` at its tag can read them there."""
    from pipeline import lineage

    root = os.path.abspath(ROOT)
    for name, stage in lineage.graph(cfg).items():
        for path in (*stage["deps"], *stage["outs"]):
            where = os.path.abspath(path)
            if os.path.commonpath([root, where]) != root:
                raise AuditError(f"{path}{lineage.setting(cfg, path)}: outside the repository ({root}); a release "
                                 "pins only what its dvc.lock can restore: move it inside, run dvc repro, then release")


def release(cfg) -> str:
    """Push every output to the default DVC remote and tag the current state for period.month;
    refuse a dirty tree, a stale dvc.lock or a failed gate."""
    outside(cfg)
    dirty = git("status", "--porcelain", "--untracked-files=no")
    if dirty:
        raise AuditError(f"the work tree has uncommitted changes; commit them (with dvc.lock) first:\n{dirty}")
    stale = dvc_internals.status()
    if stale:
        raise AuditError(f"dvc.lock is stale for {sorted(stale)}: run `dvc repro` and commit dvc.lock")
    gate = json.loads((Path(cfg.paths.metrics) / "gate.json").read_text())
    if not verdict.cleared(gate):
        raise AuditError(f"{verdict.failure(gate)}; nothing to release")
    tag = f"{TAG}{cfg.period.month}"
    if tag in tags():
        raise AuditError(f"{tag} already exists (releases are immutable); roll over to the next period.month")
    summary = {"month": cfg.period.month, "gate": {k: gate[k] for k in
                                                   ("passed", "exact_match", "test_recall", "override_reason")}}
    try:  # before the tag, so a release never exists that a clone cannot read
        # Everything dvc.lock and data.dvc pin: a clone can show, diff and verify it, or `dvc pull` it.
        dvc_internals.push()
    except dvc_internals.DvcError as exc:
        raise AuditError(f"pushing the outputs to {remote_text(*remote())} failed: {exc}") from exc
    git("tag", "-a", tag, "-m", f"transition tables for {cfg.period.month}\n\n{json.dumps(summary, sort_keys=True)}")
    return tag


def listing() -> list[dict]:
    rows = []
    for tag in tags():
        v = Version(tag)
        gate = v.json(f"{v.params['paths']['metrics']}/gate.json")
        try:
            ev = v.json(f"{v.params['paths']['metrics']}/evaluate.json")
        except RevisionError:
            ev = {}
        # Releases made before evaluate.json held only headline figures keep hit rates per strategy.
        hit = ev.get("hit_rate") or {s: x["hit_rate"] for s, x in ev.get("strategies", {}).items()}
        rows.append({"tag": tag, "date": git("log", "-1", "--format=%cs", tag), "month": v.params["period"]["month"],
                     "exact_match": gate["exact_match"], "test_recall": gate["test_recall"],
                     "passed": gate["passed"], "override": gate["override_reason"],
                     **{f"hit_{s}": hit[s] for s in ("fixed", "rag_refreshed") if s in hit}})
    return rows


def show(rev: str, pair: tuple[int, int] | None) -> dict:
    v = Version(rev)
    name = newest_rag(v)
    _, meta = v.table(name)
    out = {"rev": rev, "commit": v.commit, "tables": v.table_names(),
           "lineage": {k: meta.get(k) for k in lookup.LINEAGE if k != "gate"} | {
               "gate": json.loads(meta["gate"]), "packages": json.loads(meta["packages"]),
               "params": json.loads(meta["params"])}}
    if pair:
        found = lookup.lookup(*pair, rev=v.commit)
        clusters = pd.read_parquet(v.blob(f"{v.params['data']['path']}/clusters.parquet"))
        from pipeline.data import contract

        names = {int(c): contract.description(list(k)) for c, k in zip(clusters.cluster_id, clusters.keywords)}
        found["prompt"] = prompts.for_pair(names, *pair, found["retrieved"], last=found.get("last", []))
        found["prompt_template_matches"] = found["lineage"]["template_hash"] == prompts.TEMPLATE_HASH
        out["pair"] = found
    return out


def render_listing(rows: list[dict]) -> str:
    """The releases as a table, one row per tag; none is a line saying how to make one."""
    if not rows:
        return (f"no releases yet (no {TAG}* tag); make one from a built, committed state with "
                "python -m pipeline.audit release")
    head = ["tag", "date", "month", "exact_match", "test_recall", "hit_fixed", "hit_rag_refreshed", "gate"]
    cells = [[r["tag"], r["date"], r["month"], _figure(r["exact_match"]), _figure(r["test_recall"]),
              _figure(r.get("hit_fixed")), _figure(r.get("hit_rag_refreshed")),
              "passed" if r["passed"] else f"overridden: {r['override']}"] for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(head, *cells)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *cells])


def _figure(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def render_show(out: dict) -> str:
    """A version's lineage in a few lines (`--json` prints every setting and package), then the pair."""
    lin, gate = out["lineage"], out["lineage"]["gate"]
    lines = [f"{out['rev']} (commit {out['commit'][:12]}): {len(out['tables'])} tables, " + ", ".join(out["tables"]),
             f"  period {lin['period']}, newest table {lin['strategy']} {lin['refresh_date']}, decoding {lin['decoding']}",
             f"  gate {'passed' if gate.get('passed') else 'overridden: ' + str(gate.get('override_reason'))}, exact match "
             f"{gate.get('exact_match')}, test recall {gate.get('test_recall')}",
             "  lineage " + ", ".join(f"{k.removesuffix('_hash')} {(lin[k] or '?')[:12]}" for k in lookup.LINEAGE
                                      if k.endswith("_hash") or k == "code_revision"),
             "  packages " + ", ".join(f"{k} {v}" for k, v in sorted(lin["packages"].items())),
             f"  {len(flatten(lin['params']))} settings (--json prints them)"]
    if "pair" in out:
        pair = out["pair"]
        lines += ["", lookup.render(pair), "  prompt" + ("" if pair["prompt_template_matches"] else
                                                          " (this checkout's template; the table's differs)") + ":",
                  *(f"    {line}" for line in pair["prompt"].splitlines())]
    return "\n".join(lines)


def flatten(tree, prefix: str = "") -> dict:
    """Nested settings as {"a.b.c": value}."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def diff(rev1: str, rev2: str) -> dict:
    a, b = Version(rev1), Version(rev2)
    na, nb = newest_rag(a), newest_rag(b)
    (ta, ma), (tb, mb) = a.table(na), b.table(nb)
    joined = ta.merge(tb, on=["c1", "c2"], suffixes=("_a", "_b"))
    changed = joined[joined.c_pred_a.astype("Int64").ne(joined.c_pred_b.astype("Int64")).fillna(True)]
    counts = (tb.c_pred.value_counts().sub(ta.c_pred.value_counts(), fill_value=0)).astype(int)
    pa_, pb = flatten(json.loads(ma["params"])), flatten(json.loads(mb["params"]))
    return {"tables": [f"{rev1}:{na}", f"{rev2}:{nb}"], "pairs": len(joined), "changed": len(changed),
            "gained": {int(k): int(v) for k, v in counts.sort_values(ascending=False).head(5).items() if v > 0},
            "lost": {int(k): int(v) for k, v in counts.sort_values().head(5).items() if v < 0},
            "params": {k: [pa_.get(k), pb.get(k)] for k in sorted(set(pa_) | set(pb)) if pa_.get(k) != pb.get(k)},
            "lineage": {k: [ma.get(k), mb.get(k)] for k in lookup.LINEAGE
                        if k not in ("gate", "refresh_date") and ma.get(k) != mb.get(k)}}


def md5(path: Path) -> str:
    """The hash DVC records for an output file."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def outputs(lock: dict) -> dict[str, str]:
    """Every output and metric a dvc.lock pins, with its md5."""
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


class Verdict:
    """What a rebuild found: outputs whose bytes differ from the record and, for those, whether
    their content agrees (per table, how many pairs predict another cluster; for the adapter, the
    largest absolute weight difference), and the device classes of record and rebuild.

    Within one device class the bytes are the guarantee, so any byte difference fails. Across
    classes (another CPU vendor, ISA or GPU) bytes are expected to differ and the content decides:
    every table's predictions must agree."""

    def __init__(self, recorded_class: str, rebuilt_class: str):
        self.recorded_class, self.rebuilt_class = recorded_class, rebuilt_class
        self.bytes_differ: list[str] = []
        self.pairs_differ: dict[str, int] = {}
        self.adapter_max_abs_diff: float | None = None

    @property
    def same_class(self) -> bool:
        return self.recorded_class == self.rebuilt_class

    @property
    def predictions_agree(self) -> bool:
        return not any(self.pairs_differ.values())

    def failure(self, rev: str) -> str | None:
        """Why the rebuild does not pass (None when it does)."""
        if not self.bytes_differ or (not self.same_class and self.predictions_agree):
            return None
        if not self.predictions_agree:
            return f"verify {rev}: the rebuild differs from the record in its predictions"
        return (f"verify {rev}: the rebuild differs from the record in its bytes within one device class "
                f"({self.rebuilt_class}), where bytes must match")

    def lines(self, rev: str, tables: int) -> list[str]:
        head = f"verify {rev}: recorded on {self.recorded_class}, rebuilt on {self.rebuilt_class}"
        if not self.same_class:
            head += ": another device class, so bytes are expected to differ and the content decides"
        out = [head]
        if not self.bytes_differ:
            return out + [f"verify {rev}: all {tables} tables and every other output rebuilt byte for byte"]
        out.append(f"verify {rev}: bytes differ in {', '.join(self.bytes_differ)}")
        changed = {n: k for n, k in self.pairs_differ.items() if k}
        out.append(f"verify {rev}: " + (f"predictions differ in {len(changed)} tables: "
                                        + ", ".join(f"{n} ({k} pairs)" for n, k in sorted(changed.items()))
                                        if changed else f"every prediction of all {tables} tables agrees"))
        if self.adapter_max_abs_diff is not None:
            out.append(f"verify {rev}: adapter weights differ by at most {self.adapter_max_abs_diff:.3g}")
        return out


def pairs_differ(recorded: pd.DataFrame, rebuilt: pd.DataFrame) -> int:
    """Pairs whose served cluster differs (a pair missing on either side counts)."""
    joined = recorded.merge(rebuilt, on=["c1", "c2"], how="outer", suffixes=("_a", "_b"), indicator=True)
    a, b = joined.c_pred_a.astype("Int64"), joined.c_pred_b.astype("Int64")
    same = (a == b).fillna(False) | (a.isna() & b.isna())
    return int((~same | (joined["_merge"] != "both")).sum())


def weights_max_abs_diff(recorded: bytes, rebuilt: bytes) -> float:
    from safetensors.numpy import load

    a, b = load(recorded), load(rebuilt)
    if set(a) != set(b):
        return float("inf")
    return max((float(abs(a[k].astype("float64") - b[k].astype("float64")).max()) for k in a), default=0.0)


def rebuild(v: Version, work: Path) -> None:
    """Run v's own stage commands in the scratch worktree `work` (DVC cache shared, nothing
    committed, nothing restored), from v's `dvc add` data and this machine's prepared models."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def dvc(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=work, env=env, capture_output=True, text=True)
        if done.returncode:
            raise AuditError(f"verify {v.rev}: dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    dvc("config", "--local", "cache.dir", str(ROOT / ".dvc" / "cache"))
    dvc("config", "--local", "cache.type", "copy")
    for shared in ("models",):  # prepared base weights: content-addressed by their own manifest
        if (ROOT / shared).exists():
            (work / shared).symlink_to(ROOT / shared)
    for source in (p for p in work.glob("*.dvc") if p.is_file()):  # rev's `dvc add` data, from cache or remote
        for out in yaml.safe_load(source.read_text())["outs"]:
            v.get(out["path"], work / out["path"])
    dvc("repro", "--force", "--no-run-cache", "--no-commit")  # really rebuild: no restoring


def compare(v: Version, work: Path) -> Verdict:
    """The rebuild in `work` against every output v's dvc.lock pins: tables by bytes, then by
    predictions where bytes differ; the adapter's weights by their largest difference."""
    newest = newest_rag(v)
    found = Verdict(v.table(newest)[1].get("device_class", "unrecorded"),
                    manifest.read(work / v.tables_dir / newest).get("device_class", "unrecorded"))
    for n in v.table_names():
        if md5(work / v.tables_dir / n) != v.recorded_md5(n):  # equal bytes: equal predictions
            found.bytes_differ.append(f"{v.tables_dir}/{n}")
            found.pairs_differ[n] = pairs_differ(v.table(n)[0], pd.read_parquet(work / v.tables_dir / n))
    recorded, rebuilt = outputs(yaml.safe_load(v.text("dvc.lock"))), outputs(
        yaml.safe_load((work / "dvc.lock").read_text()))
    adapter = v.params["paths"]["adapter"]
    for path in sorted(recorded):
        if path == v.tables_dir or rebuilt.get(path) == recorded[path]:
            continue
        found.bytes_differ.append(path)
        if path == adapter:
            weights = f"{adapter}/adapter_model.safetensors"
            found.adapter_max_abs_diff = weights_max_abs_diff(v.blob(weights).getvalue(), (work / weights).read_bytes())
    return found


def verify(rev: str) -> Verdict:
    """Rebuild rev in a scratch worktree by running rev's own stage commands, and compare every
    output dvc.lock pins with the record."""
    v = Version(rev)
    with tempfile.TemporaryDirectory(prefix="audit-verify-") as tmp:
        work = Path(tmp) / "checkout"
        git("worktree", "add", "--detach", str(work), v.commit)
        try:
            rebuild(v, work)
            return compare(v, work)
        finally:
            git("worktree", "remove", "--force", str(work))


def main(argv: list[str]) -> None:
    ap = cli.parser("python -m pipeline.audit", __doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("release", help="push every output to the default DVC remote and tag the current state as "
                                   "tables/<period.month>")
    ls = sub.add_parser("list", help="released versions")
    s = sub.add_parser("show", help="a version's lineage, and a pair's prediction with its prompt")
    s.add_argument("rev")
    s.add_argument("--pair", nargs=2, type=int, metavar=("C1", "C2"))
    for p in (ls, s):
        p.add_argument("--json", action="store_true", help="print the full record as JSON (for scripts)")
    d = sub.add_parser("diff", help="what changed between two versions")
    d.add_argument("rev1")
    d.add_argument("rev2")
    f = sub.add_parser("verify", help="rebuild a version by running ITS OWN stage code (verifying an untrusted "
                                      "revision runs its code) and compare every output with the record")
    f.add_argument("rev")
    args = ap.parse_args(argv)
    with cli.user_errors("audit"):
        if args.command == "release":
            print(f"released {release(config.load())}; its outputs are on {remote_text(*remote())}")
        elif args.command == "list":
            rows = listing()
            print(json.dumps(rows, indent=2) if args.json else render_listing(rows))
        elif args.command == "show":
            out = show(args.rev, tuple(args.pair) if args.pair else None)
            print(json.dumps(out, indent=2, default=str) if args.json else render_show(out))
        elif args.command == "diff":
            print(json.dumps(diff(args.rev1, args.rev2), indent=2, default=str))
        else:
            found = verify(args.rev)
            print("\n".join(found.lines(args.rev, len(Version(args.rev).table_names()))))
            failure = found.failure(args.rev)
            if failure:
                raise AuditError(failure)


if __name__ == "__main__":
    main(sys.argv[1:])
