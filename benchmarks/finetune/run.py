"""Fine-tune step cost: samples/s of LoRA training steps on the default stage's own samples.

    python -m benchmarks.finetune.run [--steps 10] [--top-layers 30 10 6] [--profile]

Needs the default fine-tune samples (`dvc repro finetune` writes work/finetune/samples.parquet).
Every variant trains --steps batches of finetune.batch_size from one seeded order, on the pinned
kernels (`kernels` in params.yaml), after one warm-up step:
- `model loss, all layers`: the loss the causal LM computes from its labels (the output head at
  every position), LoRA on every layer, random batches: the fine-tune as it was before these cuts;
- `answer loss, top N`: pipeline.llm.lora.answer_loss (the head only at answer positions), LoRA
  on the top N layers (finetune.lora.top_layers; all layers when N is the model's depth);
- `..., length batches`: the same samples cut by lora.LengthBatches, as the stage does.
Prints samples/s, the ratio to the first variant, the final loss of the short run and the share of
padded tokens in each kind of batch; --profile prints torch.profiler's top ops for the configured
variant.
"""
from __future__ import annotations

import argparse
import time

from benchmarks import cpu


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.finetune.run", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top-layers", type=int, nargs="+", help="answer-loss variants to time (default: all "
                    "layers and finetune.lora.top_layers)")
    ap.add_argument("--profile", action="store_true", help="only profile the configured variant (torch.profiler)")
    args = ap.parse_args()

    from pipeline import config, kernels

    cfg = config.load()
    kernels.pin(cfg.kernels)  # before torch is imported

    import pandas as pd
    import torch
    from omegaconf import OmegaConf

    from pipeline.llm import lora, model

    torch.set_num_threads(int(cfg.torch_threads))
    ft = cfg.finetune
    try:
        samples = pd.read_parquet(cfg.paths.samples)
    except FileNotFoundError:
        raise SystemExit(f"{cfg.paths.samples}: missing; run `dvc repro finetune` first") from None
    _, tokenizer = model.load(cfg.model)
    encoded = lora.encode(tokenizer, samples.prompt.tolist(), samples.answer.tolist())
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(int(ft.seed))).tolist()
    size = int(ft.batch_size)
    collate = lora.collate(tokenizer.pad_token_id)
    randomly = [collate([encoded[i] for i in order[k * size:(k + 1) * size]]) for k in range(args.steps + 1)]
    stream = lora.Stream(len(encoded), (args.steps + 1) * size, int(ft.seed))
    by_length = [collate([encoded[i] for i in batch])
                 for batch in lora.LengthBatches(stream, [len(s["input_ids"]) for s in encoded], size)]

    def padded(batches) -> str:
        share = sum(int((b["attention_mask"] == 0).sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
        return f"{100 * share:.1f} %"

    def timed(top: int | None, loss_of, batches) -> tuple[float, float]:
        llm, _ = model.load(cfg.model)
        wrapped = lora.wrap(llm.train(), OmegaConf.merge(ft.lora, {"top_layers": top}))
        optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=float(ft.optim.lr))

        def step(batch) -> float:
            loss = loss_of(wrapped, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        step(batches[0])
        began = time.perf_counter()
        for batch in batches[1:]:
            last = step(batch)
        return args.steps * size / (time.perf_counter() - began), last

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(ft.lora.top_layers, lora.answer_loss, by_length)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return

    depth = int(model.load(cfg.model)[0].config.num_hidden_layers)
    tops = args.top_layers or sorted({depth, int(ft.lora.top_layers or depth)}, reverse=True)
    print(f"CPU: {cpu()}; {kernels.device_class()}; batch {size}, {args.steps} steps; padding: "
          f"{padded(randomly)} of random batches' tokens, {padded(by_length)} of length batches'")
    print(f"{'variant':<44}{'samples/s':>10}{'ratio':>8}{'loss':>8}")
    first = None
    variants = [("model loss, all layers", depth, lambda m, b: m(**b).loss, randomly)]
    variants += [(f"answer loss, top {top}", top, lora.answer_loss, randomly) for top in tops]
    variants += [(f"answer loss, top {top}, length batches", top, lora.answer_loss, by_length) for top in tops]
    for label, top, loss_of, batches in variants:
        rate, loss = timed(top, loss_of, batches)
        first = first or rate
        print(f"{label:<44}{rate:>10.2f}{rate / first:>7.2f}x{loss:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
