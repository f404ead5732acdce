"""Benchmark decoding on a pool of workers (pipeline/llm/pool.py, issue 24), in one run:

    nice python -m benchmarks.pool.run [--workers-prompts 256] [--sample 128] [--clusters 50 100 200 300]

1. Workers: the same prompts through `pool.decoding(...).fill` with ray.workers=1 (in process, no
   Ray) and ray.workers=2 (a local Ray started for the run, torch_threads split between the two),
   with the tiny random model and the default model (SmolLM2-135M, base weights: `bin/setup`
   prepares them). Per row: the start (Ray, actors, model loads), the decode (wall time of the fill,
   cache writes included), prompts/s, and the ratio of 2 workers to 1 on the decode and on the whole.
   The answers of both are compared (they must be identical).
2. Cluster count: the default model on one worker over a fixed sample of --sample consecutive
   prompts of the sorted base table (what one of bulk_infer's shards sees) for 50, 100, 200 and 300
   clusters (keyword descriptions from benchmarks.gpu); prompts/s, the base table's wall time at
   that rate (n(n-1) prompts; each RAG table adds its new prompts), and the power law fitted to
   the table times (time ~ n^b, least squares on logs). The full 300-cluster table would take about
   an hour on 2 cores, so only the sample is decoded.
Decoding is constrained (through the description trie, stopping once one cluster is left) and
without the adapter: the base model writes descriptions there as a fine-tuned model does in free
decoding, where an untrained one would run every answer to bulk_infer.max_new_tokens. The 1-against-2
rows use shards of --shard prompts (the stage's 512 would give 2 workers one shard of 256).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # python benchmarks/pool/run.py
    sys.path.insert(0, str(ROOT))

from benchmarks import cpu  # noqa: E402
from benchmarks.gpu.run import world  # noqa: E402
from pipeline import config, kernels  # noqa: E402


def prompts_for(names: dict[int, str], count: int) -> dict[str, tuple[int, int]]:
    """count consecutive prompts from the middle of the sorted base table of these clusters, each
    with its pair (the clusters constrained decoding may not answer), in that order."""
    from pipeline.llm import prompts

    every = sorted((prompts.for_pair(names, a, b), (a, b)) for a in names for b in names if a != b)
    start = max(0, len(every) // 2 - count // 2)
    return dict(every[start:start + count])


def timed_fill(decoder, cfg, texts: dict[str, tuple[int, int]], shard: int, cache_dir: Path) -> tuple[dict, float, float]:
    """(answers, start s, decode s) of one fill of texts into a fresh cache."""
    from pipeline.llm import pool
    from pipeline.llm.cache import AnswerCache

    began = time.perf_counter()
    with pool.decoding(decoder, cfg) as decoding:
        started = time.perf_counter()
        answers = decoding.fill(AnswerCache(cache_dir, {"benchmark": str(cache_dir)}), list(texts), shard,
                                exclude=texts)
        done = time.perf_counter()
    return answers, started - began, done - started


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pool.run", description=__doc__.splitlines()[0])
    ap.add_argument("--workers-prompts", type=int, default=256, help="prompts of the 1-against-2-workers rows")
    ap.add_argument("--shard", type=int, default=32, help="shard size of the 1-against-2-workers rows")
    ap.add_argument("--sample", type=int, default=128, help="prompts decoded per cluster count")
    ap.add_argument("--clusters", type=int, nargs="+", default=[50, 100, 200, 300])
    ap.add_argument("--models", nargs="+", default=["tiny_random", "smollm2"], help="conf/model names for part 1")
    args = ap.parse_args(argv)

    base = config.compose(["device=cpu"])
    kernels.pin(base.kernels)  # before torch is imported

    import torch

    from pipeline.llm import bulk, model, pool

    torch.set_num_threads(base.torch_threads)
    inf = base.infer
    settings = bulk.Settings(True, inf.max_new_tokens, inf.batch_size.cpu)
    shard = args.shard
    print(f"CPU: {cpu()} (family {cpu('cpu family')} model {cpu('model')}), {torch.get_num_threads()} torch threads "
          f"(torch_threads={base.torch_threads}), constrained decoding, max_new_tokens {inf.max_new_tokens}, "
          f"batch {settings.batch_size}, shard {shard} (workers rows)", flush=True)

    def decoder_for(name: str, names: dict[int, str]):
        m = config.compose([f"model={name}", "device=cpu"]).model
        return pool.Decoder.of(m, None, "cpu", inf.dtype, names, settings, bulk.scored_answers)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        names = world(50)
        texts = prompts_for(names, args.workers_prompts)
        for name in args.models:
            decoder = decoder_for(name, names)
            runs = {}
            for workers in (1, 2):
                cfg = config.compose(["device=cpu", f"ray.workers={workers}"])
                runs[workers] = timed_fill(decoder, cfg, texts, shard, Path(tmp) / f"{name}-{workers}")
                answers, start_s, decode_s = runs[workers]
                print(f"  {name}, {workers} worker(s): start {start_s:.1f}s, decode {decode_s:.1f}s", flush=True)
            same = runs[1][0] == runs[2][0]
            rows.append((name, runs, same))

        print(f"\n{'model':<12}{'workers':>8}{'start s':>9}{'decode s':>10}{'prompts/s':>11}"
              f"{'2w/1w decode':>14}{'2w/1w total':>13}  answers")
        for name, runs, same in rows:
            for workers, (_, start_s, decode_s) in runs.items():
                line = f"{name:<12}{workers:>8}{start_s:>9.1f}{decode_s:>10.1f}{len(texts) / decode_s:>11.1f}"
                if workers == 2:
                    one = runs[1][1] + runs[1][2]
                    line += (f"{runs[1][2] / decode_s:>13.2f}x{one / (start_s + decode_s):>12.2f}x  "
                             f"{'identical' if same else 'DIFFER'}")
                print(line)

        if not args.clusters:
            return
        smollm2 = config.compose(["device=cpu"]).model
        llm, tokenizer = model.load(smollm2, None, "cpu", inf.dtype)
        points = []
        print(f"\nDefault model, one worker (in process), {args.sample} consecutive prompts of each base table:")
        print(f"{'clusters':>8}{'table prompts':>15}{'sample s':>10}{'prompts/s':>11}{'base table s (est.)':>21}")
        for n in args.clusters:
            names = world(n)
            trie = bulk.Trie.build(tokenizer, names)
            texts = prompts_for(names, args.sample)
            began = time.perf_counter()
            bulk.scored_answers(llm, tokenizer, list(texts), trie, settings, exclude=list(texts.values()))
            wall = time.perf_counter() - began
            rate, total = len(texts) / wall, n * (n - 1)
            points.append((n, total / rate))
            print(f"{n:>8}{total:>15,}{wall:>10.1f}{rate:>11.1f}{total / rate:>21.0f}", flush=True)
        if len(points) > 1:
            xs, ys = [math.log(n) for n, _ in points], [math.log(t) for _, t in points]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            a = math.exp(my - b * mx)
            print(f"fitted: base table wall time ~ {a:.3g} * n^{b:.2f} s (n(n-1) prompts alone gives n^2; the rest is "
                  f"prompts/s moving with n); 1,000 clusters: {a * 1000 ** b / 3600:.1f} h")


if __name__ == "__main__":
    main()
