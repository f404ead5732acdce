"""Benchmark bulk inference: plain batched `generate` against bulk_infer's decoder, in one run.

    python -m benchmarks.bulk_infer.run [--prompts 500] [--layout stage|random] [--no-stage] [--profile]

Needs the default pipeline's upstream outputs (`dvc repro retrieve gate` or a full `dvc repro`):
the fine-tuned adapter, the retrieved successors and the cluster descriptions of params.yaml.

1. The prompts: bulk_infer's own work list for the default month (base prompts and the RAG
   prompts of every refresh date, distinct, in the sorted order the stage decodes them). `stage`
   takes --prompts consecutive ones, which is what each of the stage's shards sees; `random`
   takes a seeded sample, which shares far fewer prefixes (a lower bound).
2. The same prompts through (a) a plain batched `generate` (batch 16, greedy, left padding, the
   given order), (b) bulk decoding in free mode and (c) in constrained mode. Outputs of (b) are
   compared with (a) (target: >= 99 % identical); prompts/s of each and the ratios to (a) are
   printed against the 4x target for (b).
3. Unless --no-stage: the bulk_infer stage itself, cold (fresh cache, refresh.until two days
   before the month's last refresh date), then one refresh after moving refresh.until forward by
   two days, with the wall time of each and the cache's hit share.
Model load and tokenisation are outside the timings; decoding and detokenisation are inside.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # python benchmarks/bulk_infer/run.py
    sys.path.insert(0, str(ROOT))
TARGET_RATIO, TARGET_AGREEMENT = 4.0, 0.99


def plain_generate(llm, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """The baseline: HF generate on batches (16 unless told) in the given order, greedy, left padding."""
    import torch

    tokenizer.padding_side = "left"
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(llm.device)
            generated = llm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out += tokenizer.batch_decode(generated[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return out


def timed(label: str, fn):
    began = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - began
    print(f"  {label}: {wall:.1f}s", flush=True)
    return result, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--layout", choices=("stage", "random"), default="stage")
    ap.add_argument("--no-stage", action="store_true", help="skip the stage's full-table and refresh timings")
    ap.add_argument("--profile", action="store_true",
                    help="only profile bulk free decoding of the prompts (torch.profiler, top ops by self CPU time)")
    args = ap.parse_args()

    from pipeline import config, kernels

    cfg = config.load()
    kernels.pin(cfg.kernels)  # before torch is imported

    import pandas as pd
    import torch

    from pipeline.data import contract
    from pipeline.llm import bulk, model
    from pipeline.period import refresh_dates
    from pipeline.stages import bulk_infer

    torch.set_num_threads(int(cfg.torch_threads))
    inf = cfg.bulk_infer
    names = contract.descriptions(cfg.data.path)
    rows = bulk_infer.table_rows(names, pd.read_parquet(cfg.paths.retrieved), refresh_dates(cfg),
                                  int(cfg.prompts.min_support))
    work = sorted(set(rows.prompt))
    if args.layout == "stage":
        texts = work[:args.prompts]
    else:
        texts = sorted(random.Random(0).sample(work, args.prompts))
    pairs = dict(zip(rows.prompt, zip(rows.c1, rows.c2)))
    where = kernels.device(cfg.device)
    batch = int(inf.batch_size[where])
    llm, tokenizer = model.load(cfg.model, cfg.paths.adapter, where, inf.dtype)
    trie = bulk.Trie.build(tokenizer, names)
    n = len(texts)
    print(f"{n} prompts ({args.layout} layout, {len(work)} in the stage's work list), model {cfg.model.name}, "
          f"{torch.get_num_threads()} threads, max_new_tokens {inf.max_new_tokens}, bulk batch {batch} on {where}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            bulk.answers(llm, tokenizer, texts, trie, bulk.Settings(False, int(inf.max_new_tokens), batch))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    plain, t_plain = timed("plain generate, batch 16", lambda: plain_generate(llm, tokenizer, texts,
                                                                            int(inf.max_new_tokens)))
    free, t_free = timed("bulk free", lambda: bulk.answers(
        llm, tokenizer, texts, trie, bulk.Settings(False, int(inf.max_new_tokens), batch)))
    _, t_con = timed("bulk constrained", lambda: bulk.answers(
        llm, tokenizer, texts, trie, bulk.Settings(True, int(inf.max_new_tokens), batch),
        exclude=[pairs[t] for t in texts]))
    agree = sum(a == b for a, b in zip(plain, free)) / n
    print(f"\n{'decoder':<28}{'prompts/s':>10}{'vs plain':>10}")
    for label, wall in (("plain generate (batch 16)", t_plain), ("bulk free", t_free), ("bulk constrained", t_con)):
        print(f"{label:<28}{n / wall:>10.1f}{t_plain / wall:>9.2f}x")
    print(f"bulk free vs plain: {t_plain / t_free:.2f}x (target {TARGET_RATIO}x: "
          f"{'PASS' if t_plain / t_free >= TARGET_RATIO else 'MISS'}); identical outputs {agree:.1%} "
          f"(target {TARGET_AGREEMENT:.0%}: {'PASS' if agree >= TARGET_AGREEMENT else 'MISS'})")
    if not args.no_stage:
        stage_timings(cfg, bulk_infer)


def stage_timings(cfg, bulk_infer) -> None:
    """The stage cold up to the second-to-last refresh date, then the refresh two days later."""
    import json

    from pipeline import config, timing
    from pipeline.period import refresh_dates
    from pipeline.stages import retrieve

    last = refresh_dates(cfg)[-1]
    with tempfile.TemporaryDirectory() as tmp:
        moved = [f"paths.{k}={Path(tmp) / k}" for k in ("retrieved", "popular", "tables", "infer_cache", "metrics")]
        print("\nbulk_infer stage, fresh cache:")
        for until in (last - timedelta(days=2), last):
            run_cfg = config.compose([*moved, f"refresh.until={until}"])
            Path(run_cfg.paths.metrics).mkdir(parents=True, exist_ok=True)
            (Path(run_cfg.paths.metrics) / "gate.json").write_text((Path(cfg.paths.metrics) / "gate.json").read_text())
            retrieve.run(run_cfg)
            _, wall = timed(f"refresh.until={until}", lambda c=run_cfg: bulk_infer.run(c))
            m = json.loads((Path(run_cfg.paths.metrics) / "bulk_infer.json").read_text())
            newest = json.loads((Path(run_cfg.paths.metrics) / "bulk_infer" / "detail.json").read_text())[
                "per_table"][f"rag-{until}"]
            decoded = timing.take()["decoded"]
            print(f"    {m['tables']} tables, decoded {decoded} of {m['unique_prompts']} distinct prompts, "
                  f"newest table's hit share {1 - decoded / newest['prompts']:.1%}, stage wall {wall:.1f}s")


if __name__ == "__main__":
    main()
