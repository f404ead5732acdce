"""Every stage at 50, 300 and 1,000 clusters with the tiny random model (issue 32): wall time and peak RSS.

    nice -n 15 python -m benchmarks.scale.run [--clusters 50 300 1000] [--root DIR] [--workers 1 2]
        [--stages synth extract ...] [--answers-every K | --seed-every K] [key=value ...]

Per cluster count n, the preset experiment=scale_1000 (the tiny model, one decoded token) on a world
of data=synthetic_1000's process at n clusters (a tenth of them cold, 200,000 events) in DIR/n/, every output path moved there, then each stage in its own process:
synth, the seven DVC stages, and lookup of one pair. Each row is the stage's wall time and its
peak RSS (os.wait4's ru_maxrss of that process: Ray actors with --workers 2 are other processes and
are not in it). With two worker counts, bulk_infer runs again for the second into DIR/n/w<k>/
with its own answer cache, the tables are compared byte for byte, and audit's table comparison
(pipeline.audit.pairs_differ, what `audit verify` runs on a table whose bytes differ) runs over
every table of the two. With --answers-every K (for 1,000 clusters, where the whole decode and
the table writing take most of an hour each here), the other worker counts decode every K-th
shard of the first run again (`same_answers`) and compare the answer-cache parts instead; with
--seed-every K, their bulk_infer starts from the first run's cache less every K-th part, so it
decodes that share on its workers and writes every table, compared as above. Extra
key=value overrides go to every stage (e.g. bulk_infer.max_new_tokens=4 to decode more of each answer). A stage that fails stops that cluster count: its row says so.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # python benchmarks/scale/run.py
    sys.path.insert(0, str(ROOT))

from benchmarks import cpu  # noqa: E402

STAGES = ("synth", "extract", "count", "finetune", "gate", "retrieve", "bulk_infer", "evaluate", "lookup")
def overrides(root: Path, n: int, workers: int, extra: list[str]) -> list[str]:
    """The settings of the n-cluster world, every output under root."""
    from pipeline import config

    paths = config.compose().paths
    # conf/experiment/scale_1000.yaml: the world and the tiny model (a few training steps, a small gate
    # whose verdict is overridden, one decoded token); the cluster count and every output path here.
    return ["experiment=scale_1000", f"model.cache_dir={ROOT / 'models'}", f"data.synth.n_clusters={n}",
            f"data.synth.cold_clusters={max(1, n // 10)}", f"data.path={root / 'data'}",
            *[f"paths.{key}={root / value}" for key, value in paths.items()],
            f"duckdb.temp_directory={root / 'duckdb_tmp'}", f"ray.workers={workers}", *extra]


def command(stage: str, params: Path, settings: list[str]) -> list[str]:
    if stage == "synth":
        return [sys.executable, "-m", "pipeline.data", "synth", *settings]
    if stage == "lookup":
        return [sys.executable, "-m", "benchmarks.scale.run", "lookup", str(params)]
    return [sys.executable, "-m", "benchmarks.scale.run", "stage", str(params), stage]


def measure(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """(exit status, wall seconds, peak RSS in GiB) of one process, its output into log."""
    began = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - began, usage.ru_maxrss / 2**20  # ru_maxrss: KiB on Linux


def tables_sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def run_stage(params: str, stage: str) -> None:
    """`python -m pipeline STAGE` on this params file (the stages read the repository's params.yaml)."""
    from pipeline import config
    from pipeline.__main__ import main

    load = config.load
    config.load = lambda: load(params)
    main([stage])


def lookup(params: str) -> None:
    """Serve the pair (0, 1) from the newest RAG table, as `python -m pipeline.lookup` does."""
    from pipeline import config, lookup as serve

    tables = Path(config.load(params).paths.tables)
    newest = sorted(tables.glob("rag-*.parquet"))[-1]
    serve.main(["0", "1", "--table", str(newest)])


def seed_cache(first: Path, second: Path, every: int) -> int:
    """The first run's answer cache into `second`, less every `every`-th part (by name: a spread of
    its shards) of bulk_infer's namespace (the one with the most parts): a run on it decodes those
    shards and the cache serves the rest. Returns the parts left out."""
    import shutil

    shutil.rmtree(second, ignore_errors=True)
    spaces = [d for d in first.iterdir() if d.is_dir()]
    largest = max(spaces, key=lambda d: len(list(d.glob("part-*.parquet"))))
    left_out = 0
    for space in spaces:
        (second / space.name).mkdir(parents=True)
        parts = sorted(space.glob("part-*.parquet"))
        for i, part in enumerate(parts):
            if space == largest and i % every == 0:
                left_out += 1
            else:
                shutil.copy2(part, second / space.name / part.name)
        shutil.copy2(space / "namespace.json", second / space.name / "namespace.json")
    return left_out


def same_answers(params: str, workers: int, every: int, out: str) -> None:
    """Decode every `every`-th part of the answer cache a finished or running bulk_infer left (by
    name: a spread of its shards of sorted prompts) again through bulk_infer.decode on `workers`
    Ray workers into an empty cache at `out`, and compare the parts byte for byte: the same shards
    give the same part names, and equal answers give equal tables (writing them does not depend
    on the workers). For 1,000 clusters, where decoding and writing the whole tables again takes
    an hour here."""
    import pandas as pd
    from omegaconf import OmegaConf

    from pipeline import config, kernels

    cfg = config.load(params)
    kernels.pin(cfg.kernels)  # before torch is imported
    from pipeline.data import contract
    from pipeline.llm import prompts
    from pipeline.stages import bulk_infer

    # bulk_infer's namespace: the one with the most parts (the gate's and evaluate's hold a few)
    spaces = [sorted(d.glob("part-*.parquet")) for d in Path(cfg.paths.infer_cache).iterdir() if d.is_dir()]
    first = max(spaces, key=len)[::every]
    chosen = set(pd.concat([pd.read_parquet(p, columns=["prompt"]) for p in first]).prompt)
    names = contract.descriptions(cfg.data.path)
    ids = {text: c for c, text in names.items()}
    # c1 and c2 from each prompt's history lines ("- <description>"): prompts.HISTORY's first two
    rows = pd.DataFrame([(ids[text.split("\n")[1][2:]], ids[text.split("\n")[2][2:]], text) for text in sorted(chosen)],
                        columns=["c1", "c2", "prompt"])
    assert prompts.HISTORY.startswith("Recent interests:\n- {c1}\n- {c2}\n")
    cfg = OmegaConf.merge(cfg, {"ray": {"workers": workers}, "paths": {"infer_cache": out}})
    bulk_infer.decode(cfg, rows, names, kernels.device(cfg.device))
    again = {p.name: p.read_bytes() for p in Path(out).glob("*/part-*.parquet")}
    same = sum(again.get(p.name) == p.read_bytes() for p in first)
    print(f"{len(first)} shards, {len(rows)} prompts on {workers} workers: {same} parts byte-identical")


def audit(first: str, second: str) -> None:
    """What `python -m pipeline.audit verify` does with each table whose bytes differ from the
    release's: count the pairs that serve another cluster (here every table, against the other run's)."""
    import pandas as pd

    from pipeline import audit as release

    counts = [release.pairs_differ(pd.read_parquet(p), pd.read_parquet(Path(second) / p.name))
              for p in sorted(Path(first).glob("*.parquet"))]
    print(f"{len(counts)} tables, {sum(counts)} pairs differ")


def bench(args) -> None:
    from pipeline import config

    print(f"CPU: {cpu()} (family {cpu('cpu family')} model {cpu('model')}), {os.cpu_count()} cores; "
          f"overrides {' '.join(args.overrides) or 'none'}", flush=True)
    print("| clusters | stage | workers | wall s | peak RSS GiB | status |\n| ---: | --- | ---: | ---: | ---: | --- |",
          flush=True)
    for n in args.clusters:
        root = Path(args.root) / str(n)
        first, *others = args.workers
        settings = overrides(root, n, first, args.overrides)
        root.mkdir(parents=True, exist_ok=True)
        params = root / "params.yaml"
        config.dump(settings, params)
        for stage in args.stages:
            rc, wall, rss = measure(command(stage, params, settings), root / f"{stage}.log")
            print(f"| {n} | {stage} | {first} | {wall:.1f} | {rss:.2f} | {'ok' if rc == 0 else f'exit {rc}'} |",
                  flush=True)
            if rc:
                break
        else:
            for workers in others:
                again = root / f"w{workers}"
                settings = overrides(root, n, workers, [f"paths.tables={again / 'tables'}",
                                                        f"paths.infer_cache={again / 'infer_cache'}", *args.overrides])
                again.mkdir(exist_ok=True)
                if args.answers_every:
                    cmd = [sys.executable, "-m", "benchmarks.scale.run", "answers", str(params), str(workers),
                           str(args.answers_every), str(again / "infer_cache")]
                    rc, wall, rss = measure(cmd, again / "answers.log")
                    print(f"| {n} | bulk_infer.decode (every {args.answers_every}th shard) | {workers} | {wall:.1f} | "
                          f"{rss:.2f} | {'ok' if rc == 0 else f'exit {rc}'}: "
                          f"{(again / 'answers.log').read_text().strip().splitlines()[-1]} |", flush=True)
                    continue
                if args.seed_every:
                    seed_cache(Path(config.load(params).paths.infer_cache), again / "infer_cache", args.seed_every)
                config.dump(settings, again / "params.yaml")
                rc, wall, rss = measure(command("bulk_infer", again / "params.yaml", settings),
                                        again / "bulk_infer.log")
                same = tables_sha(again / "tables") == tables_sha(root / "tables")
                print(f"| {n} | bulk_infer | {workers} | {wall:.1f} | {rss:.2f} | "
                      f"{'ok' if rc == 0 else f'exit {rc}'}; tables {'identical' if same else 'DIFFER'} |",
                      flush=True)
                cmd = [sys.executable, "-m", "benchmarks.scale.run", "audit", str(root / "tables"),
                       str(again / "tables")]
                rc, wall, rss = measure(cmd, again / "audit.log")
                print(f"| {n} | audit (pairs_differ) | {workers} | {wall:.1f} | {rss:.2f} | "
                      f"{'ok' if rc == 0 else f'exit {rc}'}: {(again / 'audit.log').read_text().strip()} |", flush=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["stage"]:
        return run_stage(argv[1], argv[2])
    if argv[:1] == ["lookup"]:
        return lookup(argv[1])
    if argv[:1] == ["audit"]:
        return audit(argv[1], argv[2])
    if argv[:1] == ["answers"]:
        return same_answers(argv[1], int(argv[2]), int(argv[3]), argv[4])
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale.run", description=__doc__.splitlines()[0])
    ap.add_argument("--clusters", type=int, nargs="+", default=[50, 300, 1000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES),
                    help="none: only the runs of the other worker counts, on outputs a run left in DIR")
    ap.add_argument("--answers-every", type=int, default=0, metavar="K",
                    help="the other worker counts decode every K-th shard of the first run again and compare the "
                         "answer-cache parts (0: the whole bulk_infer again, tables compared)")
    ap.add_argument("--seed-every", type=int, default=0, metavar="K",
                    help="the other worker counts' bulk_infer starts from the first run's answer cache less every "
                         "K-th part: it decodes that share and writes every table (0: from an empty cache)")
    ap.add_argument("--root", default=str(ROOT / "benchmarks" / ".cache" / "scale"))
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    bench(ap.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
